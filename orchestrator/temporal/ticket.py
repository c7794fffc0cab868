"""What a run on Temporal is started with, and the names it goes by: workflow id and task queues.

A ``Ticket`` is the workflow's input: where the checkout is (on its home
worker), which workflow file, the task, its params and the run's options, the
queues, and a pin (a digest of the compiled workflow) so that a home worker
that rebuilds the run after a restart knows it rebuilt the same one. The names
are derived from the project (its host and folder) and the task, so the same
task submitted twice is the same workflow. Pure; no Temporal import.
"""

from __future__ import annotations

import socket
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..fingerprint import digest
from ..run.options import PreparedRun, RunRequest

__all__ = ["DEFAULT_QUEUE", "Ticket", "home_queue", "pin_of", "project_key", "workflow_id"]

DEFAULT_QUEUE = "orchestrate"  # the queue every worker serves: model-only stage attempts


def project_key(root: Path) -> str:
    """The project as Temporal names it: its host and folder, digested (a checkout is a folder on one host)."""
    return digest(f"{socket.gethostname()}:{root.resolve()}", 12)


def workflow_id(root: Path, task: str) -> str:
    return f"orchestrate-{project_key(root)}-{task}"


def home_queue(root: Path) -> str:
    """The queue of the worker that holds this checkout: workflow tasks and the stages that act there."""
    return f"orchestrate-home-{project_key(root)}"


def pin_of(prepared: PreparedRun) -> str:
    """A digest of what the run is compiled from: the workflow, its agents' instructions and the params."""
    compiled = prepared.compiled
    parts = [compiled.source, repr(sorted(prepared.params.items()))]
    parts += [agent.text + agent.brief for agent in compiled.rendered]
    parts += [f.target + f.agent + f.content.decode("utf-8", "replace") for f in compiled.files]
    return digest("\n".join(parts), 16)


@dataclass(frozen=True)
class Ticket:
    root: str  # the checkout, as its home worker sees it
    workflow: str  # the workflow file, relative to the root
    task: str
    params: dict[str, Any]
    pin: str
    home_queue: str
    queue: str = DEFAULT_QUEUE
    max_parallel: int | None = None
    force: bool = False
    from_stages: tuple[str, ...] = ()
    only: tuple[str, ...] = ()
    approve_all: bool = False
    budget_usd: float | None = None
    offline: bool = False
    responses: str | None = None  # the --responses file, relative to the root
    latency: float = 0.0
    heartbeat: float = 10.0  # seconds without a heartbeat before a stage's attempt counts as lost
    options: dict[str, Any] = field(default_factory=dict)  # reserved for options later versions add

    @classmethod
    def of(cls, prepared: PreparedRun, request: RunRequest, queue: str, heartbeat: float) -> Ticket:
        root = prepared.root.resolve()
        responses = request.responses_file.resolve() if request.responses_file else None
        return cls(
            root=str(root),
            workflow=str(prepared.workflow_path.resolve().relative_to(root)),
            task=prepared.task,
            params=dict(prepared.params),
            pin=pin_of(prepared),
            home_queue=home_queue(root),
            queue=queue,
            max_parallel=request.max_parallel,
            force=prepared.force,
            from_stages=prepared.from_stages,
            only=prepared.only,
            approve_all=prepared.approve_all,
            budget_usd=request.budget_usd,
            offline=prepared.offline,
            responses=str(responses.relative_to(root)) if responses and responses.is_relative_to(root) else None,
            latency=prepared.latency,
            heartbeat=heartbeat,
        )

    @property
    def workflow_id(self) -> str:
        return workflow_id(Path(self.root), self.task)

    def to_wire(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> Ticket:
        values = dict(data)
        for name in ("from_stages", "only"):
            values[name] = tuple(values.get(name) or ())
        return cls(**values)

    def request(self, environ: dict[str, str]) -> RunRequest:
        """The run request its home prepares the run from (with the home worker's environment)."""
        root = Path(self.root)
        return RunRequest(
            task=self.task,
            params=self.params,
            max_parallel=self.max_parallel,
            offline=self.offline,
            responses_file=root / self.responses if self.responses else None,
            latency=self.latency,
            force=self.force,
            from_stages=self.from_stages,
            only=self.only,
            approve_all=self.approve_all,
            budget_usd=self.budget_usd,
            environ=environ,
        )
