"""Planning as a pure function, tested on tiny drawn graphs with exact expected results."""

from __future__ import annotations

import json

import pytest

from orchestrator.errors import WorkflowError
from orchestrator.graph import Plan, build_plan, render_graph
from orchestrator.loader import parse_workflow


def plan_of(edges: str, *, audit: bool = True) -> Plan:
    """Build a plan from a drawing like ``"a; b<-a; c<-a; d<-b,c"`` (stage <- its needs)."""
    stages = []
    for part in edges.split(";"):
        part = part.strip()
        stage, _, needs = part.partition("<-")
        agent = "auditor" if stage.strip() == "audit" else "build"
        need_list = [n.strip() for n in needs.split(",") if n.strip()]
        stages.append({"id": stage.strip(), "agent": agent, "needs": need_list})
    text = json.dumps({"name": "t", "stages": stages})
    return build_plan(parse_workflow(text, source="t.yaml"))


def error_of(edges: str) -> WorkflowError:
    with pytest.raises(WorkflowError) as info:
        plan_of(edges)
    return info.value


def test_diamond_waves_order_and_critical_path() -> None:
    plan = plan_of("a; c<-a; b<-a; d<-b,c; audit<-d")
    assert plan.waves == (("a",), ("b", "c"), ("d",), ("audit",))
    assert plan.order == ("a", "b", "c", "d", "audit")
    assert plan.critical_path == ("a", "b", "d", "audit")
    assert plan.dependents["a"] == ("b", "c")
    assert plan.audit_stage == "audit"
    assert not plan.added_audit


def test_critical_path_follows_the_longest_chain_not_the_first_name() -> None:
    plan = plan_of("a; z1<-a; z2<-z1; z3<-z2; b<-a; audit<-b,z3")
    assert plan.critical_path == ("a", "z1", "z2", "z3", "audit")
    assert plan.waves == (("a",), ("b", "z1"), ("z2",), ("z3",), ("audit",))


def test_independent_branches_share_waves() -> None:
    plan = plan_of("x; y; x2<-x; audit<-x2,y")
    assert plan.waves == (("x", "y"), ("x2",), ("audit",))


def test_missing_audit_is_added_after_every_sink_and_said_so() -> None:
    plan = plan_of("plan; backend<-plan; frontend<-plan; docs<-plan")
    assert plan.added_audit
    assert plan.audit_stage == "audit"
    assert plan.stages["audit"].agent == "auditor"
    assert plan.stages["audit"].needs == ("backend", "docs", "frontend")
    assert plan.order[-1] == "audit"
    assert plan.notices == ("no audit stage declared: added 'audit' (agent auditor) after backend, docs, frontend",)


def test_added_audit_takes_a_free_id() -> None:
    build_only = build_plan(
        parse_workflow('{"name": "t", "stages": [{"id": "audit", "agent": "build"}]}', source="t.yaml")
    )
    assert build_only.audit_stage == "audit-2"
    assert build_only.stages["audit-2"].needs == ("audit",)


def test_cycle_is_reported_with_its_path_and_line() -> None:
    err = error_of("a<-c; b<-a; c<-b")
    assert err.message.startswith("cycle in needs: ")
    path = err.message.removeprefix("cycle in needs: ").split(" → ")
    assert path[0] == path[-1] and sorted(path[:-1]) == ["a", "b", "c"]
    assert err.location is not None and err.location.line == 1


def test_self_need_is_a_cycle() -> None:
    assert error_of("a<-a").message == "cycle in needs: a → a"


def test_unknown_need_suggests_the_close_id() -> None:
    err = error_of("plan; build<-plann")
    assert err.message == "stage 'build' needs unknown stage 'plann'"
    assert err.hint == "did you mean 'plan'?"


def test_duplicate_ids_are_errors() -> None:
    assert "duplicate stage id 'a'" in error_of("a; a").message


def test_two_audit_stages_are_an_error() -> None:
    with pytest.raises(WorkflowError, match="exactly one audit stage"):
        build_plan(
            parse_workflow(
                "name: t\nstages:\n  - {id: a1, agent: auditor}\n  - {id: a2, agent: auditor, needs: [a1]}\n",
                source="t.yaml",
            )
        )


def test_audit_must_be_last_and_reached_by_everything() -> None:
    assert "must be the last stage" in error_of("audit; b<-audit").message
    err = error_of("a; b; audit<-a")
    assert err.message == "'b' does not lead to the audit stage 'audit', so the audit would not check its work"
    assert err.hint == "add b to the needs of 'audit'"


def test_empty_workflow_is_an_error() -> None:
    with pytest.raises(WorkflowError, match="workflow has no stages"):
        build_plan(parse_workflow("name: t\nstages: []\n", source="t.yaml"))


def test_model_routing_stage_then_agent_then_default() -> None:
    plan = build_plan(
        parse_workflow(
            """
name: t
defaults: {model: m-default}
agents: {plan: {model: m-agent}}
stages:
  - {id: a, agent: plan}
  - {id: b, agent: plan, model: m-stage, needs: [a]}
  - {id: c, agent: build, needs: [b]}
""",
            source="t.yaml",
        )
    )
    assert [plan.model_for(s) for s in ("a", "b", "c", "audit")] == ["m-agent", "m-stage", "m-default", "m-default"]


def test_unused_declared_agent_is_a_warning() -> None:
    plan = build_plan(parse_workflow("name: t\nagents: {frontend: {}}\nstages: [{agent: plan}]\n", source="t.yaml"))
    assert plan.warnings == ("agent 'frontend' is declared but no stage uses it",)


def test_mermaid_uses_safe_node_ids_and_colours_by_status() -> None:
    plan = plan_of("end; b<-end; audit<-b")
    text = render_graph(plan, "mermaid", {"end": "succeeded", "b": "failed", "audit": "skipped"})
    lines = text.splitlines()
    assert lines[0] == "flowchart TD"
    assert '    s0["end<br/>build"]' in lines  # 'end' is a mermaid keyword: it only appears as a label
    assert "    s0 --> s1" in lines and "    s1 --> s2" in lines
    assert "    class s0 succeeded" in lines and "    class s1 failed" in lines
    assert '    s2{{"audit<br/>auditor"}}' in lines


def test_dot_and_json_drawings_list_every_edge() -> None:
    plan = plan_of("a; b<-a; audit<-b")
    dot = render_graph(plan, "dot")
    assert '"a" -> "b";' in dot and '"b" -> "audit";' in dot
    data = json.loads(render_graph(plan, "json"))
    assert data["edges"] == [["a", "b"], ["b", "audit"]]
    assert data["waves"] == [["a"], ["b"], ["audit"]]
