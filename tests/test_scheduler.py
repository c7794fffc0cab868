"""The rules of a run on tiny drawn graphs: the pure ``Scheduler``, no event loop, clock or files."""

from __future__ import annotations

import json
from typing import Any

from orchestrator.events import (
    ApprovalDecided,
    ApprovalRequested,
    AuditRound,
    Event,
    StageExpanded,
    StageFailed,
    StageReopened,
    StageSkipped,
    StageSucceeded,
)
from orchestrator.graph import Plan, build_plan
from orchestrator.loader import parse_workflow
from orchestrator.run.outcomes import Decision, Instance, Progress, StageOutcome
from orchestrator.run.resumed import Resumed
from orchestrator.run.scheduler import Scheduler


def plan_of(edges: str, **extra: dict[str, Any]) -> Plan:
    """``"a; b<-a; c<-a; audit<-b,c"``: each stage and its needs; ``extra`` adds keys to a stage."""
    stages = []
    for part in edges.split(";"):
        stage, _, needs = (p.strip() for p in part.partition("<-"))
        spec: dict[str, Any] = {"id": stage, "agent": "auditor" if stage == "audit" else "build"}
        spec["needs"] = [n.strip() for n in needs.split(",") if n.strip()]
        spec.update(extra.get(stage, {}))
        if spec.get("type") == "approval":
            del spec["agent"]
        stages.append(spec)
    return build_plan(parse_workflow(json.dumps({"name": "t", "stages": stages}), source="t.yaml"))


def ok(output: str = "done") -> StageOutcome:
    return StageOutcome("succeeded", output=output)


def verdict(result: str, *stages: str) -> StageOutcome:
    findings = [{"stage": s, "severity": "major", "title": "t", "evidence": "e", "fix": "f"} for s in stages]
    data = {"verdict": result, "summary": "s", "findings": findings, "checklist": []}
    return StageOutcome("succeeded", output="v", data=data)


def drain_all(s: Scheduler) -> list[str]:
    """Start everything that can start, one at a time; the order they came in."""
    order = []
    while (sid := s.next(0.0)) is not None:
        order.append(sid)
    return order


def kinds(events: list[Event]) -> list[tuple[str, str]]:
    return [(type(e).__name__, getattr(e, "stage", "")) for e in events]


def test_ready_stages_come_in_plan_order_and_each_release_is_immediate() -> None:
    s = Scheduler(plan_of("a; b<-a; c<-a; d<-b; audit<-c,d"))
    assert drain_all(s) == ["a"]
    s.settle("a", ok(), 1.0)
    assert drain_all(s) == ["b", "c"]
    s.settle("c", ok(), 2.0)
    assert s.next(2.0) is None  # d waits for b only
    s.settle("b", ok(), 3.0)
    assert drain_all(s) == ["d"]
    assert s.status() == "running"


def test_a_failure_skips_everything_downstream_with_the_reason_and_the_run_fails() -> None:
    s = Scheduler(plan_of("a; b<-a; c<-b; x; audit<-c,x"))
    assert drain_all(s) == ["a", "x"]
    s.settle("a", StageOutcome("failed", error="boom"), 1.0)
    s.settle("x", ok(), 1.0)
    skipped = [(e.stage, e.reason) for e in s.drain() if isinstance(e, StageSkipped)]
    assert skipped == [
        ("b", "needs a, which failed"),
        ("c", "needs b, which was skipped"),
        ("audit", "needs c, which was skipped"),
    ]
    assert s.next(1.0) is None
    assert s.status() == "failed"


def test_continue_on_failure_releases_dependents() -> None:
    s = Scheduler(plan_of("a; b<-a; audit<-b", a={"continue_on_failure": True}))
    s.next(0.0)
    s.settle("a", StageOutcome("failed", error="flaky"), 1.0)
    assert drain_all(s) == ["b"]


def test_a_false_if_skips_the_stage_but_releases_its_dependents() -> None:
    plan = plan_of("a; b<-a; c<-b; audit<-c", b={"if": "false"})
    s = Scheduler(plan, condition=lambda sid, progress: "its if is false")
    s.next(0.0)
    s.settle("a", ok(), 1.0)
    assert s.next(1.0) == "c"  # b was decided on the way
    assert kinds(s.drain()) == [("StageSkipped", "b")]
    assert s.outcomes["b"].conditional


def test_foreach_expands_into_instances_and_succeeds_once_all_have() -> None:
    plan = plan_of("a; b<-a; audit<-b", b={"foreach": "{{ [1, 2] }}"})
    s = Scheduler(plan, expand=lambda sid, progress: [{"n": 1}, {"n": 2}])
    s.next(0.0)
    s.settle("a", ok(), 1.0)
    assert drain_all(s) == ["b[0]", "b[1]"]
    assert isinstance(s.drain()[0], StageExpanded)
    s.settle("b[1]", ok("two"), 2.0)
    assert s.outcomes["b"].status == "running"
    s.settle("b[0]", ok("one"), 3.0)
    combined = s.drain()
    assert isinstance(combined[0], StageSucceeded) and combined[0].stage == "b"
    assert s.outcomes["b"].output.index("one") < s.outcomes["b"].output.index("two")  # in item order
    assert drain_all(s) == ["audit"]


def test_an_empty_foreach_succeeds_at_once() -> None:
    plan = plan_of("a; b<-a; audit<-b", b={"foreach": "{{ [] }}"})
    s = Scheduler(plan, expand=lambda sid, progress: [])
    s.next(0.0)
    s.settle("a", ok(), 1.0)
    assert drain_all(s) == ["audit"]
    assert s.outcomes["b"].status == "succeeded"


def test_a_gate_waits_then_a_decision_releases_or_fails_it() -> None:
    for approved, expected in ((True, ["c"]), (False, [])):
        s = Scheduler(plan_of("a; gate<-a; c<-gate; audit<-c", gate={"type": "approval"}))
        s.next(0.0)
        s.settle("a", ok(), 1.0)
        assert s.next(1.0) == "gate"
        outcome = s.gate("gate", StageOutcome("succeeded"), "fp", "", None, 2.0)
        s.settle("gate", outcome, 2.0)
        assert s.status() == "waiting_approval"
        assert kinds(s.drain()) == [("ApprovalRequested", "gate")]
        s.decide("gate", Decision(approved, "why"), 3.0)
        events = s.drain()
        assert isinstance(events[0], ApprovalDecided) and events[0].fingerprint == "fp"
        assert drain_all(s) == expected
        if not approved:
            assert s.outcomes["gate"].error == "rejected: why"
            assert s.status() == "failed"


def test_approve_all_decides_a_gate_at_once() -> None:
    s = Scheduler(plan_of("a; audit<-a", a={"approval": True}), approve_all=True)
    s.next(0.0)
    outcome = s.gate("a", ok(), "fp", "sha", None, 1.0)
    assert outcome.status == "succeeded"
    assert [type(e) for e in s.drain()] == [ApprovalDecided]


def test_a_failed_audit_sends_the_named_stages_and_their_dependents_back_once_per_round() -> None:
    s = Scheduler(plan_of("a; b<-a; c; audit<-b,c"), max_rounds=2)
    for sid in drain_all(s):
        s.settle(sid, ok(), 1.0)
    s.settle("b", ok(), 1.0)
    assert s.next(1.0) == "audit"
    s.settle("audit", verdict("fail", "a"), 2.0)
    events = s.drain()
    assert isinstance(events[0], AuditRound) and events[0].rework == ("a",)
    assert [e.stage for e in events if isinstance(e, StageReopened)] == ["a", "b", "audit"]
    assert s.progress.round == 2 and [f.stage for f in s.progress.feedback["a"]] == ["a"]
    assert drain_all(s) == ["a"]  # c is not sent back
    s.settle("a", ok(), 3.0)
    s.settle(s.next(3.0) or "", ok(), 3.0)
    assert s.next(3.0) == "audit"
    s.settle("audit", verdict("fail", "a"), 4.0)  # the last round: no more rework
    assert isinstance(s.drain()[0], AuditRound)
    assert s.status() == "failed"


def test_a_passing_audit_is_what_makes_the_run_succeed() -> None:
    s = Scheduler(plan_of("a; audit<-a"))
    s.settle(s.next(0.0) or "", ok(), 1.0)
    s.settle(s.next(1.0) or "", verdict("pass"), 2.0)
    assert s.status() == "succeeded"


def test_overlapping_write_scopes_never_run_together() -> None:
    scopes = {"a": ("src",), "b": ("src/app",), "c": ("docs",)}
    s = Scheduler(plan_of("a; b; c; audit<-a,b,c"), scope=lambda sid, instance: scopes.get(sid, ()))
    assert drain_all(s) == ["a", "c"]  # b waits for a
    assert s.overlapped == {"a": {"c"}, "c": {"a"}}
    s.settle("a", ok(), 1.0)
    assert drain_all(s) == ["b"]


def test_a_halted_run_starts_nothing_and_says_why() -> None:
    s = Scheduler(plan_of("a; b; audit<-a,b"))
    assert s.next(0.0) == "a"
    s.halt("budget", "the run's budget would be exceeded")
    assert s.next(0.0) is None
    assert s.status() == "budget_exceeded" and s.note.startswith("the run's budget")


def test_restored_from_a_recorded_run_it_goes_on_where_the_run_stood() -> None:
    plan = plan_of("a; b<-a; c<-b; audit<-c", b={"foreach": "x"})
    outcomes = {
        "a": ok(),
        "b": StageOutcome("running"),
        "b[0]": ok("zero"),
        "b[1]": StageOutcome("pending"),
        "c": StageOutcome("pending"),
        "audit": StageOutcome("pending"),
    }
    instances = {f"b[{i}]": Instance("b", i, str(i), i) for i in range(2)}
    progress = Progress(outcomes, {}, {}, 1, instances)
    s = Resumed(plan, progress, {"b": ["b[0]", "b[1]"]}, 0.0)
    assert s.take_all(0.0) == ["b[1]"]
    s.started("b[1]")
    s.settle("b[1]", StageOutcome("failed", error="no"), 1.0)
    events = s.drain()
    assert isinstance(events[0], StageFailed) and events[0].stage == "b"
    assert [e.stage for e in events if isinstance(e, StageSkipped)] == ["c", "audit"]
    # Done again by hand: the failed foreach runs its instances again, and what it skipped reopens.
    s.started("b[1]")
    s.restart("b[1]", 2.0)
    reopened = s.drain()
    assert {e.stage for e in reopened if isinstance(e, StageReopened)} == {"c", "audit"}
    assert s.outcomes["b"].status == "running"
    s.settle("b[1]", ok("one"), 3.0)
    assert s.take_all(3.0) == ["c"]


def test_a_restored_run_skips_a_stage_whose_need_can_no_longer_release_it() -> None:
    plan = plan_of("a; b<-a; audit<-b")
    outcomes = {"a": StageOutcome("failed"), "b": StageOutcome("pending"), "audit": StageOutcome("pending")}
    s = Resumed(plan, Progress(outcomes, {}, {}, 1), {}, 5.0)
    assert [(e.stage, e.time) for e in s.drain() if isinstance(e, StageSkipped)] == [("b", 5.0), ("audit", 5.0)]
    assert s.status() == "failed"


def test_a_pure_approval_stage_is_requested_with_no_output_file() -> None:
    s = Scheduler(plan_of("a; g<-a; audit<-g", g={"type": "approval", "approval": "Ship it?"}))
    s.settle(s.next(0.0) or "", ok(), 1.0)
    s.next(1.0)
    s.gate("g", StageOutcome("succeeded"), "fp", "", None, 2.0)
    request = s.drain()[0]
    assert isinstance(request, ApprovalRequested) and request.message == "Ship it?" and request.output_file is None
