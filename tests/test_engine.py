"""The scheduler on small drawn graphs, with the in-process offline runner as the double."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest

from orchestrator.audit import verdict_schema
from orchestrator.events import Event, RunFinished, StageFailed, StageSkipped, StageStarted, StageSucceeded
from orchestrator.graph import Plan, build_plan
from orchestrator.loader import parse_workflow
from orchestrator.run.engine import EngineOptions, Progress, RunOutcome, StageInput, execute
from orchestrator.runners import AttemptRecord, AttemptReporter, StageFailure, StageRequest, StageResult, Usage
from orchestrator.runners.offline import OfflineRunner


def plan_of(edges: str) -> Plan:
    """``"a; b<-a; c<-a; audit<-b,c"``: each stage and its needs; 'audit' runs the auditor agent."""
    stages = []
    for part in edges.split(";"):
        stage, _, needs = part.strip().partition("<-")
        agent = "auditor" if stage.strip() == "audit" else "build"
        stages.append(
            {"id": stage.strip(), "agent": agent, "needs": [n.strip() for n in needs.split(",") if n.strip()]}
        )
    return build_plan(parse_workflow(json.dumps({"name": "t", "stages": stages}), source="t.yaml"))


class Recorder:
    def __init__(self) -> None:
        self.events: list[Event] = []

    def on_event(self, event: Event) -> None:
        self.events.append(event)

    def of(self, kind: type) -> list[Any]:
        return [e for e in self.events if isinstance(e, kind)]


def build(plan: Plan):  # type: ignore[no-untyped-def]
    def builder(sid: str, progress: Progress) -> StageInput:
        upstream = {n: progress.outcomes[n].output.strip() for n in plan.stages[sid].needs}
        return StageInput.of(
            StageRequest(
                stage_id=sid,
                agent=plan.stages[sid].agent,
                model=plan.model_for(sid),
                system="system",
                prompt=json.dumps(upstream),
                max_tokens=100,
                task="t",
                output_schema=verdict_schema() if sid == plan.audit_stage else None,
                verdict=sid == plan.audit_stage,
            )
        )

    return builder


class PerInputToken:
    """A price of ``usd`` per input token, nothing else: costs the tests can work out by hand."""

    def __init__(self, usd: float) -> None:
        self.usd = usd

    def cost(self, attempt: AttemptRecord, model: str) -> float:
        return attempt.usage.input_tokens * self.usd

    def worst(self, model: str, input_tokens: int, max_output: int, batch: bool) -> float:
        return input_tokens * self.usd

    def least(self, model: str, input_tokens: int) -> float:
        return input_tokens * self.usd


def run(plan: Plan, runner: Any, *, max_parallel: int = 4, timeout: float | None = None) -> tuple[RunOutcome, Recorder]:
    recorder = Recorder()
    outcome = asyncio.run(
        execute(
            plan,
            build_request=build(plan),
            runner_for=lambda sid: runner,
            listeners=[recorder],
            options=EngineOptions(max_parallel=max_parallel, stage_timeout=timeout),
            price=PerInputToken(1 / 1000),
        )
    )
    return outcome, recorder


class Counting(OfflineRunner):
    """Offline replies, counting how many stages run at the same time."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.active = 0
        self.most = 0

    async def run(self, request: StageRequest, report: AttemptReporter) -> StageResult:
        self.active += 1
        self.most = max(self.most, self.active)
        try:
            return await super().run(request, report)
        finally:
            self.active -= 1


def test_sequential_runs_one_deterministic_topological_order() -> None:
    plan = plan_of("a; c<-a; b<-a; d<-b,c; e; audit<-d,e")
    runner = OfflineRunner()
    outcome, _ = run(plan, runner, max_parallel=1)
    assert [call.stage_id for call in runner.calls] == list(plan.order) == ["a", "e", "b", "c", "d", "audit"]
    assert outcome.status == "succeeded"


def test_upstream_outputs_reach_the_request() -> None:
    plan = plan_of("a; b<-a; audit<-b")
    runner = OfflineRunner({"a": "PLAN-A"})
    run(plan, runner)
    assert json.loads(runner.calls[1].prompt) == {"a": "PLAN-A"}


def test_max_parallel_is_respected_and_independent_stages_overlap() -> None:
    plan = plan_of("a; b; c; d; e; f; audit<-a,b,c,d,e,f")
    runner = Counting(latency=0.05)
    run(plan, runner, max_parallel=2)
    assert runner.most == 2
    runner = Counting(latency=0.05)
    _, recorder = run(plan, runner, max_parallel=6)
    assert runner.most == 6
    starts = [e.time for e in recorder.of(StageStarted) if e.stage != "audit"]
    ends = [e.time for e in recorder.of(StageSucceeded) if e.stage != "audit"]
    assert max(starts) < min(ends)  # all six were running at once


def test_a_slow_stage_does_not_hold_back_an_unrelated_branch() -> None:
    plan = plan_of("slow; x1; x2<-x1; x3<-x2; audit<-slow,x3")
    _, recorder = run(plan, OfflineRunner(latency={"slow": 0.4, "x1": 0.02, "x2": 0.02, "x3": 0.02}))
    started = {e.stage: e.time for e in recorder.of(StageStarted)}
    finished = {e.stage: e.time for e in recorder.of(StageSucceeded)}
    assert finished["x3"] < finished["slow"]  # no lock-step waves: x2 and x3 did not wait for 'slow'
    assert started["x2"] < finished["slow"]


def test_failure_skips_descendants_with_reasons_and_other_branches_finish() -> None:
    plan = plan_of("a; b<-a; c<-b; d; e<-d; audit<-c,e")
    outcome, recorder = run(plan, OfflineRunner({"b": {"fail": "the build broke"}}))
    assert outcome.status == "failed"
    assert {s: o.status for s, o in outcome.stages.items()} == {
        "a": "succeeded",
        "b": "failed",
        "c": "skipped",
        "d": "succeeded",
        "e": "succeeded",
        "audit": "skipped",
    }
    assert [(e.stage, e.error) for e in recorder.of(StageFailed)] == [("b", "the build broke")]
    assert [(e.stage, e.reason) for e in recorder.of(StageSkipped)] == [
        ("c", "needs b, which failed"),
        ("audit", "needs c, which was skipped"),
    ]
    finished = recorder.of(RunFinished)[0]
    assert finished.failed == ("b",) and finished.skipped == ("c", "audit")


def test_audit_fail_verdict_fails_the_run_and_pass_passes() -> None:
    plan = plan_of("a; audit<-a")
    fail = {
        "verdict": "fail",
        "summary": "tests missing",
        "findings": [{"stage": "a", "severity": "major", "title": "no tests", "fix": "add tests"}],
    }
    outcome, _ = run(plan, OfflineRunner({"audit": {"verdict": fail}}))
    assert outcome.status == "failed"
    assert outcome.verdict is not None and outcome.verdict.findings[0].stage == "a"
    assert outcome.stages["audit"].status == "succeeded"
    outcome, _ = run(plan, OfflineRunner())
    assert outcome.status == "succeeded" and outcome.verdict is not None and outcome.verdict.verdict == "pass"


def test_an_unreadable_verdict_fails_the_audit_stage() -> None:
    plan = plan_of("a; audit<-a")
    outcome, recorder = run(plan, OfflineRunner({"audit": {"verdict": {"verdict": "maybe"}}}))
    assert outcome.status == "failed"
    (failed,) = recorder.of(StageFailed)
    assert failed.stage == "audit" and "the audit verdict is malformed" in failed.error


def test_stage_timeout_covers_the_whole_stage() -> None:
    plan = plan_of("a; audit<-a")
    outcome, recorder = run(plan, OfflineRunner(latency={"a": 5}), timeout=0.1)
    assert outcome.stages["a"].status == "failed"
    assert recorder.of(StageFailed)[0].error == "timed out after 0.1 s (retries included)"


class Flaky:
    """Fails twice with tokens spent, then answers: every attempt must be counted."""

    def __init__(self) -> None:
        self.tries = 0

    async def run(self, request: StageRequest, report: AttemptReporter) -> StageResult:
        if request.stage_id != "a":
            return await OfflineRunner().run(request, report)
        for number in (1, 2):
            report(AttemptRecord(number, 0.0, 0.1, Usage(1000, 10), error="HTTP 529 overloaded_error"))
        report(AttemptRecord(3, 0.0, 0.1, Usage(2000, 50)))
        return StageResult("done")


def test_tokens_and_cost_of_failed_attempts_are_counted() -> None:
    plan = plan_of("a; audit<-a")
    outcome, _ = run(plan, Flaky())
    assert outcome.stages["a"].usage == Usage(4000, 70)
    assert outcome.stages["a"].cost_usd == pytest.approx(4.0)
    assert outcome.usage == Usage(4000, 70)


class Broken:
    async def run(self, request: StageRequest, report: AttemptReporter) -> StageResult:
        if request.stage_id == "a":
            raise KeyError("oops")
        if request.stage_id == "b":
            raise StageFailure("HTTP 500 api_error: boom [request req_1]")
        return StageResult("ok")


def test_runner_errors_fail_their_stage_not_the_run() -> None:
    plan = plan_of("a; b; c; audit<-a,b,c")
    outcome, recorder = run(plan, Broken())
    errors = {e.stage: e.error for e in recorder.of(StageFailed)}
    assert errors == {"a": "runner error: KeyError: 'oops'", "b": "HTTP 500 api_error: boom [request req_1]"}
    assert outcome.stages["c"].status == "succeeded"


def test_cancelling_a_run_marks_it_interrupted() -> None:
    plan = plan_of("a; b<-a; audit<-b")
    recorder = Recorder()

    async def main() -> None:
        task = asyncio.create_task(
            execute(
                plan,
                build_request=build(plan),
                runner_for=lambda sid: OfflineRunner(latency={"b": 10}),
                listeners=[recorder],
                options=EngineOptions(max_parallel=2),
                price=PerInputToken(0.0),
            )
        )
        while not any(isinstance(e, StageStarted) and e.stage == "b" for e in recorder.events):
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert recorder.of(RunFinished)[0].status == "interrupted"
    assert [(e.stage, e.error) for e in recorder.of(StageFailed)] == [("b", "interrupted")]
    assert recorder.of(StageSucceeded)[0].stage == "a"


def test_a_reply_that_says_it_is_blocked_fails_the_stage() -> None:
    plan = plan_of("a; b; audit<-a,b")
    outcome, recorder = run(
        plan,
        OfflineRunner({"a": "Status: blocked: the API schema is missing\n\nDetails...", "b": "Status: done\n\nOK"}),
    )
    assert [(e.stage, e.error) for e in recorder.of(StageFailed)] == [
        ("a", "the agent reported itself blocked: the API schema is missing")
    ]
    assert outcome.stages["b"].status == "succeeded"


def test_a_stage_timeout_is_measured_on_the_engines_timer_which_a_test_can_move() -> None:
    """Deadlines and durations use the engine's timer (the loop's clock by default): moved forward an hour, a
    stage with a one-hour timeout fails at the watchdog's next look, long before any real hour passes."""
    stages = [{"id": "slow", "agent": "build", "timeout": 3600}, {"id": "audit", "agent": "auditor", "needs": ["slow"]}]
    plan = build_plan(parse_workflow(json.dumps({"name": "t", "stages": stages}), source="t.yaml"))
    offset = [0.0]

    def timer() -> float:
        return asyncio.get_running_loop().time() + offset[0]

    class Hangs(OfflineRunner):
        async def run(self, request: StageRequest, report: AttemptReporter) -> StageResult:
            offset[0] = 3601.0  # the hour passes, for the engine, as soon as the request is out
            await asyncio.sleep(30)
            raise AssertionError("the stage should have timed out")

    recorder = Recorder()
    started = time.monotonic()
    outcome = asyncio.run(
        execute(
            plan,
            build_request=build(plan),
            runner_for=lambda sid: Hangs(),
            listeners=[recorder],
            options=EngineOptions(max_parallel=2),
            price=PerInputToken(0),
            timer=timer,
        )
    )
    assert time.monotonic() - started < 5  # the watchdog looked within its period (a second), not an hour
    assert outcome.stages["slow"].status == "failed"
    assert outcome.stages["slow"].error == "timed out after 3600 s (retries included)"
    assert outcome.stages["slow"].duration >= 3600  # measured on the same timer
