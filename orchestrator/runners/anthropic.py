"""The Anthropic Messages API runner: the only module that imports anthropic.

A stage is one streamed request (long replies don't hit the non-streaming
limits), or, for an agent with tools, a loop of them: the model's tool calls
run in the confined workspace (``tools``) and their results go back, until the
model ends its turn or ``max_turns`` is reached. Every turn is appended to the
stage's transcript (``stages/<id>.transcript.jsonl``). The system prompt is the
agent's rendered instructions, marked for prompt caching. A stage with an
``output_schema`` asks for structured output and gets its JSON back as data.

The SDK's own retries are off so that every attempt is seen and counted here:
429, 5xx, overloaded and connection errors are retried with exponential
backoff, honouring ``retry-after``. The client is the SDK's, so
``ANTHROPIC_API_KEY`` and ``ANTHROPIC_BASE_URL`` work exactly as they do for
the SDK. With a ``Recorder`` every exchange is saved; with a ``Replayer`` no
client is made at all and replies come from the recording.
"""

from __future__ import annotations

import asyncio
import dataclasses
import importlib
import json
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

import anthropic

from ..audit import VERDICT_TOOL
from ..tools import call_tool, tool_definitions
from ..workspace import BashPolicy, Workspace
from . import AttemptRecord, AttemptReporter, StageFailure, StageRequest, StageResult, Usage
from .recording import Recorder, Replayer

__all__ = ["AnthropicRunner", "RetryPolicy"]


def _transport_errors() -> tuple[type[BaseException], ...]:
    """The HTTP client's transport errors: a stream cut off mid-body raises them unwrapped by the SDK.
    Recent SDKs use httpx2, older ones httpx."""
    for name in ("httpx2", "httpx"):
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        return (module.TransportError,)
    return ()


TRANSPORT_ERRORS: tuple[type[BaseException], ...] = (anthropic.APIConnectionError, *_transport_errors())
RETRY_STATUS = frozenset({408, 409, 429, 500, 502, 503, 504, 529})
RETRY_TYPES = frozenset({"overloaded_error", "rate_limit_error", "api_error", "timeout_error"})


class _Retry(Exception):
    def __init__(self, delay: float) -> None:
        super().__init__(delay)
        self.delay = delay


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 5
    base_delay: float = 1.0
    max_delay: float = 60.0


@dataclass(frozen=True)
class WorkspaceSetup:
    """Where tool-using stages work: the workspace root, the environment their commands start from (scrubbed
    before use), and the folder for transcripts (``stages/`` of the task's state folder)."""

    root: Path
    environ: Mapping[str, str]
    transcripts: Path | None = None
    max_output: int = 30_000


class AnthropicRunner:
    def __init__(
        self,
        client: anthropic.AsyncAnthropic | None = None,
        retry: RetryPolicy | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        workspace: WorkspaceSetup | None = None,
        recorder: Recorder | None = None,
        replayer: Replayer | None = None,
    ) -> None:
        self.replayer = replayer
        # max_retries=0: this runner retries, so it can count and report every attempt. A replay needs no client.
        self._client = client
        self.retry = retry or RetryPolicy()
        self.sleep = sleep
        self.workspace = workspace
        self.recorder = recorder

    async def aclose(self) -> None:
        """Close the HTTP client (if one was made): done by the run, on the loop that used it."""
        if self._client is not None:
            await self._client.close()

    @property
    def client(self) -> anthropic.AsyncAnthropic:
        if self._client is None:
            self._client = anthropic.AsyncAnthropic(max_retries=0)
        return self._client

    def _arguments(self, request: StageRequest) -> dict[str, Any]:
        arguments: dict[str, Any] = {
            "model": request.model,
            "max_tokens": request.max_tokens,
            "system": [{"type": "text", "text": request.system, "cache_control": {"type": "ephemeral"}}],
            "messages": [{"role": "user", "content": request.prompt}],
        }
        policy = BashPolicy(allow=request.bash, shell=request.shell, timeout=request.bash_timeout)
        tools = tool_definitions(request.tools, bash=policy) if request.tools else []
        if request.structured is not None:
            tools.append(
                {
                    "name": VERDICT_TOOL,
                    "description": "Submit the audit verdict: pass or fail, the findings and the checklist applied.",
                    "input_schema": request.structured,
                }
            )
            # With workspace tools the auditor may look around first; without, it answers at once.
            arguments["tool_choice"] = {"type": "any"} if request.tools else {"type": "tool", "name": VERDICT_TOOL}
        if tools:
            arguments["tools"] = tools
        if request.output_schema is not None:
            arguments["output_config"] = {"format": {"type": "json_schema", "schema": request.output_schema}}
        return arguments

    async def run(self, request: StageRequest, report: AttemptReporter) -> StageResult:
        arguments = self._arguments(request)
        transcript = (
            _Transcript(self.workspace.transcripts / f"{request.stage_id}.transcript.jsonl")
            if (self.workspace is not None and self.workspace.transcripts is not None and request.tools)
            else None
        )
        workspace = self._workspace(request) if request.tools else None
        turns = max(1, request.max_turns) if request.tools else 1
        if transcript is not None:
            transcript.start(request)
        for turn in range(1, turns + 1):
            message = await self._exchange(request.stage_id, arguments, report)
            if transcript is not None:
                transcript.write(turn, "assistant", _dump(message.content), message.stop_reason, message.usage)
            if message.stop_reason == "max_tokens":
                raise StageFailure(
                    f"the reply was cut off at max_tokens ({request.max_tokens}); raise defaults.max_tokens "
                    "in the workflow"
                )
            verdict = next(
                (
                    dict(block.input)
                    for block in message.content
                    if block.type == "tool_use" and block.name == VERDICT_TOOL and isinstance(block.input, dict)
                ),
                None,
            )
            calls = [b for b in message.content if b.type == "tool_use" and b.name != VERDICT_TOOL]
            text = "".join(block.text for block in message.content if block.type == "text")
            if calls and workspace is not None and verdict is None and turn == turns:
                break  # no turn is left to show the model what these calls would do: don't make them
            if verdict is not None or not calls or workspace is None:
                # A structured output's JSON is parsed and checked by the stage's contract check.
                return StageResult(output=text, data=verdict, stop_reason=message.stop_reason)
            results = []
            for call in calls:
                if call.name not in request.tools:
                    text_reply, is_error = f"there is no tool {call.name!r} in this stage", True
                else:
                    reply = await call_tool(workspace, call.name, call.input)
                    text_reply, is_error = reply.text, reply.is_error
                results.append(
                    {"type": "tool_result", "tool_use_id": call.id, "content": text_reply, "is_error": is_error}
                )
            if transcript is not None:
                transcript.write(turn, "user", results)
            arguments["messages"] = [
                *arguments["messages"],
                {"role": "assistant", "content": _dump(message.content)},
                {"role": "user", "content": results},
            ]
        raise StageFailure(
            f"the model was still calling tools after max_turns ({turns}) turns; raise max_turns for the agent "
            "(or defaults.max_turns) if the work needs more"
        )

    def _workspace(self, request: StageRequest) -> Workspace:
        if self.workspace is None:
            raise StageFailure("this stage has tools, but the runner was given no workspace to run them in")
        policy = BashPolicy(allow=request.bash, shell=request.shell, timeout=request.bash_timeout)
        return Workspace(
            self.workspace.root, bash=policy, environ=self.workspace.environ, max_output=self.workspace.max_output
        )

    async def _exchange(self, stage: str, arguments: dict[str, Any], report: AttemptReporter) -> Any:
        """One model turn: from the recording when replaying, else a request retried as the policy says."""
        if self.replayer is not None:
            started = time.time()
            reply = self.replayer.reply(stage, arguments)
            message = anthropic.types.Message.model_validate(reply)
            report(AttemptRecord(1, started, 0.0, _usage(message.usage), request_id="replay"))
            return message
        for number in range(1, self.retry.max_attempts + 1):
            try:
                message = await self._attempt(number, arguments, report)
            except _Retry as retry:
                await self.sleep(retry.delay)
                continue
            if self.recorder is not None:
                self.recorder.record(stage, arguments, message.model_dump(mode="json", exclude_none=True))
            return message
        raise StageFailure("no attempt was made (max_attempts is 0)")

    async def _attempt(self, number: int, arguments: dict[str, Any], report: AttemptReporter) -> Any:
        """One streamed request, reported whatever happens; ``_Retry`` when another try is due."""
        started, clock = time.time(), time.monotonic()
        usage, request_id = Usage(), None
        last = number >= self.retry.max_attempts

        def record(error: str | None = None, status: int | None = None) -> AttemptRecord:
            return AttemptRecord(number, started, round(time.monotonic() - clock, 3), usage, error, status, request_id)

        try:
            async with self.client.messages.stream(**arguments) as stream:
                request_id = getattr(stream, "request_id", None)
                async for event in stream:
                    if event.type == "message_start":
                        usage = _usage(event.message.usage)
                    elif event.type == "message_delta" and event.usage is not None:
                        # Output tokens so far: what a cancelled or cut-off attempt has already cost.
                        usage = Usage(
                            usage.input_tokens,
                            event.usage.output_tokens or usage.output_tokens,
                            usage.cache_read_tokens,
                            usage.cache_write_tokens,
                        )
                message = await stream.get_final_message()
        except asyncio.CancelledError:
            report(record("cancelled"))
            raise
        except anthropic.APIStatusError as exc:
            request_id = exc.response.headers.get("request-id") or request_id
            error = _describe(exc, request_id)
            report(record(error, exc.status_code))
            if _retryable(exc) and not last:
                raise _Retry(self._delay(number, exc.response.headers)) from exc
            raise StageFailure(error + (f" (gave up after {number} attempts)" if number > 1 else "")) from exc
        except TRANSPORT_ERRORS as exc:
            error = (
                f"connection failed: {exc}"
                if isinstance(exc, anthropic.APIConnectionError)
                else (f"connection lost mid-reply: {type(exc).__name__}: {exc}")
            )
            report(record(error))
            if not last:
                raise _Retry(self._delay(number, None)) from exc
            raise StageFailure(f"{error} (gave up after {number} attempts)") from exc
        usage = _usage(message.usage)
        request_id = getattr(message, "_request_id", None) or request_id
        report(record())
        return message

    def _delay(self, number: int, headers: Any) -> float:
        """``retry-after`` when the API sends one, else exponential backoff with jitter; capped."""
        wait = _retry_after(headers) if headers is not None else None
        if wait is None:
            wait = self.retry.base_delay * 2 ** (number - 1) * random.uniform(0.5, 1.0)
        return max(0.0, min(wait, self.retry.max_delay))


def _usage(usage: Any) -> Usage:
    return Usage(
        input_tokens=getattr(usage, "input_tokens", 0) or 0,
        output_tokens=getattr(usage, "output_tokens", 0) or 0,
        cache_read_tokens=getattr(usage, "cache_read_input_tokens", 0) or 0,
        cache_write_tokens=getattr(usage, "cache_creation_input_tokens", 0) or 0,
    )


def _error_type(exc: anthropic.APIStatusError) -> str | None:
    body = exc.body
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict) and isinstance(error.get("type"), str):
            return str(error["type"])
    return None


def _retryable(exc: anthropic.APIStatusError) -> bool:
    return exc.status_code in RETRY_STATUS or _error_type(exc) in RETRY_TYPES


def _describe(exc: anthropic.APIStatusError, request_id: str | None) -> str:
    kind = _error_type(exc) or type(exc).__name__
    message = exc.message
    body = exc.body
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        message = str(body["error"].get("message") or message)
    text = f"HTTP {exc.status_code} {kind}: {message}"
    if exc.status_code == 401:
        text += " (check ANTHROPIC_API_KEY)"
    return text + (f" [request {request_id}]" if request_id else "")


def _retry_after(headers: Any) -> float | None:
    try:
        millis = headers.get("retry-after-ms")
        if millis is not None:
            return float(millis) / 1000
        value = headers.get("retry-after")
        if value is None:
            return None
        try:
            return float(value)
        except ValueError:
            return parsedate_to_datetime(value).timestamp() - time.time()
    except (TypeError, ValueError):
        return None


def _dump(content: Any) -> list[dict[str, Any]]:
    """Reply blocks as request blocks (what the next turn sends back)."""
    return [block.model_dump(mode="json", exclude_none=True, warnings=False) for block in content]


class _Transcript:
    """``stages/<id>.transcript.jsonl``: one line per turn, so a stage's work can be read and replayed by eye."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def start(self, request: StageRequest) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        first = {"turn": 0, "role": "user", "content": request.prompt, "tools": list(request.tools)}
        self.path.write_text(json.dumps(first, ensure_ascii=False) + "\n", encoding="utf-8")

    def write(self, turn: int, role: str, content: Any, stop_reason: str | None = None, usage: Any = None) -> None:
        line: dict[str, Any] = {"turn": turn, "role": role, "content": content, "time": round(time.time(), 3)}
        if stop_reason is not None:
            line["stop_reason"] = stop_reason
        if usage is not None:
            line["usage"] = dataclasses.asdict(_usage(usage))
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(line, ensure_ascii=False, default=str) + "\n")
