"""The workspace: one folder that a stage's tools may read, write and run commands in.

Owns path confinement (every path a model gives is resolved, symlinks followed, and
refused if it ends outside the root), the bash policy (which command prefixes may run,
with or without shell syntax), the scrubbed environment commands see, and running a
process with a timeout, bounded output and no orphans left behind.
It must not read the caller's environment or working directory itself, and it does not
know the tool vocabulary (``tools.py``) or the Messages API. Allowed commands are not a
sandbox: an allowed program can still open files outside the root.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import os
import shlex
import signal
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .sandbox import Sandbox

__all__ = [
    "SECRET_MARKERS",
    "BashPolicy",
    "ProcessResult",
    "Refusal",
    "Workspace",
    "end_group",
    "looks_secret",
    "run_process",
    "scrub_env",
    "signal_group",
    "truncate",
]

SECRET_MARKERS: tuple[str, ...] = (
    "ANTHROPIC",
    "AUTH",
    "COOKIE",
    "CREDENTIAL",
    "KEY",
    "PASSWD",
    "PASSWORD",
    "SECRET",
    "TOKEN",
)
# Everything else (and anything that names a secret) stays behind; LC_* is kept too.
SAFE_ENV = frozenset(
    {"HOME", "LANG", "LANGUAGE", "LOGNAME", "PATH", "SHELL", "TERM", "TMPDIR", "TZ", "USER", "VIRTUAL_ENV"}
)
# Credentials of the runner itself: not even the workflow author's ``env`` may hand them to a command.
NEVER_PASSED: frozenset[str] = frozenset({"ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN", "CLAUDE_CODE_OAUTH_TOKEN"})
MAX_PATH = 4096
MAX_NAME = 255
KILL_GRACE = 1.0
_CHUNK = 65536
_UTF8_CONTINUATION = bytes(range(0x80, 0xC0))


class Refusal(Exception):
    """A tool call refused: ``message`` is a sentence the model can read and act on."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(frozen=True)
class BashPolicy:
    """Which commands a stage may run: ``allow`` holds command prefixes; empty turns bash off."""

    allow: tuple[str, ...] = ()
    shell: bool = False
    timeout: float = 120.0


@dataclass(frozen=True)
class ProcessResult:
    """What a finished (or killed) process left: exit code, bounded outputs, timing."""

    exit_code: int | None
    stdout: str
    stderr: str
    timed_out: bool
    duration: float


def scrub_env(environ: Mapping[str, str], extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The variables a command may see: harmless ones from ``environ``, then ``extra``, minus credentials."""
    kept = {
        name: value
        for name, value in environ.items()
        if (name in SAFE_ENV or name.startswith("LC_")) and not looks_secret(name)
    }
    if "PATH" in kept:
        # A relative PATH entry would let a file the model wrote in the workspace shadow an allowed command.
        kept["PATH"] = os.pathsep.join(p for p in kept["PATH"].split(os.pathsep) if os.path.isabs(p))
    kept.update({name: value for name, value in (extra or {}).items() if name.upper() not in NEVER_PASSED})
    # The same key under an innocent name is still the key.
    secrets = {environ[name] for name in NEVER_PASSED if environ.get(name)}
    return {name: value for name, value in kept.items() if value not in secrets}


def looks_secret(name: str) -> bool:
    """Whether an environment variable's name says it holds a credential."""
    upper = name.upper()
    return any(marker in upper for marker in SECRET_MARKERS)


def _marker(count: int) -> str:
    return f"\n[... {count} characters cut ...]\n"


def _join_ends(head: str, tail: str, missing: int, limit: int) -> str:
    """Keep the start of ``head`` and the end of ``tail`` within ``limit``; ``missing`` chars already lost between."""
    room = len(_marker(len(head) + len(tail) + missing))
    budget = max(limit - room, 0)
    keep_head = min(len(head), budget - budget // 2)
    keep_tail = min(len(tail), budget - keep_head)
    cut = missing + len(head) - keep_head + len(tail) - keep_tail
    if cut == 0:
        return head + tail
    return head[:keep_head] + _marker(cut) + tail[len(tail) - keep_tail :]


def truncate(text: str, limit: int) -> str:
    """``text`` if it fits in ``limit`` characters, else its head and tail around a marker saying how much was cut."""
    if len(text) <= limit:
        return text
    middle = len(text) // 2
    return _join_ends(text[:middle], text[middle:], 0, limit)


@dataclass
class _Capture:
    """One output stream, kept as at most ``keep`` bytes of head and ``keep`` bytes of tail."""

    keep: int
    head: bytearray = field(default_factory=bytearray)
    tail: bytearray = field(default_factory=bytearray)
    dropped: int = 0  # characters (UTF-8 lead bytes) thrown away between head and tail

    def feed(self, chunk: bytes) -> None:
        room = self.keep - len(self.head)
        if room > 0:
            self.head += chunk[:room]
            chunk = chunk[room:]
        self.tail += chunk
        excess = len(self.tail) - self.keep
        if excess > 0:
            self.dropped += len(bytes(self.tail[:excess]).translate(None, _UTF8_CONTINUATION))
            del self.tail[:excess]

    def text(self, limit: int) -> str:
        if not self.dropped:
            return truncate(bytes(self.head + self.tail).decode("utf-8", errors="replace"), limit)
        # A multi-byte character split at either seam is dropped rather than shown as garbage.
        head = codecs.getincrementaldecoder("utf-8")(errors="replace").decode(bytes(self.head), final=False)
        tail_bytes = bytes(self.tail)
        stripped = tail_bytes.lstrip(_UTF8_CONTINUATION)
        tail = stripped.decode("utf-8", errors="replace")
        return _join_ends(head, tail, self.dropped + (len(tail_bytes) > len(stripped)), limit)


async def _pump(stream: asyncio.StreamReader | None, capture: _Capture) -> None:
    if stream is None:
        return
    while chunk := await stream.read(_CHUNK):
        capture.feed(chunk)


STRAY_MARK = "ORCHESTRATE_COMMAND"


def kill_strays(mark: str) -> None:
    """Kill what a command left running outside its process group (a daemon, a ``setsid`` child): every
    process of ours whose environment carries the command's mark. Linux only (``/proc``); elsewhere a no-op."""
    needle = f"{STRAY_MARK}={mark}".encode()
    try:
        entries = os.listdir("/proc")
    except OSError:
        return
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as handle:
                environ = handle.read()
        except OSError:  # gone, or not ours
            continue
        if needle in environ.split(b"\0"):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(int(entry), signal.SIGKILL)


def signal_group(pgid: int, sig: signal.Signals) -> None:
    """Signal a process group that may be gone already."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


async def _exit_code(process: asyncio.subprocess.Process, outputs: asyncio.Future[Any] | None = None) -> int:
    """The group leader's exit code, as soon as it exits.

    ``Process.wait()`` also waits for the pipes to close, which a background child may
    keep open long after the command itself ended, so the exit is polled until they close.
    """
    while process.returncode is None:
        if outputs is not None and outputs.done():
            return await process.wait()
        await asyncio.sleep(0.01)
    return process.returncode


async def end_group(process: asyncio.subprocess.Process, grace: float | None = None) -> None:
    """SIGTERM the whole process group, then SIGKILL whatever is left after a grace period."""
    grace = KILL_GRACE if grace is None else grace
    signal_group(process.pid, signal.SIGTERM)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(_exit_code(process), grace)
    signal_group(process.pid, signal.SIGKILL)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(_exit_code(process), KILL_GRACE)


async def run_process(
    command: Sequence[str] | str,
    *,
    cwd: Path,
    env: Mapping[str, str],
    timeout: float,
    limit: int = 30_000,
    sandbox: Sandbox | None = None,
) -> ProcessResult:
    """Run ``command`` (a str through ``/bin/sh -c``, a sequence as argv) in its own process group.

    Outputs are read concurrently and kept bounded; on timeout or cancellation the whole
    group is killed and reaped. Anything the command left running in its group when it
    ended is killed too. Never raises for a command that cannot start.
    """
    argv = ["/bin/sh", "-c", command] if isinstance(command, str) else list(command)
    started = time.monotonic()
    if not argv:
        return ProcessResult(None, "", "empty command", False, 0.0)
    # Every process the command starts inherits this mark, even one that leaves its group (setsid): the
    # mark finds it once the command has ended.
    mark = uuid.uuid4().hex
    marked = {**env, STRAY_MARK: mark}
    if sandbox is not None:  # bwrap sets up the namespaces, then runs the command with exactly ``marked``
        argv = sandbox.wrap(argv, cwd, marked)
    try:
        process = await asyncio.create_subprocess_exec(
            *argv,
            cwd=cwd,
            env=marked,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
        )
    except (OSError, ValueError) as exc:
        return ProcessResult(None, "", _start_failure(argv[0], cwd, exc), False, time.monotonic() - started)
    out, err = _Capture(limit), _Capture(limit)
    readers = [asyncio.ensure_future(_pump(process.stdout, out)), asyncio.ensure_future(_pump(process.stderr, err))]
    outputs = asyncio.gather(*readers, return_exceptions=True)
    exit_code: int | None = None
    try:
        try:
            exit_code = await asyncio.wait_for(_exit_code(process, outputs), timeout)
        except TimeoutError:
            await end_group(process)
        else:
            signal_group(process.pid, signal.SIGKILL)
        await asyncio.to_thread(kill_strays, mark)
        await asyncio.wait([outputs], timeout=KILL_GRACE)
    except BaseException:
        await asyncio.shield(end_group(process))
        await asyncio.to_thread(kill_strays, mark)
        raise
    finally:
        # A process that left the group and escaped the mark may still hold the pipes: stop listening to it.
        for reader in readers:
            reader.cancel()
        transport = getattr(process, "_transport", None)
        if transport is not None:
            transport.close()
    return ProcessResult(
        exit_code=exit_code,
        stdout=out.text(limit),
        stderr=err.text(limit),
        timed_out=exit_code is None,
        duration=time.monotonic() - started,
    )


def _start_failure(program: str, cwd: Path, exc: OSError | ValueError) -> str:
    if not cwd.is_dir():
        return f"the working folder does not exist: {cwd}"
    if isinstance(exc, FileNotFoundError):
        return f"command not found: {program}"
    if isinstance(exc, PermissionError):
        return f"permission denied: {program}"
    reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
    return f"could not start {program}: {reason}"


def _show(path: str) -> str:
    return repr(path if len(path) <= 80 else path[:77] + "...")


# Characters that mean something to a shell; without one they would silently be passed on literally.
_NO_SHELL = frozenset(";|&<>$`(){}*?~\n\\")
_SEPARATORS = frozenset(";&|()\n")


def _needs_shell(what: str) -> Refusal:
    return Refusal(
        f"the command uses {what}, which needs a shell; this stage runs commands without one "
        "(the workflow would need shell: true). Run one plain command instead."
    )


def _scan(command: str, shell: bool) -> list[list[str]]:
    """Split ``command`` into simple commands (lists of words) the way ``sh`` would, quotes honoured.

    Refuses what cannot be checked by looking at words: command and process substitution,
    here-documents, ``$'...'`` quoting, and (without ``shell``) any shell syntax at all.
    Where it is unsure it splits more than ``sh`` does, never less.
    """
    commands: list[list[str]] = [[]]
    word: list[str] | None = None
    plain = True  # the current word has no quoting, so "{" or "}" is a reserved word
    quote = ""
    i = 0

    def add(text: str) -> None:
        nonlocal word, plain
        if word is None:
            word, plain = [], True
        word.append(text)

    def end_word() -> None:
        nonlocal word
        if word is not None:
            text = "".join(word)
            if shell and plain and text in ("{", "}"):
                commands.append([])
            else:
                commands[-1].append(text)
        word = None

    while i < len(command):
        char, after = command[i], command[i + 1 : i + 2]
        if char == "`" or (char == "$" and after == "(" and quote != "'"):
            raise Refusal("command substitution ($(...) or backticks) is not allowed; run each command separately.")
        if quote == "'":
            if char == "'":
                quote = ""
            else:
                add(char)
        elif quote == '"':
            if char == '"':
                quote = ""
            elif char == "\\" and after in ('"', "\\", "$", "`", "\n"):
                if after != "\n":
                    add(after)
                i += 1
            elif char == "$" and not shell:
                raise _needs_shell("'$' (variable expansion)")
            else:
                add(char)
        elif char in " \t":
            end_word()
        elif char in ("'", '"'):
            add("")
            quote, plain = char, False
        elif char == "#" and word is None:
            if not shell:
                raise _needs_shell("'#' (a comment)")
            while i + 1 < len(command) and command[i + 1] != "\n":
                i += 1
        elif not shell and char in _NO_SHELL:
            raise _needs_shell("a newline" if char == "\n" else repr(char))
        elif char == "\\":
            if after != "\n":
                add(after)
                plain = False
            i += 1
        elif char == "$" and after in ("'", '"'):
            raise Refusal("$'...' and $\"...\" quoting are not allowed; use plain quotes.")
        elif char in _SEPARATORS:
            end_word()
            commands.append([])
        elif char in "<>":
            end_word()
            if after == "(":
                raise Refusal("process substitution (<(...) or >(...)) is not allowed.")
            if char == "<" and after == "<":
                raise Refusal("here-documents (<<) are not allowed; write the text to a file with the edit tool.")
            commands[-1].append(char)
            if after and after in "&>":
                i += 1
        else:
            add(char)
        i += 1
    if quote:
        raise Refusal(f"the command has an unterminated {quote} quote.")
    end_word()
    return [words for words in commands if words]


class Workspace:
    """A root folder plus the bash policy and environment of one stage's tools."""

    def __init__(
        self,
        root: Path,
        *,
        bash: BashPolicy | None = None,
        environ: Mapping[str, str] | None = None,
        extra_env: Mapping[str, str] | None = None,
        max_output: int = 30_000,
        sandbox: Sandbox | None = None,
        protected: tuple[str, ...] = (),
    ) -> None:
        if not root.is_absolute():
            raise ValueError(f"workspace root must be an absolute path, got {root}")
        self.root = Path(os.path.realpath(root))
        if not self.root.is_dir():
            raise ValueError(f"workspace root is not a folder: {self.root}")
        self.bash = bash or BashPolicy()
        try:
            self._prefixes = [shlex.split(entry) for entry in self.bash.allow]
        except ValueError as exc:
            raise ValueError(f"a bash permission is not a valid command prefix ({exc}): {self.bash.allow}") from None
        self.max_output = max_output
        self.env = scrub_env(environ or {}, extra_env)
        self.sandbox = sandbox  # where the bash tool's commands run (None: unconfined, ``sandbox: none``)
        self.protected = protected  # folders (from the root) the file tools never write: the run's own records

    def resolve(self, path: str) -> Path:
        """The real location of a model-given path, refused unless it lies inside the root."""
        if not isinstance(path, str) or not path.strip():
            raise Refusal("the path is empty; give a path relative to the workspace root, such as 'src/app.py'.")
        if "\0" in path:
            raise Refusal("the path contains a NUL byte; give a plain file path.")
        if len(path) > MAX_PATH:
            raise Refusal(f"the path is too long ({len(path)} characters; the limit is {MAX_PATH}).")
        if any(len(part.encode("utf-8", errors="replace")) > MAX_NAME for part in path.split("/")):
            raise Refusal(f"a part of the path {_show(path)} is longer than {MAX_NAME} bytes.")
        given = Path(path)
        candidate = given if given.is_absolute() else self.root / given
        try:
            real = Path(os.path.realpath(candidate))
        except (OSError, ValueError) as exc:
            raise Refusal(f"the path {_show(path)} cannot be resolved.") from exc
        if real == self.root or real.is_relative_to(self.root):
            return real
        if Path(os.path.normpath(candidate)).is_relative_to(self.root):
            raise Refusal(
                f"the path {_show(path)} leads outside the workspace through a symbolic link; "
                "only files inside the workspace can be used."
            )
        raise Refusal(f"the path {_show(path)} is outside the workspace; use a path relative to the workspace root.")

    def relative(self, path: Path) -> str:
        """``path`` as the model should see it: posix, relative to the root, ``.`` for the root."""
        return path.relative_to(self.root).as_posix()

    def check_command(self, command: str) -> Sequence[str] | str:
        """The argv (or, with ``shell``, the string for ``sh -c``) to run, or a Refusal saying why not."""
        allow = self.bash.allow
        if not allow:
            raise Refusal(
                "bash is not allowed for this stage; the workflow grants it with permissions: {bash: [...]} "
                "listing the commands a stage may run."
            )
        if not isinstance(command, str) or not command.strip():
            raise Refusal("the command is empty.")
        if "\0" in command:
            raise Refusal("the command contains a NUL byte.")
        listed = ", ".join(repr(entry) for entry in allow)
        try:
            commands = _scan(command, self.bash.shell)
        except Refusal as refusal:
            raise Refusal(f"{refusal.message} Allowed commands: {listed}.") from None
        if not commands:
            raise Refusal(f"the command is empty. Allowed commands: {listed}.")
        for argv in commands:
            if not any(prefix and argv[: len(prefix)] == prefix for prefix in self._prefixes):
                raise Refusal(
                    f"{shlex.join(argv[:3])!r} is not an allowed command for this stage. "
                    f"Every command must start with one of: {listed}."
                )
        return command if self.bash.shell else commands[0]

    async def run_command(self, command: str) -> ProcessResult:
        """Check ``command`` against the policy, then run it in the root with the scrubbed environment."""
        checked = self.check_command(command)
        return await run_process(
            checked,
            cwd=self.root,
            env=self.env,
            timeout=self.bash.timeout,
            limit=self.max_output,
            sandbox=self.sandbox,
        )
