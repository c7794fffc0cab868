"""Record and replay model exchanges: ``run --record DIR`` and ``run --replay DIR``.

A recording is a folder with one ``<stage>.jsonl`` per stage; each line is one
exchange of that stage, in order: the request as sent (minus nothing: it holds
no secrets, the API key travels in a header) and the reply as received. Replay
serves the replies back in the same order per stage, so parallel stages need no
shared order, and checks that each request is the one recorded: a changed
prompt, template or tool result makes replay fail loudly rather than return a
stale answer. Tool calls are not recorded; they run again against the workspace,
so a replay leaves the same files behind (what they print is not compared: it
holds timings). This module knows no SDK: requests and
replies are plain JSON.
"""

from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path
from typing import Any

from ..errors import UsageError
from . import StageFailure

__all__ = ["Recorder", "Replayer", "request_digest"]


def _safe_name(stage: str) -> str:
    # Stage and instance ids are validated ([a-z0-9_-] plus "[key]"), so they are file names already.
    if not stage or "/" in stage or "\\" in stage or stage.startswith("."):
        raise StageFailure(f"stage id {stage!r} can't name a recording file")
    return stage + ".jsonl"


def _comparable(arguments: dict[str, Any]) -> dict[str, Any]:
    """The request without what tools returned: commands print timings and paths that differ from run
    to run, while what the model said (and so what the tools did) is pinned by the replies themselves."""
    messages = []
    for message in arguments.get("messages") or []:
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, list):
            content = [
                {**block, "content": "(tool result)"}
                if isinstance(block, dict) and block.get("type") == "tool_result"
                else block
                for block in content
            ]
            message = {**message, "content": content}
        messages.append(message)
    return {**arguments, "messages": messages}


def request_digest(arguments: dict[str, Any]) -> str:
    """The hash that binds a recorded reply to its request (tool results left out)."""
    data = json.dumps(_comparable(arguments), sort_keys=True, default=str)
    return hashlib.sha256(data.encode("utf-8")).hexdigest()


def _describe_difference(recorded: dict[str, Any], current: dict[str, Any]) -> str:
    keys = sorted(k for k in recorded.keys() | current.keys() if recorded.get(k) != current.get(k))
    if keys == ["messages"]:
        old, new = recorded.get("messages") or [], current.get("messages") or []
        for index, (a, b) in enumerate(zip(old, new, strict=False)):
            if a != b:
                return f"message {index + 1} ({b.get('role', '?')}) differs"
        return f"{len(new)} messages instead of {len(old)}"
    return "differs in " + ", ".join(keys) if keys else "differs"


class Recorder:
    """Appends every exchange to ``<folder>/<stage>.jsonl`` (each line written whole)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._lock = threading.Lock()
        self._started: set[str] = set()
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UsageError(f"--record {folder}: can't create the folder: {exc.strerror or exc}") from None

    def record(self, stage: str, arguments: dict[str, Any], reply: dict[str, Any]) -> None:
        path = self.folder / _safe_name(stage)
        line = json.dumps(
            {"request_sha256": request_digest(arguments), "request": arguments, "reply": reply},
            sort_keys=True,
            default=str,
        )
        with self._lock:
            mode = "a" if stage in self._started else "w"  # a stage's first exchange of this run starts its file
            self._started.add(stage)
            with open(path, mode, encoding="utf-8") as handle:
                handle.write(line + "\n")


class Replayer:
    """Serves recorded replies, in order per stage, for requests equal to the recorded ones."""

    def __init__(self, folder: Path) -> None:
        if not folder.is_dir():
            raise UsageError(
                f"--replay {folder}: no such folder", hint="record one first with: orchestrate run ... --record DIR"
            )
        self.folder = folder
        self._next: dict[str, int] = {}
        self._cache: dict[str, list[dict[str, Any]]] = {}
        self._lock = threading.Lock()

    def _exchanges(self, stage: str) -> list[dict[str, Any]]:
        if stage not in self._cache:
            path = self.folder / _safe_name(stage)
            try:
                lines = path.read_text(encoding="utf-8").splitlines()
            except FileNotFoundError:
                raise StageFailure(
                    f"replay: {self.folder} has no recording of stage {stage!r} ({path.name} is missing)"
                ) from None
            try:
                self._cache[stage] = [json.loads(line) for line in lines if line.strip()]
            except ValueError as exc:
                raise StageFailure(f"replay: {path} is not a recording: {exc}") from None
        return self._cache[stage]

    def reply(self, stage: str, arguments: dict[str, Any]) -> dict[str, Any]:
        """The recorded reply to this stage's next request; ``StageFailure`` when there is none or the request
        is not the one recorded."""
        with self._lock:
            exchanges = self._exchanges(stage)
            number = self._next.get(stage, 0)
            self._next[stage] = number + 1
        if number >= len(exchanges):
            raise StageFailure(
                f"replay: stage {stage!r} asked for exchange {number + 1}, but only {len(exchanges)} were recorded"
            )
        exchange = exchanges[number]
        if exchange.get("request_sha256") != request_digest(arguments):
            current = _comparable(json.loads(json.dumps(arguments, default=str)))
            what = _describe_difference(_comparable(exchange.get("request") or {}), current)
            raise StageFailure(
                f"replay: request {number + 1} of stage {stage!r} is not the one recorded ({what}); "
                "the workflow, its templates or the workspace changed since — record again with --record"
            )
        reply = exchange.get("reply")
        if not isinstance(reply, dict):
            raise StageFailure(f"replay: exchange {number + 1} of stage {stage!r} has no reply")
        return reply
