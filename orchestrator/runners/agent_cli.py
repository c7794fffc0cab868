"""Stages run by an agent CLI (Claude Code or OpenCode) in non-interactive mode, as the compiled agent.

This module owns finding the CLI (``find_cli``), the arguments, environment and temp config each CLI
gets, running it as an asyncio subprocess in a process group of its own, and turning its JSON output
into one ``AttemptRecord`` and a ``StageResult``. One CLI invocation is one attempt: the CLIs retry
API errors themselves.

The compiled agent reaches the CLI through a temp folder outside the workspace: Claude Code gets
``--agents <file> --agent <name>``; OpenCode gets ``OPENCODE_CONFIG_DIR`` holding ``agents/<name>.md``
and an ``opencode.json`` with the provider's base URL. The prompt goes in on stdin (no argv length
limit) and output comes back through files: OpenCode cuts piped stdout off at 64 KiB, and files
can't deadlock however much a CLI or its children write.

It must not read ``os.environ`` (the caller passes the child's environment), put the API key on a
command line or into a message, print, write into the workspace itself (the agent it runs may: that
is its job), or leave the CLI or anything in its process group running once ``run`` returns or is
cancelled.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from ..contracts import parse_structured
from ..errors import UsageError
from ..workspace import end_group, signal_group
from . import TRACEPARENT, AttemptRecord, AttemptReporter, StageFailure, StageRequest, StageResult, Usage

__all__ = ["CLI_COMMANDS", "CLI_PACKAGES", "ClaudeCodeRunner", "CliAgent", "OpenCodeRunner", "find_cli"]

CLI_PACKAGES = {"claude-code": "@anthropic-ai/claude-code", "opencode": "opencode-ai"}
CLI_COMMANDS = {"claude-code": "claude", "opencode": "opencode"}
CLI_OVERRIDES = {"claude-code": "ORCHESTRATE_CLAUDE_BIN", "opencode": "ORCHESTRATE_OPENCODE_BIN"}

# An unattended run phones nothing home and updates nothing; the caller's environ wins where it sets these.
CLAUDE_ENV = {"DISABLE_AUTOUPDATER": "1", "DISABLE_TELEMETRY": "1", "DISABLE_ERROR_REPORTING": "1"}
CLAUDE_ENV |= {"DISABLE_BUG_COMMAND": "1", "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1"}
OPENCODE_ENV = {"OPENCODE_DISABLE_AUTOUPDATE": "1", "OPENCODE_DISABLE_MODELS_FETCH": "1", "OPENCODE_DISABLE_SHARE": "1"}
OPENCODE_ENV |= {"OPENCODE_DISABLE_LSP_DOWNLOAD": "1"}
STDERR_TAIL = 2000
STOP_GRACE = 2.0  # seconds between SIGTERM and SIGKILL
SECRET_NAME = re.compile(r"(KEY|TOKEN|SECRET|PASSWORD)$")
ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


@dataclass(frozen=True)
class CliAgent:
    """One compiled agent: its generated name and the full text of both compiled files."""

    name: str
    claude_file: str
    opencode_file: str


def find_cli(kind: str, environ: Mapping[str, str]) -> str:
    """The CLI's path for runner ``kind``: ``$ORCHESTRATE_*_BIN`` when set, else found on ``environ["PATH"]``."""
    if kind not in CLI_COMMANDS:
        raise UsageError(f"unknown agent CLI runner {kind!r}", hint=f"use one of: {', '.join(sorted(CLI_COMMANDS))}")
    command, variable = CLI_COMMANDS[kind], CLI_OVERRIDES[kind]
    install = f"install it with: npm install -g {CLI_PACKAGES[kind]}"
    override = environ.get(variable)
    if override:
        path = Path(override)
        if not (path.is_absolute() and path.is_file() and os.access(path, os.X_OK)):
            raise UsageError(
                f"runner {kind} needs the `{command}` command, but {variable} is {override!r}, "
                "which is not the absolute path of an executable file",
                hint=f"fix or unset {variable}; or {install}",
            )
        return str(path)
    found = shutil.which(command, path=environ.get("PATH", ""))
    if found is None:
        raise UsageError(f"runner {kind} needs the `{command}` command, which is not on PATH", hint=install)
    return found


def _frontmatter(text: str) -> tuple[dict[str, str], str]:
    """A compiled file's top-level one-line ``key: value`` frontmatter scalars (nested keys skipped), and its body."""
    text = text.replace("\r\n", "\n")
    end = text.find("\n---\n", 3) if text.startswith("---\n") else -1
    if end < 0:
        return {}, text
    meta: dict[str, str] = {}
    for line in text[4:end].splitlines():
        key, colon, value = line.partition(":")
        if line[:1] not in ("", " ", "\t", "#", "-") and colon and value.strip():
            meta[key.strip()] = _scalar(value.strip())
    return meta, text[end + 5 :].lstrip("\n")


def _scalar(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] == "'":
        return value[1:-1].replace("''", "'")
    if len(value) >= 2 and value[0] == value[-1] == '"':
        with contextlib.suppress(ValueError):
            return str(json.loads(value))  # YAML's double-quoted escapes, as far as JSON shares them
        return value[1:-1]
    return value


@dataclass
class _Outcome:
    """What a CLI's output says: the reply, the tokens spent and, for a failed run, why."""

    text: str = ""
    usage: Usage = field(default_factory=Usage)
    error: str | None = None
    status: int | None = None
    session: str | None = None
    data: dict[str, Any] | None = None


class _CliRunner:
    kind: ClassVar[str]

    def __init__(
        self,
        agents: Mapping[str, CliAgent],
        root: Path,
        environ: Mapping[str, str],
        executable: str | None = None,
        timeout: float | None = None,
    ) -> None:
        self.agents = dict(agents)
        self.root = root
        self.environ = dict(environ)
        self.executable = executable or find_cli(self.kind, self.environ)
        self.timeout = timeout
        self._warming = asyncio.Lock()  # see OpenCodeRunner.run

    def _prepare(self, request: StageRequest, agent: CliAgent, folder: Path) -> tuple[list[str], dict[str, str]]:
        raise NotImplementedError

    def _parse(self, stdout: str) -> _Outcome:
        raise NotImplementedError

    async def run(self, request: StageRequest, report: AttemptReporter) -> StageResult:
        agent = self.agents.get(request.agent)
        if agent is None:
            raise StageFailure(f"runner {self.kind} has no compiled agent for {request.agent!r}")
        with tempfile.TemporaryDirectory(prefix=f"orchestrate-{self.kind}-") as name:
            folder = Path(name)
            try:
                argv, env = self._prepare(request, agent, folder)
                (folder / "prompt.txt").write_text(request.prompt, encoding="utf-8")
            except OSError as exc:
                raise StageFailure(f"could not prepare the {self.kind} run in {folder}: {exc}") from exc
            started, clock = time.time(), time.monotonic()

            def record(outcome: _Outcome, error: str | None) -> AttemptRecord:
                elapsed = round(time.monotonic() - clock, 3)
                return AttemptRecord(1, started, elapsed, outcome.usage, error, outcome.status)

            problem, code = None, 0
            try:
                traceparent = TRACEPARENT.get()
                if traceparent is not None:  # the CLI's own telemetry joins the run's trace
                    env = {**env, "TRACEPARENT": traceparent}
                code = await _execute(argv, env, self.root, folder, self.timeout)
            except asyncio.CancelledError:
                report(record(self._parse(_read(folder / "stdout")), "cancelled"))
                raise
            except TimeoutError:
                problem = f"timed out after {self.timeout or 0:g}s and was stopped"
            except OSError as exc:
                problem = f"could not start {argv[0]} in {self.root}: {exc}"
            outcome = self._parse(_read(folder / "stdout"))
            stderr = _read(folder / "stderr")
        if problem is None and code != 0:
            ended = f"killed by signal {-code}" if code < 0 else f"exited with code {code}"
            problem = f"{outcome.error} ({ended})" if outcome.error else ended
        problem = self._redact(problem or outcome.error or "") or None
        report(record(outcome, problem))
        if problem is None:
            data = outcome.data
            if data is None and request.output_schema is not None:
                with contextlib.suppress(ValueError):
                    parsed = parse_structured(outcome.text)
                    data = parsed if isinstance(parsed, dict) else None
            return StageResult(output=outcome.text, data=data, stop_reason="end_turn")
        message = f"{self.kind} failed: {problem}" + (f" [session {outcome.session}]" if outcome.session else "")
        stderr = ANSI_ESCAPE.sub("", stderr).strip()
        if stderr:
            message += f"\nstderr (last {STDERR_TAIL} characters):\n{stderr[-STDERR_TAIL:]}"
        raise StageFailure(self._redact(message))

    def _redact(self, text: str) -> str:
        """Whatever a CLI echoes, no key or token from its environment reaches a message."""
        for name, value in self.environ.items():
            if len(value) >= 8 and SECRET_NAME.search(name.upper()):
                text = text.replace(value, "[redacted]")
        return text


class ClaudeCodeRunner(_CliRunner):
    """``claude --print`` as the compiled agent, defined by ``--agents <temp file>`` and chosen by ``--agent``.

    ``permission_mode`` (an attribute: set it to change it) is ``acceptEdits``: the agent may edit files
    in the workspace, and whatever would ask for approval (most shell commands, unless the project's
    Claude Code settings allow them) is denied at once (``--permission-prompts none``) instead of
    waiting for an answer nobody can give.
    """

    kind = "claude-code"
    permission_mode = "acceptEdits"

    def _prepare(self, request: StageRequest, agent: CliAgent, folder: Path) -> tuple[list[str], dict[str, str]]:
        meta, body = _frontmatter(agent.claude_file)
        # The stage's model rather than the file's: it is what the run forecast, prices and records.
        definition: dict[str, Any] = {
            "description": meta.get("description") or agent.name,
            "prompt": body.strip() or request.system,
            "model": request.model,
        }
        tools = [tool.strip() for tool in meta.get("tools", "").split(",") if tool.strip()]
        if tools:
            definition["tools"] = tools
        agents_file = folder / "agents.json"
        agents_file.write_text(json.dumps({agent.name: definition}), encoding="utf-8")
        argv = [self.executable, "--print", "--output-format", "json", "--agents", str(agents_file)]
        argv += ["--agent", agent.name, "--model", request.model, "--permission-mode", self.permission_mode]
        argv += ["--permission-prompts", "none"]
        if request.effort is not None:
            # The agent runs as the session (--agent): its effort is the session's, sent as output_config.effort.
            argv += ["--effort", request.effort]
        if request.output_schema is not None:
            argv += ["--json-schema", json.dumps(request.output_schema)]
        return argv, {**CLAUDE_ENV, **self.environ}

    def _parse(self, stdout: str) -> _Outcome:
        results = [event for event in _json_lines(stdout) if event.get("type") == "result"]
        result = results[-1] if results else _json_object(stdout.strip())
        if result is None:
            return _Outcome(error="Claude Code printed no JSON result")
        text = _str(result.get("result")) or ""
        status, data = result.get("api_error_status"), result.get("structured_output")
        outcome = _Outcome(text, _claude_usage(result), None, status if isinstance(status, int) else None)
        outcome.session, outcome.data = _str(result.get("session_id")), (data if isinstance(data, dict) else None)
        subtype = _str(result.get("subtype")) or "success"
        if result.get("is_error") or subtype != "success":
            outcome.error = ("" if subtype == "success" else f"{subtype}: ") + (text.strip() or "no result")
            if outcome.status == 401:
                outcome.error += " (check ANTHROPIC_API_KEY)"
        return outcome


def _claude_usage(result: dict[str, Any]) -> Usage:
    """Every model's tokens when Claude Code lists them (subagents and helper calls too), else ``usage``."""
    per_model = [_dict(entry) for entry in _dict(result.get("modelUsage")).values()]
    if per_model:
        keys = ("inputTokens", "outputTokens", "cacheReadInputTokens", "cacheCreationInputTokens")
        return sum((Usage(*(_int(entry.get(key)) for key in keys)) for entry in per_model), Usage())
    usage = _dict(result.get("usage"))
    keys = ("input_tokens", "output_tokens", "cache_read_input_tokens", "cache_creation_input_tokens")
    return Usage(*(_int(usage.get(key)) for key in keys))


class OpenCodeRunner(_CliRunner):
    """``opencode run --format json`` as the compiled agent, loaded from a temp ``OPENCODE_CONFIG_DIR``.

    That variable is replaced for the child (the user's global and project configs still load).
    OpenCode's own permission settings apply: ``run`` rejects whatever would ask, it never waits.
    """

    kind = "opencode"
    _warmed = False

    async def run(self, request: StageRequest, report: AttemptReporter) -> StageResult:
        # OpenCode sets its database up on first use, and processes doing that at once can fail
        # ("Failed query: CREATE TABLE ..."): one quick command does it before stages run in parallel.
        async with self._warming:
            if not self._warmed:
                with tempfile.TemporaryDirectory(prefix="orchestrate-opencode-") as name:
                    (Path(name) / "prompt.txt").write_bytes(b"")
                    env = {**OPENCODE_ENV, **self.environ}
                    with contextlib.suppress(OSError, TimeoutError):  # a real run reports any real problem
                        await _execute([self.executable, "db", "path"], env, self.root, Path(name), 60)
                self._warmed = True
        return await super().run(request, report)

    def _prepare(self, request: StageRequest, agent: CliAgent, folder: Path) -> tuple[list[str], dict[str, str]]:
        config = folder / "opencode"
        (config / "agents").mkdir(parents=True)
        text = agent.opencode_file if agent.opencode_file.strip() else f"---\nmode: primary\n---\n\n{request.system}"
        (config / "agents" / f"{agent.name}.md").write_text(_as_primary(text), encoding="utf-8")
        # Declared so that a model newer than OpenCode's bundled list (fetching it is off) still resolves.
        provider: dict[str, Any] = {"models": {request.model: {}}}
        base = self.environ.get("ANTHROPIC_BASE_URL")
        if base:
            # OpenCode's SDK reads ANTHROPIC_BASE_URL too, but wants /v1 in it where Claude Code does not.
            provider["options"] = {"baseURL": base.rstrip("/").removesuffix("/v1") + "/v1"}
        (config / "opencode.json").write_text(json.dumps({"provider": {"anthropic": provider}}), encoding="utf-8")
        argv = [self.executable, "run", "--agent", agent.name, "--model", f"anthropic/{request.model}"]
        # A title of our own spares the extra model call OpenCode makes to write one.
        argv += ["--format", "json", "--title", f"orchestrate {request.stage_id}"]
        return argv, {**OPENCODE_ENV, **self.environ, "OPENCODE_CONFIG_DIR": str(config)}

    def _parse(self, stdout: str) -> _Outcome:
        outcome = _Outcome()
        texts: dict[str, tuple[str, str]] = {}  # part id -> (message id, text), in order of arrival
        events = _json_lines(stdout)
        steps = 0
        for event in events:
            part = _dict(event.get("part"))
            outcome.session = outcome.session or _str(event.get("sessionID"))
            if event.get("type") == "text" and isinstance(part.get("text"), str):
                texts[str(part.get("id"))] = (str(part.get("messageID")), part["text"])
            elif event.get("type") == "step_finish":
                steps += 1
                outcome.usage += _opencode_usage(_dict(part.get("tokens")))
            elif event.get("type") == "error":
                outcome.error, outcome.status = _opencode_error(_dict(event.get("error")))
        # Each step is a message of its own: the reply is the text of the last one that has any.
        last = next((message for message, _ in reversed(texts.values())), None)
        outcome.text = "".join(text for message, text in texts.values() if message == last)
        if outcome.error is None and not steps:
            outcome.error = "OpenCode printed no JSON events" if not events else "OpenCode finished no step"
        return outcome


def _as_primary(text: str) -> str:
    """The agent file made runnable by ``opencode run --agent``, which swaps a subagent for its default agent."""
    end = text.find("\n---\n", 3) if text.startswith("---\n") else -1
    if end < 0:
        return text
    return re.sub(r"^mode: *subagent *$", "mode: primary", text[:end], flags=re.MULTILINE) + text[end:]


def _opencode_usage(tokens: dict[str, Any]) -> Usage:
    cache = _dict(tokens.get("cache"))
    # OpenCode counts thinking apart from output; the API bills it as output.
    output = _int(tokens.get("output")) + _int(tokens.get("reasoning"))
    return Usage(_int(tokens.get("input")), output, _int(cache.get("read")), _int(cache.get("write")))


def _opencode_error(error: dict[str, Any]) -> tuple[str, int | None]:
    data = _dict(error.get("data"))
    message = _str(data.get("message")) or _str(error.get("name")) or "OpenCode reported an error"
    status = data.get("statusCode") if isinstance(data.get("statusCode"), int) else None
    body = _dict(_json_object(_str(data.get("responseBody")) or ""))
    kind = _str(_dict(body.get("error")).get("type")) or _str(error.get("name")) or "error"
    text = f"HTTP {status} {kind}: {message}" if status is not None else f"{kind}: {message}"
    return text + (" (check ANTHROPIC_API_KEY)" if status == 401 else ""), status


async def _execute(argv: list[str], env: dict[str, str], cwd: Path, folder: Path, timeout: float | None) -> int:
    """Run the CLI to its end in a process group of its own; on timeout or cancellation, stop the group."""
    with (
        (folder / "prompt.txt").open("rb") as stdin,
        (folder / "stdout").open("wb") as stdout,
        (folder / "stderr").open("wb") as stderr,
    ):
        process = await asyncio.create_subprocess_exec(
            *argv, cwd=cwd, env=env, stdin=stdin, stdout=stdout, stderr=stderr, start_new_session=True
        )
    try:
        return await asyncio.wait_for(process.wait(), timeout)
    except BaseException:
        await end_group(process, STOP_GRACE)
        raise
    finally:
        # Whatever the CLI started and left behind in its group goes with it.
        signal_group(process.pid, signal.SIGKILL)


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


def _json_object(text: str) -> dict[str, Any] | None:
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _json_lines(text: str) -> list[dict[str, Any]]:
    return [event for line in text.splitlines() if (event := _json_object(line)) is not None]


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0
