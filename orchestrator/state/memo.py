"""Skip-unchanged: whether a stage keeps its earlier output, and why not when it can't.

A stage keeps its output when its fingerprint (see ``fingerprint``) equals the one
recorded, the output on disk is the one recorded (its digest), and nothing forces
it to run (``--force``, ``--from``, ``--only``, a rejection, a run that never
finished it). Otherwise the reason it runs, in words: what changed since.
Reads earlier outputs through the state repository; never writes.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Set
from dataclasses import dataclass
from typing import Any

from ..fingerprint import Recalled, describe_change, digest
from .repository import FileRepository

__all__ = ["Memo", "Record"]


@dataclass(frozen=True)
class Record:
    """What an earlier run left of a stage: enough to keep its output, or to say why not."""

    status: str
    fingerprint: str | None = None
    inputs: Mapping[str, str] | None = None
    output_sha256: str | None = None
    run_id: str = ""
    error: str | None = None
    gate: bool = False
    rejected: str | None = None  # the note of a person who rejected this output


_UNFINISHED = frozenset({"running", "interrupted"})


class Memo:
    """Decides, stage by stage, whether a run keeps an earlier output (see the module docstring).

    ``records`` come from the task's stored state; ``forced`` maps stages that must
    run to the reason (``--force``, ``--from``, ``--only``); earlier outputs are read
    through ``repository``.
    """

    def __init__(
        self,
        repository: FileRepository,
        records: Mapping[str, Record],
        forced: Mapping[str, str] | None = None,
        manifest: Callable[[str], Mapping[str, str] | None] | None = None,
    ) -> None:
        self.repository = repository
        self.records = records
        self.forced = dict(forced or {})
        self.manifest = manifest  # a workspace manifest by its key, to name the files that changed

    def obstacle(self, stage: str) -> str | None:
        """Why ``stage`` must run whatever its inputs are (forced, never finished, rejected), or None."""
        if stage in self.forced:
            return self.forced[stage]
        record = self.records.get(stage)
        if record is None:
            return "not run before"
        if record.rejected is not None:
            return "its last output was rejected" + (f": {record.rejected}" if record.rejected else "")
        if record.status in _UNFINISHED or record.fingerprint is None or not (record.gate or record.output_sha256):
            return _why_not_finished(record)
        return None

    def recall(self, stage: str, fingerprint: str, inputs: Mapping[str, str], ran: Set[str]) -> Recalled | str:
        """The earlier output ``stage`` may keep, or the reason it must run."""
        obstacle = self.obstacle(stage)
        if obstacle is not None:
            return obstacle
        record = self.records[stage]
        if record.fingerprint != fingerprint:
            return describe_change(record.inputs or {}, inputs, ran, self.manifest)
        if record.gate:
            return Recalled("", None, "", record.run_id, f"unchanged since run {record.run_id}")
        try:
            raw = self.repository.output_file(stage).read_bytes()
        except OSError:
            return f"output missing: stages/{stage}.md"
        if digest(raw, 64) != record.output_sha256:
            return f"output changed on disk: stages/{stage}.md"
        data: dict[str, Any] | None = None
        structured = self.repository.data_file(stage)
        if structured.exists():
            try:
                loaded = json.loads(structured.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                return f"structured output unreadable: stages/{stage}.json"
            data = loaded if isinstance(loaded, dict) else None
        text = raw.decode("utf-8", "replace")
        return Recalled(text, data, record.output_sha256 or "", record.run_id, f"unchanged since run {record.run_id}")


def _why_not_finished(record: Record) -> str:
    if record.status == "failed":
        return f"failed last time: {record.error}" if record.error else "failed last time"
    if record.status in ("running", "interrupted"):
        return "was interrupted last time"
    if record.status == "skipped":
        return "was skipped last time"
    return "not run before"
