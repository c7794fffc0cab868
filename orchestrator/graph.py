"""Workflow -> DAG -> Plan: the checked, ordered shape of a run.

Owns every rule that spans stages: unique ids, known needs, no cycles, one
final audit stage (added when missing), and the derived views: parallel waves,
a deterministic order, and the critical path. The only
module that imports networkx, and only to explain a cycle: ordering a plan
needs no import (``validate`` starts faster); everything it hands out is plain
data.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import dataclass, field

from .drawing import Drawing, render
from .errors import WorkflowError, WorkflowErrors
from .runners.registry import kind_of
from .workflow import AUDITOR_AGENT, Permissions, StageSpec, Workflow

__all__ = ["Plan", "build_plan", "render_graph"]


@dataclass(frozen=True)
class Plan:
    """A validated workflow as a DAG, with everything a compile or a run needs to know."""

    workflow: Workflow
    stages: Mapping[str, StageSpec]
    order: tuple[str, ...]
    waves: tuple[tuple[str, ...], ...]
    critical_path: tuple[str, ...]
    audit_stage: str
    dependents: Mapping[str, tuple[str, ...]]
    added_audit: bool = False
    notices: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()
    waves_by_stage: Mapping[str, int] = field(default_factory=dict)
    stages_by_agent: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    @property
    def agents(self) -> tuple[str, ...]:
        """Agents that run at least one stage, sorted."""
        return tuple(sorted(self.stages_by_agent))

    def stages_of(self, agent: str) -> tuple[StageSpec, ...]:
        """The stages ``agent`` runs, in plan order."""
        return tuple(self.stages[sid] for sid in self.stages_by_agent.get(agent, ()))

    def model_for(self, stage_id: str) -> str:
        """Model routing: the stage's own model, else its agent's, else the workflow default."""
        stage = self.stages[stage_id]
        if stage.kind != "agent" or stage.agent is None:  # a command or an approval gate: no model runs it
            return ""
        return stage.model or self.workflow.agent_spec(stage.agent).model or self.workflow.defaults.model

    def runner_for(self, stage_id: str) -> str:
        """What runs a stage: "shell" for a run: command, "" for an approval gate, else the stage's runner,
        its agent's, or "anthropic"."""
        stage = self.stages[stage_id]
        if stage.kind == "command":
            return "shell"
        if stage.kind == "approval" or stage.agent is None:
            return ""
        return stage.runner or self.workflow.agent_spec(stage.agent).runner or "anthropic"

    def tools_for(self, stage_id: str) -> tuple[str, ...]:
        agent = self.stages[stage_id].agent
        return self.workflow.agent_spec(agent).tools if agent else ()

    def permissions_for(self, stage_id: str) -> Permissions:
        """The stage's own permissions, else its agent's, else the workflow's."""
        stage = self.stages[stage_id]
        agent = self.workflow.agent_spec(stage.agent).permissions if stage.agent else None
        return stage.permissions or agent or self.workflow.permissions

    def network_for(self, stage_id: str) -> bool:
        """Whether the stage's commands may reach the network: the stage's own setting, else its agent's."""
        stage = self.stages[stage_id]
        if stage.network is not None:
            return stage.network
        return bool(stage.agent and self.workflow.agent_spec(stage.agent).network)

    def max_turns_for(self, stage_id: str) -> int:
        agent = self.stages[stage_id].agent
        own = self.workflow.agent_spec(agent).max_turns if agent else None
        return own or self.workflow.defaults.max_turns

    def writes_for(self, stage_id: str) -> tuple[str, ...]:
        """The stage's write scope: as declared; else everything for a stage that can change files (a
        command, an agent CLI, an agent with edit or bash), nothing for one that only reads or writes text."""
        stage = self.stages[stage_id]
        if stage.writes is not None:
            return stage.writes
        runner = self.runner_for(stage_id)
        if (runner and kind_of(runner).acts) or {"edit", "bash"} & set(self.tools_for(stage_id)):
            return ("**",)
        return ()

    def model_for_agent(self, agent: str) -> str:
        return self.workflow.agent_spec(agent).model or self.workflow.defaults.model

    def effort_for_agent(self, agent: str) -> str | None:
        """The agent's effort, else the workflow's; None leaves it to the model."""
        return self.workflow.agent_spec(agent).effort or self.workflow.defaults.effort

    def thinking_for_agent(self, agent: str) -> str | None:
        return self.workflow.agent_spec(agent).thinking or self.workflow.defaults.thinking

    def ancestors(self, stage_id: str) -> set[str]:
        """Every stage ``stage_id`` waits for, directly or through others."""
        seen: set[str] = set()
        todo = list(self.stages[stage_id].needs)
        while todo:
            current = todo.pop()
            if current not in seen:
                seen.add(current)
                todo.extend(self.stages[current].needs)
        return seen

    def descendants(self, stage_ids: set[str]) -> set[str]:
        """Every stage that waits, directly or through others, for one of ``stage_ids``."""
        seen: set[str] = set()
        todo = [d for sid in stage_ids for d in self.dependents[sid]]
        while todo:
            current = todo.pop()
            if current not in seen:
                seen.add(current)
                todo.extend(self.dependents[current])
        return seen

    def drawing(self) -> Drawing:
        """The plan as plain data for ``drawing.render``."""
        return Drawing(
            name=self.workflow.name,
            order=self.order,
            needs={sid: self.stages[sid].needs for sid in self.order},
            agents={
                sid: self.stages[sid].agent or ("command" if self.stages[sid].run else "approval") for sid in self.order
            },
            models={sid: self.model_for(sid) for sid in self.order},
            audit_stage=self.audit_stage,
            waves=self.waves,
        )

    def wave_of(self, stage_id: str) -> int:
        """The 0-based index of the wave ``stage_id`` belongs to."""
        return self.waves_by_stage[stage_id]


def build_plan(workflow: Workflow) -> Plan:
    """Check the stages as a graph and derive the plan; raise every problem found at once."""
    errors: list[WorkflowError] = []
    if not workflow.stages:
        raise WorkflowError(
            "workflow has no stages",
            location=workflow.locate("stages", key=True),
            hint="add at least one stage with an id and an agent",
        )

    first_index: dict[str, int] = {}
    for index, stage in enumerate(workflow.stages):
        if stage.id in first_index:
            first = workflow.locate("stages", first_index[stage.id], "id")
            errors.append(
                WorkflowError(
                    f"duplicate stage id {stage.id!r} (first used on line {first.line})",
                    location=workflow.locate("stages", index, "id"),
                    hint="give each stage its own id (stages without an id take their agent's name)",
                )
            )
        else:
            first_index[stage.id] = index

    graph = _Graph(first_index)
    for index, stage in enumerate(workflow.stages):
        if first_index.get(stage.id) != index:
            continue
        for n, need in enumerate(stage.needs):
            if need not in first_index:
                close = difflib.get_close_matches(need, list(first_index), n=1, cutoff=0.6)
                errors.append(
                    WorkflowError(
                        f"stage {stage.id!r} needs unknown stage {need!r}",
                        location=workflow.locate("stages", index, "needs", n),
                        hint=f"did you mean {close[0]!r}?" if close else "known stages: " + ", ".join(first_index),
                    )
                )
            else:
                graph.add_edge(need, stage.id)
    WorkflowErrors.raise_if_any(errors)

    waves = graph.generations()
    cycle = _find_cycle(graph) if waves is None else None
    if cycle:
        path = [edge[0] for edge in cycle] + [cycle[0][0]]
        closing = cycle[-1]
        index = first_index[closing[1]]
        need_index = workflow.stages[index].needs.index(closing[0])
        raise WorkflowError(
            "cycle in needs: " + " → ".join(path),
            location=workflow.locate("stages", index, "needs", need_index),
            hint="a stage can't wait, directly or indirectly, for itself; remove one of these needs",
        )

    stages = {stage.id: stage for stage in workflow.stages}
    audit_id, added, notices = _audit_stage(workflow, graph, stages, first_index)
    waves = graph.generations() if added else waves
    assert waves is not None  # no cycle, and the added audit only follows sinks
    order = tuple(stage_id for wave in waves for stage_id in wave)
    dependents = {node: tuple(sorted(graph.succ[node])) for node in order}
    return Plan(
        workflow=workflow,
        stages={stage_id: stages[stage_id] for stage_id in order},
        order=order,
        waves=waves,
        critical_path=_critical_path(graph, order),
        audit_stage=audit_id,
        dependents=dependents,
        added_audit=added,
        notices=tuple(notices),
        warnings=tuple(_warnings(workflow, stages)),
        waves_by_stage={sid: index for index, wave in enumerate(waves) for sid in wave},
        stages_by_agent=_by_agent(order, stages),
    )


def _by_agent(order: tuple[str, ...], stages: Mapping[str, StageSpec]) -> dict[str, tuple[str, ...]]:
    grouped: dict[str, list[str]] = {}
    for sid in order:
        agent = stages[sid].agent
        if agent is not None:
            grouped.setdefault(agent, []).append(sid)
    return {agent: tuple(ids) for agent, ids in grouped.items()}


def _audit_stage(
    workflow: Workflow, graph: _Graph, stages: dict[str, StageSpec], first_index: dict[str, int]
) -> tuple[str, bool, list[str]]:
    """Apply the audit rule: exactly one audit stage, last, reached from every other stage."""
    audits = [s.id for s in workflow.stages if s.agent == AUDITOR_AGENT]
    if len(audits) > 1:
        raise WorkflowError(
            f"a workflow has exactly one audit stage (agent {AUDITOR_AGENT!r}); found {len(audits)}: "
            + ", ".join(audits),
            location=workflow.locate("stages", first_index[audits[1]], "agent"),
            hint="keep one audit stage at the end and let it need the others",
        )
    sinks = sorted(node for node in graph.succ if not graph.succ[node])
    if not audits:
        audit_id = "audit"
        suffix = 2
        while audit_id in stages:
            audit_id = f"audit-{suffix}"
            suffix += 1
        stages[audit_id] = StageSpec(
            id=audit_id,
            agent=AUDITOR_AGENT,
            needs=tuple(sinks),
            description="Checks every stage's work against the workflow's intent and gates the result.",
        )
        graph.add_node(audit_id)
        for sink in sinks:
            graph.add_edge(sink, audit_id)
        notice = f"no audit stage declared: added {audit_id!r} (agent {AUDITOR_AGENT}) after " + ", ".join(sinks)
        return audit_id, True, [notice]

    audit_id = audits[0]
    index = first_index[audit_id]
    if stages[audit_id].continue_on_failure:
        raise WorkflowError(
            f"the audit stage {audit_id!r} can't continue_on_failure: a run succeeds only through a passing audit",
            location=workflow.locate("stages", index, "continue_on_failure"),
            hint="remove continue_on_failure from the audit stage",
        )
    audit = stages[audit_id]
    for field_name, what in (("foreach", "fan out"), ("condition", "be conditional"), ("run", "run a command")):
        if getattr(audit, field_name):
            raise WorkflowError(
                f"the audit stage {audit_id!r} can't {what}: it runs once, last, and gates the result",
                location=workflow.locate("stages", index, "if" if field_name == "condition" else field_name),
                hint=f"move the {'if' if field_name == 'condition' else field_name} to another stage",
            )
    after = sorted(graph.succ[audit_id])
    if after:
        raise WorkflowError(
            f"the audit stage {audit_id!r} must be the last stage, but {', '.join(after)} "
            + ("needs" if len(after) == 1 else "need")
            + " it",
            location=workflow.locate("stages", index, "id"),
            hint="the audit gates the result, so nothing may run after it",
        )
    loose = [sink for sink in sinks if sink != audit_id]
    if loose:
        raise WorkflowError(
            f"{', '.join(repr(s) for s in loose)} "
            + ("does" if len(loose) == 1 else "do")
            + f" not lead to the audit stage {audit_id!r}, so the audit would not check "
            + ("its" if len(loose) == 1 else "their")
            + " work",
            location=workflow.locate("stages", index, "needs"),
            hint=f"add {', '.join(loose)} to the needs of {audit_id!r}",
        )
    return audit_id, False, []


class _Graph:
    """The needs as adjacency sets: what ordering a plan takes, with no import cost (networkx, this module's
    graph library, is loaded only to explain a cycle)."""

    def __init__(self, nodes: Mapping[str, int]) -> None:
        self.pred: dict[str, dict[str, None]] = {node: {} for node in nodes}  # dicts: insertion-ordered sets
        self.succ: dict[str, dict[str, None]] = {node: {} for node in nodes}

    def add_node(self, node: str) -> None:
        self.pred.setdefault(node, {})
        self.succ.setdefault(node, {})

    def add_edge(self, before: str, after: str) -> None:
        self.succ[before][after] = None
        self.pred[after][before] = None

    def generations(self) -> tuple[tuple[str, ...], ...] | None:
        """Topological generations, each sorted (Kahn's algorithm); None when the needs have a cycle."""
        waiting = {node: len(preds) for node, preds in self.pred.items()}
        wave = sorted(node for node, count in waiting.items() if count == 0)
        out: list[tuple[str, ...]] = []
        seen = 0
        while wave:
            out.append(tuple(wave))
            seen += len(wave)
            following: list[str] = []
            for node in wave:
                for after in self.succ[node]:
                    waiting[after] -= 1
                    if waiting[after] == 0:
                        following.append(after)
            wave = sorted(following)
        return tuple(out) if seen == len(self.pred) else None


def _find_cycle(graph: _Graph) -> list[tuple[str, str]]:
    """One cycle of the needs, as edges, found by networkx (loaded here only: a cycle is a user's mistake)."""
    import networkx as nx

    digraph: nx.DiGraph[str] = nx.DiGraph()
    digraph.add_nodes_from(graph.succ)
    digraph.add_edges_from((a, b) for a, bs in graph.succ.items() for b in bs)
    return list(nx.find_cycle(digraph))


def _critical_path(graph: _Graph, order: tuple[str, ...]) -> tuple[str, ...]:
    """The longest chain of stages (by count); ties go to the alphabetically first stage."""
    length: dict[str, int] = {}
    best_pred: dict[str, str | None] = {}
    for node in order:
        preds = sorted(graph.pred[node], key=lambda p: (-length[p], p))
        best_pred[node] = preds[0] if preds else None
        length[node] = 1 + (length[preds[0]] if preds else 0)
    end = min(order, key=lambda n: (-length[n], n))
    path = [end]
    while (pred := best_pred[path[-1]]) is not None:
        path.append(pred)
    return tuple(reversed(path))


def _warnings(workflow: Workflow, stages: Mapping[str, StageSpec]) -> list[str]:
    used = {s.agent for s in stages.values()}
    out = [f"agent {name!r} is declared but no stage uses it" for name in workflow.agents if name not in used]
    return out


def render_graph(plan: Plan, fmt: str, status: Mapping[str, str] | None = None) -> str:
    """Draw the plan (see ``drawing.render``)."""
    return render(plan.drawing(), fmt, status)
