"""A stage's try as a Temporal activity: run its runner on whichever worker took it, heartbeating.

``TryActivities.run_try`` runs one try of a stage where the workflow sent it:
on the run's home queue (a stage that acts on the workspace: its runners are
the ``OpenedRun``'s) or on the shared queue (a stage that only calls the
model: any worker, with a Messages API runner made from that worker's
environment). It heartbeats while the runner works, with the worker's name, so
that a worker that dies is noticed within the ticket's ``heartbeat`` seconds
and the try runs again elsewhere; the next attempt reports the lost one. Each
request is priced on the spot against the allowance the workflow held for the
try (the run's and the stage's budgets), so a try can't spend what the run has
not got. A stage failure is a non-retryable ``ApplicationError`` that carries
the attempts it made, so their tokens are counted like any others.
"""

from __future__ import annotations

import asyncio
import os
import socket
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from temporalio import activity
from temporalio.exceptions import ApplicationError

from ..cost import Pricing
from ..errors import OrchestrateError
from ..runners import AttemptRecord, BudgetExhausted, Meter, Runner
from ..runners.registry import RunnerSetup, kind_of
from .home import HomeRuns
from .ticket import Ticket
from .wire import Wire, attempt_to_wire, request_from_wire

__all__ = ["BUDGET", "FAILURE", "TryActivities", "worker_name"]

FAILURE = "StageFailure"  # the stage's try failed: the engine decides about retries
BUDGET = "BudgetExhausted"


def worker_name() -> str:
    """How the state names this worker (as Temporal names workers by default)."""
    return f"{os.getpid()}@{socket.gethostname()}"


class TryActivities:
    """Runs tries on this worker; ``runs`` is its home (None on a worker that holds no checkout)."""

    def __init__(self, environ: Mapping[str, str], runs: HomeRuns | None = None) -> None:
        self.environ = dict(environ)
        self.runs = runs
        self.name = worker_name()
        self._shared: Runner | None = None
        self._scratch: tempfile.TemporaryDirectory[str] | None = None

    def _shared_runner(self) -> Runner:
        """The Messages API runner for model-only stages: no workspace, no tools (an empty scratch folder)."""
        if self._shared is None:
            self._scratch = tempfile.TemporaryDirectory(prefix="orchestrate-worker-")
            setup = RunnerSetup(root=Path(self._scratch.name), environ=self.environ)
            self._shared = kind_of("anthropic").make(setup)
        return self._shared

    async def aclose(self) -> None:
        close = getattr(self._shared, "aclose", None)
        if close is not None:
            await close()
        if self._scratch is not None:
            self._scratch.cleanup()

    @activity.defn(name="orchestrate.try")
    async def run_try(self, spec: Wire) -> Wire:
        info = activity.info()
        ticket = Ticket.from_wire(spec["ticket"])
        request = request_from_wire(spec["request"])
        lost: list[Wire] = []
        if info.attempt > 1:  # the attempt before this one stopped heartbeating: its worker is gone
            before = str(info.heartbeat_details[0]) if info.heartbeat_details else "a worker"
            lost.append(
                attempt_to_wire(
                    AttemptRecord(
                        number=info.attempt - 1,
                        started=time.time(),
                        duration=0.0,
                        error=f"lost: {before} stopped answering (no heartbeat for {ticket.heartbeat:g} s); "
                        f"tried again on {self.name}",
                        worker=before,
                    )
                )
            )
        if spec["home"]:
            if self.runs is None:
                raise ApplicationError("this worker holds no checkout", type=FAILURE, non_retryable=True)
            _, opened = self.runs.opened(ticket, spec["run_id"])
            runner = opened.runners(request.stage_id)
        else:
            runner = self._shared_runner()
        attempts: list[AttemptRecord] = []
        batches: list[list[str]] = []
        tools: list[list[Any]] = []
        pricing = Pricing(spec["pricing"])
        allowance = spec["allowance"]
        used = [0.0]

        def report(attempt: AttemptRecord) -> None:
            attempt.worker = self.name
            attempts.append(attempt)
            if attempt.usage.total:
                used[0] += pricing.cost(attempt, request.model) or 0.0

        async def reserve(input_tokens: int, max_output: int, batch: bool) -> None:
            worst = pricing.worst(request.model, input_tokens, max_output, batch) or 0.0
            if used[0] + worst > allowance + 1e-9:
                raise BudgetExhausted(
                    f"the run's budget would be exceeded: ${used[0]:.4f} spent by this try, and its next "
                    f"request may cost up to ${worst:.4f} of the ${allowance:.4f} left"
                )

        def batched(batch_id: str, custom_id: str) -> None:
            batches.append([batch_id, custom_id])

        def tool(name: str, started: float, duration: float, error: str | None) -> None:
            tools.append([name, started, duration, error])

        pending = spec.get("batch")
        meter = Meter(
            report,
            reserve if allowance is not None else None,
            batched,
            (pending[0], pending[1]) if pending else None,
            tool=tool,
        )
        work = asyncio.create_task(runner.run(request, meter))
        try:
            while not work.done():
                activity.heartbeat(self.name)
                await asyncio.wait((work,), timeout=min(1.0, ticket.heartbeat / 4))
            result = work.result()
        except asyncio.CancelledError:
            work.cancel()
            raise
        except BudgetExhausted as exc:
            raise _failure(exc.message, BUDGET, attempts, lost, batches) from None
        except OrchestrateError as exc:
            raise _failure(exc.message, FAILURE, attempts, lost, batches) from None
        except Exception as exc:  # a runner bug fails its stage, as in a local run
            raise _failure(f"runner error: {type(exc).__name__}: {exc}", FAILURE, attempts, lost, batches) from None
        return {
            "output": result.output,
            "data": result.data,
            "stop_reason": result.stop_reason,
            "attempts": [*lost, *(attempt_to_wire(a) for a in attempts)],
            "batches": batches,
            "tools": tools,
            "worker": self.name,
        }


def _failure(
    message: str, kind: str, attempts: list[AttemptRecord], lost: list[Wire], batches: list[list[str]]
) -> ApplicationError:
    details: dict[str, Any] = {
        "message": message,
        "attempts": [*lost, *(attempt_to_wire(a) for a in attempts)],
        "batches": batches,
    }
    return ApplicationError(message, details, type=kind, non_retryable=True)
