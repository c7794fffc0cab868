"""The home of runs on Temporal: the worker that holds the checkout, and what it answers for its runs.

A run's workflow and every activity that touches the workspace or the state
folder run on its home worker (its queue is named after the checkout). For
each run it hosts, ``HomeRuns`` keeps a ``HomeRun``: the prepared run, checked
against the ticket's pin, and, once opened, the ``OpenedRun`` a local run would
make (lock, session, state store, guard, request builder, memo, gates,
runners). ``HomeActivities`` are the activities the workflow asks them through:
open and close the run, build a stage's input, recall an earlier output,
settle an input after the stage acted, look up a decision, snapshot and check
the workspace around a try, and record events into the state folder. A home
that restarts mid-run reopens the run from its state folder on the first
activity that needs it.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from temporalio import activity

from ..errors import OrchestrateError, StateError
from ..fileio import atomic_write
from ..project import Project
from ..run.opened import OpenedRun
from ..run.options import PreparedRun
from ..run.outcomes import Instance, StageInput
from ..run.prepare import check_only, prepare_run
from .ticket import Ticket, pin_of
from .wire import (
    Wire,
    decision_to_wire,
    event_from_wire,
    feedback_to_wire,
    input_to_wire,
    progress_from_wire,
    recalled_to_wire,
)

__all__ = ["HomeActivities", "HomeRun", "HomeRuns", "PinError"]


class PinError(OrchestrateError):
    """The checkout no longer compiles to the run that was started (its workflow or templates changed)."""


@dataclass
class HomeRun:
    """One run this home hosts."""

    ticket: Ticket
    prepared: PreparedRun
    opened: OpenedRun | None = None
    inputs: dict[str, StageInput] = field(default_factory=dict)  # the last input built per stage (to settle)
    tokens: dict[str, object] = field(default_factory=dict)  # workspace snapshots taken before tries
    recorded: int = 0  # events of this workflow run written to the state folder


class HomeRuns:
    """The runs a home worker hosts, keyed by workflow id; ``environ`` is what its commands and agent CLIs get."""

    def __init__(self, environ: Mapping[str, str], keys: Path | None = None) -> None:
        self.environ = dict(environ)
        self.keys = keys
        self.runs: dict[str, HomeRun] = {}

    def prepared(self, ticket: Ticket) -> HomeRun:
        """The run, prepared from the checkout and checked against its pin (no lock taken, nothing written)."""
        run = self.runs.get(ticket.workflow_id)
        if run is not None and run.ticket.pin == ticket.pin:
            return run
        root = Path(ticket.root)
        project = Project(root, keys=self.keys)
        prepared = prepare_run(root / ticket.workflow, project, ticket.request(self.environ))
        if pin_of(prepared) != ticket.pin:
            raise PinError(
                f"{ticket.workflow} or its instructions changed since task {ticket.task!r} was started on Temporal",
                hint="restore them, or cancel the run (orchestrate cancel) and start it again",
            )
        run = HomeRun(ticket, prepared)
        self.runs[ticket.workflow_id] = run
        return run

    def opened(self, ticket: Ticket, run_id: str) -> tuple[HomeRun, OpenedRun]:
        """The run opened (lock taken, state store open); reopened from its state folder after a restart."""
        run = self.prepared(ticket)
        if run.opened is None:
            state = run.prepared.repository.recover() if run.prepared.repository.exists() else None
            if state is None or state.run_id != run_id:
                raise StateError(f"run {run_id} of task {ticket.task!r} is not in {run.prepared.display}")
            run.opened = OpenedRun.open(run.prepared, run_id=run_id, state=state, loop=asyncio.get_running_loop())
            run.recorded = _recorded(run.prepared)
        return run, run.opened

    async def close(self, ticket: Ticket) -> None:
        run = self.runs.pop(ticket.workflow_id, None)
        if run is not None and run.opened is not None:
            await run.opened.aclose()

    async def aclose(self) -> None:
        """Let go of every run (the worker stops): their state is written and their locks released."""
        for run in list(self.runs.values()):
            if run.opened is not None:
                await run.opened.aclose()
        self.runs.clear()


def _recorded(prepared: PreparedRun) -> int:
    """How many events of this workflow the state folder holds (a home that restarted mid-run)."""
    try:
        data = json.loads(prepared.repository.temporal_recorded.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return 0
    return int(data.get("count", 0)) if data.get("workflow") == activity.info().workflow_run_id else 0


def _instance(data: Wire | None) -> Instance | None:
    return Instance(**data) if data is not None else None


class HomeActivities:
    """The activities of runs on this home (see the module docstring)."""

    def __init__(self, runs: HomeRuns) -> None:
        self.runs = runs

    def _opened(self, ticket_data: Wire, run_id: str, first: int, events: list[Wire]) -> tuple[HomeRun, OpenedRun]:
        """The run, with events ``first``... written into its state folder first; events it already holds (a
        retried call) are skipped."""
        run, opened = self.runs.opened(Ticket.from_wire(ticket_data), run_id)
        if events:
            for index, data in enumerate(events, start=first):
                if index < run.recorded:
                    continue
                # Written on the worker's loop as a local run's are: lines at once, the snapshot on its interval.
                opened.store.on_event(event_from_wire(data))
                run.recorded = index + 1
            marker = json.dumps({"workflow": activity.info().workflow_run_id, "count": run.recorded})
            atomic_write(run.prepared.repository.temporal_recorded, marker.encode(), durable=False)
        return run, opened

    @activity.defn(name="orchestrate.open")
    async def open(self, ticket_data: Wire) -> Wire:
        """Open the run (the task's lock, its session, its state store); what the workflow's engine needs."""
        ticket = Ticket.from_wire(ticket_data)
        run = self.runs.prepared(ticket)
        if run.opened is None:
            run.opened = OpenedRun.open(
                run.prepared, run_id=uuid.uuid4().hex[:12], check=check_only, loop=asyncio.get_running_loop()
            )
            run.recorded = 0
        session = run.opened.session
        options = run.opened.options
        return {
            "run_id": session.run_id,
            "resumed": session.resume,
            "spent_usd": options.spent_usd,
            "round": options.round,
            "feedback": feedback_to_wire(session.feedback),
            "batches": {sid: list(batch) for sid, batch in session.batches.items()},
        }

    @activity.defn(name="orchestrate.prepare")
    async def prepare(
        self, ticket_data: Wire, run_id: str, first: int, events: list[Wire], sid: str, progress: Wire, ran: list[str]
    ) -> Wire:
        run, opened = self._opened(ticket_data, run_id, first, events)
        stage_input, recalled = await opened.home.prepare(sid, progress_from_wire(progress), frozenset(ran))
        run.inputs[sid] = stage_input
        return {"input": input_to_wire(stage_input), "recalled": recalled_to_wire(recalled)}

    @activity.defn(name="orchestrate.settled")
    async def settled(self, ticket_data: Wire, run_id: str, first: int, events: list[Wire], sid: str) -> Wire:
        run, opened = self._opened(ticket_data, run_id, first, events)
        stage_input = run.inputs.get(sid)
        if stage_input is None:
            raise StateError(f"stage {sid}'s input was lost with a restart of its home worker; run it again")
        return input_to_wire(await opened.home.settled(sid, stage_input))

    @activity.defn(name="orchestrate.decision")
    async def decision(
        self,
        ticket_data: Wire,
        run_id: str,
        first: int,
        events: list[Wire],
        sid: str,
        fingerprint: str,
        output_sha: str,
    ) -> Wire | None:
        _, opened = self._opened(ticket_data, run_id, first, events)
        return decision_to_wire(await opened.home.decision(sid, fingerprint, output_sha))

    @activity.defn(name="orchestrate.before")
    async def before(
        self, ticket_data: Wire, run_id: str, first: int, events: list[Wire], sid: str, instance: Wire | None
    ) -> str:
        run, opened = self._opened(ticket_data, run_id, first, events)
        opened.guard.scope(sid, _instance(instance))  # the guard learns the stage's scope as the scheduler did
        token = await opened.guard.before(sid)
        key = f"{sid}#{len(run.tokens)}"
        run.tokens[key] = token
        return key

    @activity.defn(name="orchestrate.after")
    async def after(
        self,
        ticket_data: Wire,
        run_id: str,
        first: int,
        events: list[Wire],
        sid: str,
        key: str,
        output: str,
        data: Wire | None,
        others: list[str],
    ) -> Wire:
        run, opened = self._opened(ticket_data, run_id, first, events)
        if key not in run.tokens:
            return {"data": data, "problem": None}  # the snapshot was lost with a restart: nothing to compare
        checked, problem = await opened.guard.after(sid, run.tokens.pop(key), output, data, frozenset(others))
        return {"data": checked, "problem": problem}

    @activity.defn(name="orchestrate.record")
    async def record(self, ticket_data: Wire, run_id: str, first: int, events: list[Wire]) -> None:
        """Events ``first``... into the state folder (the other activities take them too, before their work)."""
        self._opened(ticket_data, run_id, first, events)

    @activity.defn(name="orchestrate.close")
    async def close(self, ticket_data: Wire) -> None:
        ticket = Ticket.from_wire(ticket_data)
        run = self.runs.runs.get(ticket.workflow_id)
        if run is not None:  # the run is over: nothing is left to signal or to skip
            repository = run.prepared.repository
            repository.temporal_recorded.unlink(missing_ok=True)
            repository.temporal_note.unlink(missing_ok=True)
        await self.runs.close(ticket)

    def all(self) -> list[Any]:
        return [
            self.open,
            self.prepare,
            self.settled,
            self.decision,
            self.before,
            self.after,
            self.record,
            self.close,
        ]
