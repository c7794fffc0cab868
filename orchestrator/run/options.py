"""What a user asks of a run, and the checked, typed settings a run is made with.

``RunRequest`` holds the command line's values as given (the CLI builds it, and
so can any Python caller); ``prepare.prepare_run`` checks it and returns a
``PreparedRun``: one frozen record of everything the run needs (the compiled
workflow, params, the task's folder, budgets, runner choices), which the engine's
own options are derived from in one place. No ``Any`` crosses from the CLI.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..compiler import Compiled
from ..params import param_text
from ..project import INSTRUCTIONS_DIR, OUTPUT_DIR
from ..runners.registry import kind_of
from ..sandbox import Confinement
from ..state.repository import FileRepository

__all__ = ["PreparedRun", "RunRequest"]


@dataclass(frozen=True)
class RunRequest:
    """What the user asked for on the command line."""

    task: str  # "": the workflow's name
    param_args: Sequence[str] = ()
    params_file: Path | None = None
    max_parallel: int | None = None
    offline: bool = False
    responses_file: Path | None = None
    latency: float = 0.0
    force: bool = False
    from_stages: Sequence[str] = ()
    only: Sequence[str] = ()
    approve_all: bool = False
    budget_usd: float | None = None
    # The caller's environment: commands get it scrubbed of secrets; agent CLIs get it as it is.
    environ: Mapping[str, str] = field(default_factory=dict)
    record: Path | None = None
    replay: Path | None = None
    params: Mapping[str, Any] = field(default_factory=dict)  # typed values (a stored run's), under the others
    driven: bool = False  # stages run elsewhere and are recorded with ``orchestrate state``: no runner needed


@dataclass(frozen=True)
class PreparedRun:
    compiled: Compiled
    workflow_path: Path
    task: str
    params: dict[str, Any]
    max_parallel: int
    folder: Path
    offline: bool
    responses: dict[str, Any]
    latency: float
    force: bool = False
    from_stages: tuple[str, ...] = ()
    only: tuple[str, ...] = ()
    approve_all: bool = False
    budget_usd: float | None = None
    display: str = ""  # how messages name the state folder
    root: Path = Path(".")  # the workspace: the project root, where tools and commands work
    environ: Mapping[str, str] = field(default_factory=dict)
    record: Path | None = None
    replay: Path | None = None
    keys: Path | None = None  # where the key that signs decisions on gates is kept (``state.keys``)

    @property
    def repository(self) -> FileRepository:
        """Where the task's state lives."""
        return FileRepository(self.folder, self.display or None)

    @property
    def needs_api(self) -> bool:
        """Whether some stage will call the Messages API (so an API key is needed)."""
        if self.offline or self.replay is not None:
            return False
        plan = self.compiled.plan
        return any(kind_of(plan.runner_for(sid)).calls_api for sid in plan.order if plan.runner_for(sid))

    @property
    def command(self) -> str:
        """The command that runs (or continues) this task, as a user would type it from the project root."""
        parts = ["orchestrate", "run", self.compiled.source, "--task", self.task]
        for name, value in self.params.items():
            parts += ["--param", f"{name}={param_text(value)}"]
        if self.offline:
            parts.append("--offline")
        return shlex.join(parts)

    @property
    def runs_commands(self) -> bool:
        """Whether some stage runs commands (see ``stage_runs_commands``)."""
        return any(self.stage_runs_commands(sid) for sid in self.compiled.plan.order)

    def stage_runs_commands(self, sid: str) -> bool:
        """Whether stage ``sid`` runs commands: a ``run:`` stage, or an agent with the bash tool and commands
        allowed (an offline run calls no tools, but still runs ``run:`` stages)."""
        plan = self.compiled.plan
        stage = plan.stages[sid]
        if stage.kind == "command":
            return True
        tools_run = not self.offline and stage.kind == "agent" and kind_of(plan.runner_for(sid)).tools
        return tools_run and "bash" in plan.tools_for(sid) and bool(plan.permissions_for(sid).bash)

    @property
    def confinement(self) -> Confinement:
        """How the run's commands are confined, and what no stage may write: the state folders, compiled output,
        instruction templates, the workflows and ``.git``."""
        root = self.root
        protected = [self.folder.parent, root / OUTPUT_DIR, root / INSTRUCTIONS_DIR, root / ".git"]
        if self.workflow_path.parent != root:
            protected.append(self.workflow_path.parent)
        enabled = self.compiled.plan.workflow.sandbox != "none"
        hidden = (self.keys,) if self.keys is not None else ()
        return Confinement(enabled, tuple(p for p in protected if p.is_relative_to(root)), hidden)

    @property
    def forced(self) -> dict[str, str]:
        """Stages this run must redo whatever they hold, with the reason."""
        plan = self.compiled.plan
        if self.force:
            return {sid: "--force" for sid in plan.order}
        out: dict[str, str] = {}
        for sid in self.from_stages:
            for target in {sid} | plan.descendants({sid}):
                out.setdefault(target, f"--from {sid}")
        for sid in self.only:
            out[sid] = f"--only {sid}"
        return out
