"""Write-scope admission: stages whose write scopes overlap never run at the same time.

A stage's write scope (the paths it may change) is asked once and kept. A ready
stage is held back while a running stage's scope overlaps its own; the stages
that did run together are remembered, so a change in the workspace can be
blamed on (or cleared of) the writers that were running. Pure bookkeeping: the
scheduler asks it, nothing else does.
"""

from __future__ import annotations

from collections.abc import Callable

from ..scopes import scopes_overlap
from .outcomes import Instance

__all__ = ["Admission", "ScopeOf"]

ScopeOf = Callable[[str, "Instance | None"], tuple[str, ...]]


class Admission:
    def __init__(self, scope_of: ScopeOf, instance_of: Callable[[str], Instance | None]) -> None:
        self.scope_of = scope_of
        self.instance_of = instance_of
        self.writing: set[str] = set()  # running stages with a write scope
        self.overlapped: dict[str, set[str]] = {}  # writers that ran alongside each writer
        self._scopes: dict[str, tuple[str, ...]] = {}
        self._conflicts: dict[tuple[str, str], bool] = {}

    def scope(self, sid: str) -> tuple[str, ...]:
        if sid not in self._scopes:
            self._scopes[sid] = self.scope_of(sid, self.instance_of(sid))
        return self._scopes[sid]

    def held(self, sid: str) -> bool:
        """Whether ``sid`` must wait: its scope overlaps a running writer's."""
        return bool(self.writing) and bool(self.scope(sid)) and any(self._conflict(sid, o) for o in self.writing)

    def enter(self, sid: str) -> None:
        if self.scope(sid):  # only writers can be blamed for, or cleared of, a change
            for other in self.writing:
                self.overlapped[other].add(sid)
            self.overlapped[sid] = set(self.writing)
            self.writing.add(sid)

    def leave(self, sid: str) -> None:
        self.writing.discard(sid)

    def forget(self, sid: str) -> None:
        """A new instance under an old name: ask its scope again."""
        self._scopes.pop(sid, None)

    def _conflict(self, a: str, b: str) -> bool:
        key = (a, b) if a < b else (b, a)
        if key not in self._conflicts:
            self._conflicts[key] = scopes_overlap(self.scope(a), self.scope(b))
        return self._conflicts[key]
