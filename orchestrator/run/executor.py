"""Where one try of a stage runs: the ``Executor`` seam, and ``LocalExecutor`` (this process).

The engine decides when a try starts, how long it may take and what happens
after it; an executor only carries it out and returns the runner's result,
reporting each attempt to the meter it is given. ``LocalExecutor`` calls the
stage's runner in this process, on the engine's event loop; an executor that
sends tries to other machines (a Temporal worker pool) is another class with
the same one method. It never schedules, retries or records anything.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from ..runners import Meter, Runner, StageRequest, StageResult

__all__ = ["Executor", "LocalExecutor"]


class Executor(Protocol):
    async def run_try(self, stage: str, request: StageRequest, meter: Meter) -> StageResult:
        """Run one try of ``stage``; raise ``OrchestrateError`` (a sentence) when it fails."""
        ...


class LocalExecutor:
    """Each try on the stage's runner, in this process."""

    def __init__(self, runner_for: Callable[[str], Runner]) -> None:
        self.runner_for = runner_for

    async def run_try(self, stage: str, request: StageRequest, meter: Meter) -> StageResult:
        return await self.runner_for(stage).run(request, meter)
