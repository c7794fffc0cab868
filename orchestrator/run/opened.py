"""A run opened where its checkout is: lock taken, session decided, state store open, every seam made.

``OpenedRun.open`` is what a run does before its first stage, on the machine
that holds the workspace and the state folder: it takes the task's lock, reads
what earlier runs left, decides the session (continue or start anew), opens the
``StateStore`` and makes the workspace guard, the runners and the ``LocalHome``
(request builder, memo, gates). ``orchestrate run`` hands these to the engine
in this process; a run on Temporal keeps them on its home worker and the
workflow asks them through activities. ``close`` writes the state out and lets
go of the lock. It never schedules anything.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..cost import Pricing
from ..runners import Runner
from ..runners.offline import OfflineRunner
from ..runners.registry import RunnerSetup, kind_of
from ..state.lock import TaskLock
from ..state.model import RunState
from ..state.report import render_markdown
from ..state.store import StateStore
from .guard import WorkspaceGuard
from .options import PreparedRun
from .outcomes import EngineOptions, LocalHome
from .request import decide_condition, foreach_items, request_builder
from .scheduler import Condition, Expander
from .session import Session, initial_state, inside, load_previous, start_session

if TYPE_CHECKING:
    from ..runners.agent_cli import CliAgent

__all__ = ["OpenedRun", "RunnerChoice", "engine_options", "workspace_guard"]


@dataclass
class OpenedRun:
    """Everything a run's engine needs from the machine that holds its checkout (see the module docstring)."""

    prepared: PreparedRun
    lock: TaskLock
    session: Session
    store: StateStore
    guard: WorkspaceGuard
    home: LocalHome
    runners: RunnerChoice
    options: EngineOptions
    price: Pricing
    condition: Condition
    expand: Expander

    @classmethod
    def open(
        cls,
        prepared: PreparedRun,
        *,
        clock: Callable[[], float] = time.time,
        run_id: str | None = None,
        flush_interval: float = 0.25,
        loop: asyncio.AbstractEventLoop | None = None,
        on_error: Callable[[BaseException], None] | None = None,
        runner: Runner | None = None,
        state: RunState | None = None,
        check: Callable[[PreparedRun, Session], None] | None = None,
    ) -> OpenedRun:
        """Take the task's lock and make the run ready (raises ``StateError`` when another run holds it).

        ``state`` reopens a run already under way (its home worker restarted): the store carries on from it
        and nothing is written afresh. ``check`` may refuse the session (a ``UsageError``) before anything is
        written."""
        lock = TaskLock(prepared.folder, prepared.command, display=prepared.display).acquire()
        try:
            previous = load_previous(prepared)
            session = start_session(prepared, previous, run_id)
            if check is not None:
                check(prepared, session)
            runners = RunnerChoice(prepared, runner)
            runners.prepare()  # import and build the runners now, so a stage's duration is its own work
            store = StateStore(
                prepared.folder,
                state if state is not None else initial_state(prepared, session.run_id, clock(), session),
                render_markdown,
                flush_interval=flush_interval,
                loop=loop,
                snapshot=state is None,
                on_error=on_error,
            )
        except BaseException:
            lock.release()
            raise
        plan = prepared.compiled.plan
        guard = workspace_guard(prepared)
        home = LocalHome(
            request_builder(prepared, session.rejected, session.workspace), session.memo, session.approvals
        )
        return cls(
            prepared,
            lock,
            session,
            store,
            guard,
            home,
            runners,
            engine_options(prepared, session.run_id, session.spent_usd, session.round, session.resume),
            Pricing(plan.workflow.pricing),
            decide_condition(prepared),
            foreach_items(prepared),
        )

    async def aclose(self) -> None:
        """Close the runners, write the state out and let go of the lock (``store.close`` re-raises a write error
        the run had)."""
        try:
            await self.runners.aclose()
            self.store.close()
        finally:
            self.lock.release()


def workspace_guard(prepared: PreparedRun) -> WorkspaceGuard:
    """The run's write scopes and output checks, blind to the state folders and a --record folder."""
    return WorkspaceGuard(
        prepared.compiled.plan,
        prepared.root,
        prepared.compiled.renderer,
        params=prepared.params,
        task=prepared.task,
        ignore=inside(prepared.root, prepared.folder.parent, prepared.record),
        acting=not prepared.offline,
    )


def engine_options(prepared: PreparedRun, run_id: str, spent_usd: float, round: int, resumed: bool) -> EngineOptions:
    """The engine's options for run ``run_id`` of ``prepared`` (a resumed run's spend and audit round)."""
    plan = prepared.compiled.plan
    return EngineOptions(
        max_parallel=prepared.max_parallel,
        stage_timeout=plan.workflow.defaults.timeout,
        run_id=run_id,
        task=prepared.task,
        budget_usd=prepared.budget_usd,
        spent_usd=spent_usd,
        max_rounds=plan.workflow.audit.max_rounds,
        round=round,
        approve_all=prepared.approve_all,
        only=frozenset(prepared.only) if prepared.only else None,
        resumed=resumed,
    )


class RunnerChoice:
    """Which runner runs each stage: ``run:`` commands the shell runner; agent stages ``runner`` if given
    (tests), else the offline runner for offline runs, else the stage's own (the API, Claude Code or OpenCode).
    Each runner is made once, on first use, and closed by ``aclose``."""

    def __init__(self, prepared: PreparedRun, runner: Runner | None = None) -> None:
        self.prepared = prepared
        self.runner = runner
        self.made: dict[str, Runner] = {}
        self.kinds: dict[str, str] = {}

    def _make(self, kind: str) -> Runner:
        prepared = self.prepared
        if kind != "shell" and self.runner is not None:
            return self.runner
        if kind != "shell" and prepared.offline:
            return OfflineRunner(prepared.responses, prepared.latency)
        setup = RunnerSetup(
            root=prepared.root,
            environ=prepared.environ,
            transcripts=prepared.repository.stages,
            record=prepared.record,
            replay=prepared.replay,
            cache_warmup=prepared.compiled.plan.workflow.defaults.cache_warmup,
            agents=lambda: _cli_agents(prepared),
            confinement=prepared.confinement,
        )
        return kind_of(kind).make(setup)

    def prepare(self) -> None:
        """Make every runner the plan's stages will use."""
        for sid in self.prepared.compiled.plan.order:
            if self.prepared.compiled.plan.runner_for(sid):  # an approval gate has none
                self(sid)

    def __call__(self, sid: str) -> Runner:
        spec_id = sid.split("[", 1)[0]  # an instance runs as its stage
        kind = self.kinds.get(spec_id)
        if kind is None:
            kind = self.kinds[spec_id] = self.prepared.compiled.plan.runner_for(spec_id)
        key = "shell" if kind == "shell" else ("agent" if self.runner is not None or self.prepared.offline else kind)
        if key not in self.made:
            self.made[key] = self._make(kind)
        return self.made[key]

    async def aclose(self) -> None:
        """Close the HTTP clients the runners opened, on the loop that opened them."""
        for made in self.made.values():
            close = getattr(made, "aclose", None)
            if close is not None:
                await close()


def _cli_agents(prepared: PreparedRun) -> dict[str, CliAgent]:
    """The compiled agent files, as the agent CLIs load them."""
    from ..runners.agent_cli import CliAgent

    files: dict[tuple[str, str], str] = {}
    for generated in prepared.compiled.files:  # keyed by the generated name, e.g. feature-build
        files[(generated.target, generated.agent)] = generated.content.decode("utf-8")
    out: dict[str, CliAgent] = {}
    for agent in prepared.compiled.rendered:
        if agent.coordinator:
            continue
        out[agent.agent] = CliAgent(
            name=agent.name,
            claude_file=files.get(("claude", agent.name), ""),
            opencode_file=files.get(("opencode", agent.name), ""),
        )
    return out
