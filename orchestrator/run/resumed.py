"""A ``Scheduler`` restored from a run recorded part-way, for a caller that starts stages elsewhere.

``orchestrate state`` commands each rebuild the run's scheduler from
``state.json`` (statuses, outputs, instances, decisions), record their one fact
and let it decide what follows, with the same rules as ``orchestrate run``.
Besides restoring, it knows what only such a caller does: list every stage
that may start without starting it (``take_all``), mark one started
(``started``), and start a finished stage again by hand (``restart``).
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Mapping
from typing import Any

from ..audit import Verdict
from ..events import StageExpanded, StageReopened
from ..graph import Plan
from .outcomes import Progress, StageOutcome
from .scheduler import DONE, OPEN, Scheduler

__all__ = ["Resumed"]


class Resumed(Scheduler):
    def __init__(
        self, plan: Plan, progress: Progress, expanded: Mapping[str, Iterable[str]], at: float, **rules: Any
    ) -> None:
        """The scheduler of ``plan`` as the run stood (``expanded``: each foreach stage's instances), at ``at``."""
        super().__init__(plan, progress=progress, **rules)
        self._restore(expanded, at)

    def take_all(self, at: float) -> list[str]:
        """Every stage that may start now, in order, each decided (``if``) and expanded (``foreach``) as in
        ``next``, but left pending: for a caller that starts stages elsewhere (``orchestrate state``)."""
        out: list[tuple[tuple[int, int], str]] = []
        while self.ready:
            entry = heapq.heappop(self.ready)
            if self.outcomes[entry[1]].status not in OPEN:
                continue
            if self._resolve(entry[1], at):
                out.append(entry)
        for entry in out:
            heapq.heappush(self.ready, entry)
        return [sid for _, sid in sorted(out)]

    def started(self, sid: str) -> None:
        """``sid`` was started by the caller (taken with ``take_all``)."""
        self.ready = [e for e in self.ready if e[1] != sid]
        heapq.heapify(self.ready)
        self._admit(sid)

    def restart(self, sid: str, at: float) -> None:
        """``sid`` is done again by hand: what comes after it that is done is reopened (what a failure
        skipped, what its earlier output fed), and a failed foreach stage runs its instances again."""
        spec_id = self.fanout.parent_of.get(sid, sid)
        after = self.plan.descendants({spec_id})
        for other in [o for o in self.outcomes if self.fanout.parent_of.get(o, o) in after]:
            if self.outcomes[other].status in ("succeeded", "failed", "skipped") and other not in self.fanout.parent_of:
                self.events.append(StageReopened(at, other, f"{sid} is running again"))
                self._reopen(other)
        parent = self.fanout.parent_of.get(sid)
        if parent is not None and self.outcomes[parent].status == "failed":
            members = self.fanout.members[parent]
            items = tuple(self.progress.instances[i].item for i in members)
            self.events.append(StageExpanded(at, parent, tuple(members), items))
            self.outcomes[parent] = StageOutcome("running")
            self.fanout.restore(parent, [i for i in members if self.outcomes[i].status not in DONE])
        for other in list(self.outcomes):
            self._recount(other, at)

    def _restore(self, expanded: Mapping[str, Iterable[str]], at: float) -> None:
        self.waiting, self.ready = {}, []
        for parent, ids in expanded.items():
            members = [self.progress.instances[i] for i in ids if i in self.progress.instances]
            added = self.fanout.add(parent, members)
            for iid, instance in zip(added, members, strict=True):
                self.index[iid] = (self.index[parent][0], instance.index)
            self.fanout.restore(parent, [i for i in added if self.outcomes[i].status not in DONE])
        if self.progress.outcomes.get(self.plan.audit_stage or "") is not None:
            data = self.outcomes[self.plan.audit_stage or ""].data
            self.verdict = Verdict.model_validate(data) if data is not None else None
        for sid, outcome in self.outcomes.items():
            if outcome.status == "running" and sid not in self.fanout.members:
                self.running.add(sid)
            elif outcome.status == "waiting_approval":
                self.gates[sid] = (outcome.fingerprint, "")
        for sid in list(self.outcomes):
            self._recount(sid, at)
        for parent in expanded:  # all of its instances finished, but it was never combined
            if self.outcomes[parent].status == "running" and not self.fanout.out(parent):
                self.settle(parent, self._combine(parent, at), at)

    def _recount(self, sid: str, at: float) -> None:
        """Count what ``sid`` still waits for; ready it, or skip it when a need can no longer release it."""
        parent = self.fanout.parent_of.get(sid)
        if parent is not None:
            ready = self.outcomes[sid].status in OPEN and self.outcomes[parent].status == "running"
            if ready and (self.index[sid], sid) not in self.ready:
                heapq.heappush(self.ready, (self.index[sid], sid))
            return
        if sid not in self.plan.stages:  # an instance of an expansion since forgotten
            return
        needs = self.plan.stages[sid].needs
        self.waiting[sid] = sum(1 for need in needs if not self.released(need))
        if self.outcomes[sid].status not in OPEN:
            return
        for need in needs:
            status = self.outcomes[need].status
            if status in ("failed", "skipped") and not self.released(need):
                how = "failed" if status == "failed" else "was skipped"
                self._skip(sid, f"needs {need}, which {how}", at)
                return
        if self.waiting[sid] == 0 and (self.index[sid], sid) not in self.ready:
            heapq.heappush(self.ready, (self.index[sid], sid))
