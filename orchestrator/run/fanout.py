"""Dynamic fan-out: a ``foreach`` stage becomes one instance per item, ``<id>[0]``, ``<id>[1]``, ….

Owns the bookkeeping the engine needs and nothing else: naming instances
(by position, or by a field of each item with ``foreach_key``), knowing which
instances of a stage are still out, and folding their outcomes into the outcome
of the stage itself, which is what its dependents wait for and read. It never
schedules, runs or evaluates anything.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

from ..events import Event, StageFailed, StageSucceeded
from ..fingerprint import digest
from ..runners import Usage
from .outcomes import Instance, StageOutcome

__all__ = ["MAX_INSTANCES", "FanOut", "name_instances"]

MAX_INSTANCES = 1000
_KEY_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def name_instances(stage: str, items: Any, key: str | None) -> list[Instance]:
    """The instances of ``stage`` for ``items``; raises ``ValueError`` (a sentence) for anything that is
    not a list of at most ``MAX_INSTANCES`` items, or whose keys are missing, unusable or repeated."""
    if isinstance(items, (str | bytes, Mapping)) or not isinstance(items, Sequence):
        shown = json.dumps(items, default=str)
        shown = shown if len(shown) <= 80 else shown[:77] + "..."
        raise ValueError(f"foreach needs a list, but got {type(items).__name__} {shown}")
    if len(items) > MAX_INSTANCES:
        raise ValueError(f"foreach got {len(items)} items; at most {MAX_INSTANCES} instances are allowed")
    out: list[Instance] = []
    seen: dict[str, int] = {}
    for index, item in enumerate(items):
        name = str(index)
        if key is not None:
            if not isinstance(item, Mapping) or key not in item:
                raise ValueError(f"foreach_key {key!r}: item {index} has no field {key!r}")
            name = str(item[key])
            if not _KEY_RE.fullmatch(name):
                raise ValueError(
                    f"foreach_key {key!r}: item {index} has {key} = {name!r}, which can't name a stage "
                    "(use letters, digits, '.', '-' and '_', at most 64)"
                )
            if name in seen:
                raise ValueError(f"foreach_key {key!r}: items {seen[name]} and {index} both have {key} = {name!r}")
            seen[name] = index
        out.append(Instance(stage, index, name, item))
    return out


def instance_id(instance: Instance) -> str:
    return f"{instance.parent}[{instance.key}]"


class FanOut:
    """Which instances each expanded stage has, and which are still out."""

    def __init__(self) -> None:
        self.members: dict[str, list[str]] = {}
        self.parent_of: dict[str, str] = {}
        self._open: dict[str, set[str]] = {}

    def add(self, stage: str, instances: Sequence[Instance]) -> list[str]:
        ids = [instance_id(instance) for instance in instances]
        self.members[stage] = ids
        self._open[stage] = set(ids)
        for iid in ids:
            self.parent_of[iid] = stage
        return ids

    def settle(self, iid: str) -> str | None:
        """Mark an instance finished; the stage it belongs to once all of its instances are."""
        stage = self.parent_of[iid]
        still = self._open[stage]
        still.discard(iid)
        return stage if not still else None

    def restore(self, stage: str, still_out: Sequence[str]) -> None:
        """Which of ``stage``'s instances are still out (a run restored from its records)."""
        self._open[stage] = set(still_out)

    def out(self, stage: str) -> frozenset[str]:
        """The instances of ``stage`` still out."""
        return frozenset(self._open.get(stage, ()))

    def reopen(self, stage: str) -> None:
        """Forget an expansion (the stage runs again, e.g. an audit sent it back)."""
        for iid in self.members.pop(stage, []):
            self.parent_of.pop(iid, None)
        self._open.pop(stage, None)

    def combine(self, stage: str, outcomes: Mapping[str, StageOutcome]) -> StageOutcome:
        """The stage's own outcome: succeeded when every instance did; its output lists theirs in order
        and its data holds their structured outputs (``{"instances": [...]}``)."""
        ids = self.members[stage]
        parts: list[str] = []
        usage, cost, duration = Usage(), 0.0, 0.0
        unknown_cost = False
        failed: list[str] = []
        data: list[Any] = []
        for iid in ids:
            outcome = outcomes[iid]
            usage = usage + outcome.usage
            if outcome.cost_usd is None:
                unknown_cost = True
            else:
                cost += outcome.cost_usd
            duration = max(duration, outcome.duration)
            if outcome.status != "succeeded":
                failed.append(f"{iid} {outcome.status}" + (f" ({outcome.error})" if outcome.error else ""))
                continue
            data.append(outcome.data)
            parts.append(f"## {iid}\n\n{outcome.output.strip() or '(empty)'}")
        output = "\n\n".join(parts) + "\n" if parts else f"(no items: {stage} had nothing to do)\n"
        result = StageOutcome(
            "failed" if failed else "succeeded",
            output=output,
            data={"instances": data} if not failed else None,
            error=("instances failed: " + "; ".join(failed)) if failed else None,
            usage=usage,
            cost_usd=None if unknown_cost else round(cost, 6),
            duration=duration,
        )
        return result

    def combined(self, stage: str, outcomes: Mapping[str, StageOutcome], at: float) -> tuple[StageOutcome, Event]:
        """``combine``, with the stage's fingerprint over its instances' and the event that records it."""
        outcome = self.combine(stage, outcomes)
        members = self.members[stage]
        outcome.fingerprint = digest("\n".join(outcomes[i].fingerprint for i in members), 64)
        duration = round(outcome.duration, 3)
        if outcome.status != "succeeded":
            return outcome, StageFailed(at, stage, duration, outcome.error or "failed")
        inputs = {i: outcomes[i].fingerprint[:16] for i in members}
        event = StageSucceeded(
            at,
            stage,
            duration,
            outcome.usage,
            outcome.cost_usd,
            outcome.output,
            outcome.data,
            outcome.fingerprint,
            inputs,
            digest(outcome.output, 64),
        )
        return outcome, event
