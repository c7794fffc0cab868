"""The checks around a stage that acts on the workspace: its write scope and its declared outputs.

``WorkspaceGuard`` is the run's ``Guard`` (see ``outcomes``). It tells the
engine each stage's write scope (so overlapping stages never run together),
snapshots the workspace before a stage that declared ``writes:``, and after
each try reports, in one sentence the stage (and its next try) can act on:

- files changed outside the declared scope (changes inside the scopes of
  stages that ran at the same time are theirs, not this stage's);
- declared ``outputs:`` that are missing or empty.

The shape of the reply itself (JSON, ``output_schema``, the verdict) is the
engine's to check (``contracts.check_reply``): it needs no workspace.

It never schedules or runs anything, and it ignores the state folder.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Set
from pathlib import Path
from typing import Any

from ..contracts import output_problems
from ..graph import Plan
from ..render import Renderer
from ..scopes import DEFAULT_IGNORE, Snapshot, changed_files, in_scope, outside_scope, take_snapshot
from .outcomes import Instance

__all__ = ["WorkspaceGuard"]

MAX_NAMED = 10


def _names(paths: list[str]) -> str:
    shown = ", ".join(paths[:MAX_NAMED])
    return shown + (f" and {len(paths) - MAX_NAMED} more" if len(paths) > MAX_NAMED else "")


class WorkspaceGuard:
    """``acting`` says whether agent stages really act (False for offline runs: nothing writes files then)."""

    def __init__(
        self,
        plan: Plan,
        root: Path,
        renderer: Renderer,
        *,
        params: Mapping[str, Any] | None = None,
        task: str = "",
        ignore: tuple[str, ...] = (),
        acting: bool = True,
    ) -> None:
        self.plan = plan
        self.root = root
        self.renderer = renderer
        self.params = dict(params or {})
        self.task = task
        self._spec: dict[str, str] = {}
        self._items: dict[str, Any] = {}
        self.ignore = (*DEFAULT_IGNORE, *ignore)
        self.acting = acting
        self._scopes: dict[str, tuple[str, ...]] = {}

    def _spec_id(self, stage: str) -> str:
        return self._spec.get(stage, stage)

    def scope(self, stage: str, instance: Instance | None) -> tuple[str, ...]:
        if stage not in self._scopes:
            spec_id = instance.parent if instance is not None else stage
            self._spec[stage] = spec_id
            if instance is not None:
                self._items[stage] = instance.item
            if instance is None and self.plan.stages[spec_id].foreach is not None:
                # The stage itself only fans out: each instance has its scope, with its own item.
                return ()
            self._scopes[stage] = self._render(stage, "writes", self.plan.writes_for(spec_id))
        return self._scopes[stage]

    def _render(self, stage: str, field_name: str, patterns: tuple[str, ...]) -> tuple[str, ...]:
        """Patterns may name params, and a foreach instance its item: ``src/{{ item.id }}/**``."""
        if not any("{" in p for p in patterns):
            return patterns
        spec_id = self._spec_id(stage)
        values = {"item": self._items.get(stage), "params": self.params, "task": self.task, "stage": {"id": stage}}
        return tuple(self.renderer.render_text(spec_id, field_name, p, values) for p in patterns)

    def _declared(self, stage: str) -> bool:
        return self.plan.stages[self._spec_id(stage)].writes is not None

    def checks(self, stage: str) -> bool:
        """Whether ``before`` and ``after`` have anything to check for ``stage``: a declared write scope or
        declared outputs (asked once its scope is known)."""
        spec = self.plan.stages[self._spec_id(stage)]
        return spec.writes is not None or bool(spec.outputs)

    async def before(self, stage: str) -> object:
        if not self._declared(stage):
            return None
        return await asyncio.to_thread(take_snapshot, self.root, self.ignore)

    async def after(
        self, stage: str, token: object, output: str, data: dict[str, Any] | None, others: Set[str]
    ) -> tuple[dict[str, Any] | None, str | None]:
        spec_id = self._spec_id(stage)
        spec = self.plan.stages[spec_id]
        problems: list[str] = []
        if isinstance(token, Snapshot):
            after = await asyncio.to_thread(take_snapshot, self.root, self.ignore)
            changed = changed_files(token, after)
            scope = self._scopes.get(stage, ())
            theirs = [p for p in changed if any(in_scope(p, self._scopes.get(o, ())) for o in others)]
            outside = outside_scope([p for p in changed if p not in theirs], scope)
            if outside:
                problems.append(f"it changed files outside its write scope ({', '.join(scope)}): {_names(outside)}")
        acts = spec.kind == "command" or self.acting
        if spec.outputs and acts and self.plan.writes_for(spec_id):
            outputs = list(self._render(stage, "outputs", spec.outputs))
            missing = await asyncio.to_thread(output_problems, self.root, outputs)
            if missing:
                problems.append("declared outputs are not right: " + "; ".join(missing))
        return data, ("; ".join(problems) if problems else None)
