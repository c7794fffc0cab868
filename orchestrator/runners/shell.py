"""The runner of ``run:`` stages: a command in the workspace instead of a model.

The command runs through ``/bin/sh -c`` (the workflow's author wrote it, as in
a CI file) in ``cwd`` inside the workspace, with the stage's ``env`` on top of
a scrubbed environment: API keys and other secrets of the caller never reach
it. Its exit code decides the stage; the tails of stdout and stderr are the
stage's output, which later stages and the auditor read. A stage timeout or
Ctrl-C cancels the run, and the whole process group is killed.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path

from ..sandbox import Confinement
from ..workspace import ProcessResult, Refusal, Workspace, run_process, scrub_env
from . import AttemptRecord, AttemptReporter, StageFailure, StageRequest, StageResult

__all__ = ["ShellRunner", "describe_run"]

TAIL_LINES = 80
TAIL_CHARS = 8_000
_NO_LIMIT = 7 * 24 * 3600.0  # the engine's stage timeout is the limit; this only bounds a lost process


def _tail(text: str) -> str:
    lines = text.rstrip("\n").splitlines()
    cut = len(lines) > TAIL_LINES
    kept = "\n".join(lines[-TAIL_LINES:])
    if len(kept) > TAIL_CHARS:
        kept, cut = kept[-TAIL_CHARS:], True
    return ("[… earlier lines cut …]\n" if cut else "") + kept


def _ended(result: ProcessResult, *, timed: bool = True) -> str:
    """How the command ended; ``timed=False`` leaves out how long it took (an output must not change with the
    clock, or a stage that reads it would run again for nothing: the duration is in the state)."""
    if result.timed_out:
        ended = "timed out"
    elif result.exit_code is None:
        ended = "could not start"
    else:
        ended = f"exit code {result.exit_code}"
    return f"{ended} after {result.duration:.1f} s" if timed else ended


def _tails(result: ProcessResult) -> str:
    parts = []
    for name, text in (("stdout", result.stdout), ("stderr", result.stderr)):
        if text.strip():
            parts.append(f"{name} (last lines):\n```\n{_tail(text)}\n```")
    return "\n\n".join(parts) if parts else "(no output)"


def describe_run(command: str, cwd: str, result: ProcessResult) -> str:
    """The stage's output: the command, how it ended, and the tails of what it printed."""
    where = "" if cwd in ("", ".") else f" (in {cwd}/)"
    return f"$ {command}{where}\n{_ended(result, timed=False)}\n\n{_tails(result)}\n"


class ShellRunner:
    """Runs ``request.command`` in ``root``; ``environ`` is the caller's environment (scrubbed before use)."""

    def __init__(
        self, root: Path, environ: Mapping[str, str], limit: int = 200_000, confinement: Confinement | None = None
    ) -> None:
        self.root = root.resolve()
        self.environ = dict(environ)
        self.limit = limit
        self.confinement = confinement or Confinement()

    def _cwd(self, relative: str) -> Path:
        try:
            cwd = Workspace(self.root).resolve(relative)
        except Refusal:
            where = (self.root / relative).resolve()
            raise StageFailure(f"cwd {relative!r} resolves outside the workspace ({where})") from None
        if not cwd.is_dir():
            raise StageFailure(f"cwd {relative!r} is not a folder in the workspace")
        return cwd

    async def run(self, request: StageRequest, report: AttemptReporter) -> StageResult:
        command = request.command
        if command is None:
            raise StageFailure(f"stage {request.stage_id!r} has no command to run")
        cwd = self._cwd(command.cwd)
        env = scrub_env(self.environ, dict(command.env))
        started, clock = time.time(), time.monotonic()
        try:
            sandbox = self.confinement.for_stage(self.root, request.writes, request.network)
            result = await run_process(
                command.command, cwd=cwd, env=env, timeout=_NO_LIMIT, limit=self.limit, sandbox=sandbox
            )
        except BaseException:
            report(AttemptRecord(1, started, round(time.monotonic() - clock, 3), error="cancelled"))
            raise
        output = describe_run(command.command, command.cwd, result)
        failed = result.exit_code != 0
        # Taken from the result, not from the output's lines: a command may span several lines.
        error = _ended(result) if failed else None
        report(AttemptRecord(1, started, round(time.monotonic() - clock, 3), error=error))
        if failed:
            raise StageFailure(f"`{command.command}` failed: {error}\n\n{_tails(result)}")
        return StageResult(output=output, stop_reason="exit 0")
