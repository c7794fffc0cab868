"""Reliability: a run killed at any moment loses no finished work; API faults end runs with an accurate state.

Both tests run ``orchestrate run`` as a real process against the localhost fake of the Messages API
(``fake_anthropic.py``), so the SDK, the retries, the state writer and the kernel's handling of a killed
process are all the real ones. ``pytest -s`` shows a tally of each.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from orchestrator.state.repository import recover_state

from .conftest import FEATURE, TempProject
from .fake_anthropic import DEFAULT_USAGE, DEFAULT_VERDICT, FakeAnthropic

STAGES = ("plan", "backend", "frontend", "integrate", "audit")
KEY = "test-key-not-a-secret"


def at(stage: str) -> str:
    """Matches requests for ``stage`` (its user message starts with this), not ones that quote it."""
    return f": stage `{stage}` of workflow"


def of_task(task: str, stage: str) -> str:
    """Matches requests for ``stage`` of one task only."""
    return f"# Task `{task}`: stage `{stage}` of workflow"


def requests_per_stage(fake: FakeAnthropic, task: str) -> dict[str, int]:
    texts = [request.text() for request in fake.messages()]
    return {sid: sum(of_task(task, sid) in text for text in texts) for sid in STAGES}


def command(task: str, workflow: str = "feature") -> list[str]:
    workflow_file = f"workflows/{workflow}.yaml"
    return [sys.executable, "-m", "orchestrator", "run", workflow_file, "--task", task, "--param", "goal=x"]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def logged_events(data: bytes) -> set[tuple[str, str | None]]:
    """(event, stage) of each whole line of a piece of ``events.jsonl`` being written."""
    out: set[tuple[str, str | None]] = set()
    for line in data.split(b"\n")[:-1]:
        try:
            event = json.loads(line)
        except ValueError:
            continue
        out.add((event.get("event"), event.get("stage")))
    return out


def read_log(folder: Path) -> list[dict[str, Any]]:
    """Every event of ``events.jsonl``; each line must be whole JSON (a kill leaves whole lines only)."""
    path = folder / "events.jsonl"
    if not path.exists():
        return []
    raw = path.read_bytes()
    assert not raw or raw.endswith(b"\n"), f"{path} ends in a torn line: {raw[-80:]!r}"
    return [json.loads(line) for line in raw.splitlines()]


@pytest.fixture
def feature(project: TempProject) -> TempProject:
    project.workflow(FEATURE)
    return project


@pytest.fixture
def fake() -> Iterator[FakeAnthropic]:
    with FakeAnthropic() as api:
        yield api


# -- 1. SIGKILL at random moments --------------------------------------------------------------------------------

KILLS = 20
WORKERS = 2  # campaigns run two at a time: the processes' start-up (importing the SDK) dominates
SEED = 20240611
DELAYS = {"plan": 0.12, "backend": 0.25, "frontend": 0.06, "integrate": 0.18, "audit": 0.09}
REPLIES = {sid: f"{sid.upper()} DONE: the reply of stage {sid}, and of no other stage" for sid in STAGES[:-1]}
VERDICT = {**DEFAULT_VERDICT, "summary": "Crash test: every stage's output arrived."}


def expected_file(sid: str) -> str:
    return json.dumps(VERDICT) + "\n" if sid == "audit" else REPLIES[sid] + "\n"


def finished_by_log(folder: Path, events: list[dict[str, Any]]) -> dict[str, str]:
    """The stages whose success the event log records (output file intact), with their output's sha256.

    Independent of ``recover_state``: the latest stage event of each stage, across every run in the log.
    """
    latest: dict[str, dict[str, Any]] = {}
    for event in events:
        if event.get("stage") in STAGES and event["event"] in (
            "stage_started",
            "stage_succeeded",
            "stage_reused",
            "stage_failed",
            "stage_skipped",
        ):
            latest[event["stage"]] = event
    out: dict[str, str] = {}
    for sid, event in latest.items():
        path = folder / "stages" / f"{sid}.md"
        intact = path.exists() and sha256(path) == event.get("output_sha256")
        if event["event"] in ("stage_succeeded", "stage_reused") and intact:
            out[sid] = event["output_sha256"]
    return out


@dataclass
class KillRecord:
    task: str
    moment: Moment
    after: float  # seconds from launch to the signal
    recovered: dict[str, str]  # stage -> output sha256, of the stages recover_state says succeeded
    logged: dict[str, str]  # the same, as the event log says
    requests: dict[str, int]  # requests per stage the fake had seen for the task at the kill


@dataclass
class Tally:
    kills: list[KillRecord] = field(default_factory=list)
    campaigns: list[str] = field(default_factory=list)
    launches: int = 0
    requests: int = 0
    reused: int = 0
    stray_tmp: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


@dataclass
class Timing:
    startup: float  # launch to run_started
    total: float  # launch to exit


def calibrate(root: Path, env: dict[str, str], fake: FakeAnthropic) -> Timing:
    """One uninterrupted run: how long a run takes here, and a check that it succeeds at all."""
    started = time.time()
    proc = subprocess.run(command("calibrate"), cwd=root, env=env, capture_output=True, text=True, timeout=120)
    total = time.time() - started
    assert proc.returncode == 0, proc.stderr + proc.stdout
    events = read_log(root / "docs/ai/calibrate")
    assert requests_per_stage(fake, "calibrate") == dict.fromkeys(STAGES, 1)
    return Timing(startup=events[0]["time"] - started, total=total)


@dataclass(frozen=True)
class Moment:
    """When to kill a run: ``after`` seconds from launch, or just after it logs ``event`` (and its stage)."""

    mode: str  # early, timed or boundary
    after: float | None = None
    event: tuple[str, str | None] | None = None

    def __str__(self) -> str:
        if self.event is not None:
            return f"{self.mode}: just after {' '.join(part for part in self.event if part)}"
        return f"{self.mode}: at {self.after:.2f} s"


def kill_moment(rng: random.Random, timing: Timing, unfinished: list[str]) -> Moment:
    roll = rng.random()
    if roll < 0.2:  # very early: the interpreter starting, the state folder being made
        return Moment("early", after=rng.uniform(0.0, timing.startup * 1.1))
    if roll < 0.55:
        return Moment("timed", after=rng.uniform(0.0, timing.total))
    choices: list[tuple[str, str | None]] = [("run_started", None), ("run_finished", None)]
    for sid in unfinished:
        choices += [("stage_started", sid), ("stage_succeeded", sid), ("stage_succeeded", sid)]
    return Moment("boundary", event=rng.choice(choices))


def launch(
    root: Path, env: dict[str, str], task: str, logs: Path, rng: random.Random, moment: Moment | None
) -> tuple[int, float, str]:
    """Run the command, SIGKILLing it at ``moment`` unless it ends first: (exit code, seconds run, stderr)."""
    path = root / "docs/ai" / task / "events.jsonl"
    log_start = path.stat().st_size if path.exists() else 0
    name = f"{task}-{time.monotonic_ns()}"
    with open(logs / f"{name}.out", "wb") as out, open(logs / f"{name}.err", "wb") as err:
        started = time.monotonic()
        proc = subprocess.Popen(command(task), cwd=root, env=env, stdout=out, stderr=err)
        try:
            if moment is not None and moment.after is not None:
                try:
                    proc.wait(timeout=moment.after)
                except subprocess.TimeoutExpired:
                    proc.send_signal(signal.SIGKILL)
            elif moment is not None and moment.event is not None:
                deadline, size = started + 120, log_start
                while proc.poll() is None and time.monotonic() < deadline:
                    if path.exists() and path.stat().st_size != size:
                        with open(path, "rb") as handle:
                            handle.seek(log_start)
                            tail = handle.read()
                        size = log_start + len(tail)
                        if moment.event in logged_events(tail):
                            time.sleep(rng.uniform(0.0, 0.015))  # just after it: before, during or after a flush
                            proc.send_signal(signal.SIGKILL)
                            break
                    time.sleep(0.002)
            proc.wait(timeout=120)
        finally:
            if proc.poll() is None:  # a hang: don't leave it behind
                proc.kill()
                proc.wait()
    return proc.returncode, time.monotonic() - started, (logs / f"{name}.err").read_text()


def campaign(
    root: Path,
    env: dict[str, str],
    fake: FakeAnthropic,
    task: str,
    quota: int,
    rng: random.Random,
    timing: Timing,
    logs: Path,
    tally: Tally,
) -> int:
    """Kill runs of ``task`` until ``quota`` kills hit (or a run ends first), then run it to the end.

    Returns the number of kills that hit.
    """
    folder = root / "docs/ai" / task
    kills: list[KillRecord] = []
    launches = 0
    while True:
        unfinished = [sid for sid in STAGES if sid not in finished_by_log(folder, read_log(folder))]
        moment = kill_moment(rng, timing, unfinished) if len(kills) < quota else None
        code, ran, err = launch(root, env, task, logs, rng, moment)
        launches += 1
        if code != -signal.SIGKILL:
            break  # the run ended by itself: it must have finished the task
        assert moment is not None
        # The kill hit. Let the fake take in a request the process sent just before dying, then look.
        time.sleep(0.15)
        state_path = folder / "state.json"
        events = read_log(folder)  # every line parses
        if state_path.exists():
            snapshot = json.loads(state_path.read_text())  # parses: it is only ever replaced whole
            assert snapshot["schema_version"] == 2
            recovered_state = recover_state(folder)
            recovered = {
                sid: stage.output_sha256 or ""
                for sid, stage in recovered_state.stages.items()
                if stage.status == "succeeded"
            }
        else:
            assert not events, "events were logged before the first state.json was written"
            recovered = {}
        logged = finished_by_log(folder, events)
        for sid, digest in recovered.items():
            path = folder / "stages" / f"{sid}.md"
            assert path.exists() and path.read_text() == expected_file(sid), f"{task}: {sid} recorded, file wrong"
            assert sha256(path) == digest, f"{task}: {sid}'s output does not match its recorded sha256"
        if recovered.keys() != logged.keys():
            tally.problems.append(
                f"{task}, kill {len(kills) + 1} ({moment}, {ran:.2f} s after launch): recover_state "
                f"says {sorted(recovered)} succeeded, but the event log records {sorted(logged)} as succeeded "
                "with their outputs intact"
            )
        kills.append(KillRecord(task, moment, ran, recovered, logged, requests_per_stage(fake, task)))

    # The campaign's last run ended by itself: everything must be done, and nothing finished done twice.
    assert code == 0, f"{task}: the final run exited {code}:\n{err}"
    assert "Traceback" not in err, err
    events = read_log(folder)
    snapshot = json.loads((folder / "state.json").read_text())
    assert snapshot["schema_version"] == 2 and snapshot["status"] == "succeeded", snapshot["status"]
    assert {sid: s["status"] for sid, s in snapshot["stages"].items()} == dict.fromkeys(STAGES, "succeeded")
    assert {sid: s.status for sid, s in recover_state(folder).stages.items()} == dict.fromkeys(STAGES, "succeeded")
    assert events[-1]["event"] == "run_finished" and events[-1]["status"] == "succeeded"
    for sid in STAGES:
        stage = snapshot["stages"][sid]
        path = folder / "stages" / f"{sid}.md"
        assert stage["output"] == f"stages/{sid}.md"
        assert path.read_text() == expected_file(sid), f"{task}: stages/{sid}.md"
        assert stage["output_sha256"] == sha256(path)
    assert json.loads((folder / "stages/audit.json").read_text()) == VERDICT
    assert (folder / "workflow-state.md").read_text().startswith(f"# feature: {task}\n")
    final = requests_per_stage(fake, task)
    for number, kill in enumerate(kills, 1):
        for sid in STAGES:
            done = {"recover_state": kill.recovered, "the event log": kill.logged}
            for source, finished in done.items():
                if sid in finished and final[sid] != kill.requests[sid]:
                    tally.problems.append(
                        f"{task}: {source} recorded {sid} as succeeded at kill {number} ({kill.moment}, "
                        f"{kill.after:.2f} s after launch), yet it was requested "
                        f"{final[sid] - kill.requests[sid]} more time(s)"
                    )
                if sid in finished and snapshot["stages"][sid]["output_sha256"] != finished[sid]:
                    tally.problems.append(f"{task}: {sid}'s output changed after kill {number}")
    for sid in STAGES:  # each run requests a stage once at most, and only while it is unfinished
        for source in ("recover_state", "the event log"):
            unfinished_at = sum(
                1 for kill in kills if sid not in (kill.recovered if source == "recover_state" else kill.logged)
            )
            if not 1 <= final[sid] <= unfinished_at + 1:
                tally.problems.append(
                    f"{task}: {sid} was requested {final[sid]} times, with {unfinished_at} kill(s) while it was "
                    f"unfinished by {source}"
                )
    with tally.lock:
        tally.kills += kills
        tally.campaigns.append(task)
        tally.launches += launches
        tally.requests += sum(final.values())
        tally.reused += sum(1 for event in events if event["event"] == "stage_reused")
        tally.stray_tmp += [str(p.relative_to(folder)) for p in folder.rglob("*.tmp")]
    return len(kills)


def test_sigkill_at_random_moments_never_loses_or_redoes_finished_work(
    feature: TempProject, fake: FakeAnthropic, tmp_path: Path
) -> None:
    for sid in STAGES[:-1]:
        fake.reply(REPLIES[sid], when=at(sid), delay=DELAYS[sid])
    fake.reply(json.dumps(VERDICT), when=at("audit"), delay=DELAYS["audit"])
    env = {**os.environ, "ANTHROPIC_BASE_URL": fake.url, "ANTHROPIC_API_KEY": KEY}
    logs = tmp_path / "logs"
    logs.mkdir()
    clock = time.monotonic()
    timing = calibrate(feature.root, env, fake)
    seeds = random.Random(SEED)
    worker_seeds = [seeds.randrange(2**32) for _ in range(WORKERS)]
    quotas = [KILLS // WORKERS + (1 if i < KILLS % WORKERS else 0) for i in range(WORKERS)]
    tally = Tally()

    def worker(index: int) -> None:
        rng = random.Random(worker_seeds[index])
        left, number = quotas[index], 0
        while left > 0:
            number += 1
            quota = min(left, rng.randint(2, 6))
            left -= campaign(feature.root, env, fake, f"crash-{index}-{number}", quota, rng, timing, logs, tally)

    try:
        with ThreadPoolExecutor(WORKERS) as pool:
            for future in [pool.submit(worker, i) for i in range(WORKERS)]:
                future.result()
    finally:
        modes = Counter(kill.moment.mode for kill in tally.kills)
        progress = Counter(len(kill.logged) for kill in tally.kills)
        print(
            f"\ncrash test: {len(tally.kills)} kills ({dict(modes)}) in {len(tally.campaigns)} campaigns, "
            f"{tally.launches} runs; a run takes {timing.total:.2f} s here ({timing.startup:.2f} s to start)"
        )
        print(f"  stages finished at the kills: {dict(sorted(progress.items()))}")
        print(
            f"  requests: {tally.requests} made, {tally.reused} saved (stages kept after a kill); "
            f"a from-scratch rerun would have made {tally.requests + tally.reused}"
        )
        if tally.stray_tmp:
            print(f"  temp files left behind by kills: {tally.stray_tmp}")
        for problem in tally.problems:
            print("  PROBLEM: " + problem)
        print(f"  {time.monotonic() - clock:.1f} s")
    assert len(tally.kills) == KILLS
    assert not tally.problems, "\n".join(tally.problems)


# -- 2. API faults ----------------------------------------------------------------------------------------------

RATE_LIMITED = {"status": 429, "error": "rate_limit_error", "headers": {"retry-after": "0"}}
OVERLOADED = {"status": 529, "error": "overloaded_error"}
SERVER_ERROR = {"status": 500, "error": "api_error"}
REPLY_USAGE = {"input_tokens": 1000, "output_tokens": 200}  # the faulted stage's good reply
START_USAGE = {"input_tokens": 100, "output_tokens": 50}  # its broken reply: message_start says 100 in, 1 out
PRICES = {"plan": (4.0, 20.0), "audit": (4.0, 20.0)}  # opus 5.5; the other stages run on sonnet 5.5: (2, 10)
CONNECTION = r"(?i)connection|closed|incomplete|peer|protocol"


@dataclass(frozen=True)
class Try:
    """One attempt as state.json must record it."""

    code: int | None = None  # its HTTP status
    input: int = 0
    output: int = 0
    error: str | None = None  # a regex its error must match; None: it succeeded

    def cost(self, sid: str) -> float:
        price_in, price_out = PRICES.get(sid, (2.0, 10.0))
        return (self.input * price_in + self.output * price_out) / 1e6


OK = Try(None, 1000, 200)
DEFAULT_OK = Try(None, 10, 5)  # the reply to the stages a scenario leaves alone (DEFAULT_USAGE)


@dataclass(frozen=True)
class Scenario:
    name: str
    stage: str  # the stage that meets the fault
    faults: tuple[dict[str, Any], ...]  # fake.reply arguments for it, matched before its good reply
    tries: tuple[Try, ...]  # its attempts, in order
    statuses: dict[str, str]  # every stage's final status
    error: str | None = None  # a regex its final error must match
    workflow: str = "feature"
    code: int = 0
    in_process: bool = False  # for many connection errors: their backoff (1 s, 2 s, ...) is only short in-process


ALL_OK = dict.fromkeys(STAGES, "succeeded")
SCENARIOS = (
    Scenario(
        "429 storm, recovered",
        "backend",
        ({**RATE_LIMITED, "text": "slow down", "times": 4},),
        (Try(429, error=r"^HTTP 429 rate_limit_error: slow down \[request req_fake\]$"),) * 4 + (OK,),
        ALL_OK,
    ),
    Scenario(
        "429 storm past the retry budget",
        "frontend",
        ({**RATE_LIMITED, "text": "slow down"},),
        (Try(429, error=r"^HTTP 429 rate_limit_error: slow down"),) * 5,
        {**ALL_OK, "frontend": "failed", "integrate": "skipped", "audit": "skipped"},
        error=r"^HTTP 429 rate_limit_error: slow down \[request req_fake\] \(gave up after 5 attempts\)$",
        code=1,
    ),
    Scenario(
        "529 overloaded, recovered",
        "plan",
        ({**OVERLOADED, "text": "busy", "headers": {"retry-after-ms": "20"}, "times": 2},),
        (Try(529, error=r"^HTTP 529 overloaded_error: busy"),) * 2 + (OK,),
        ALL_OK,
    ),
    Scenario(
        "529 overloaded past the retry budget",
        "integrate",
        ({**OVERLOADED, "text": "busy", "headers": {"retry-after-ms": "1"}},),
        (Try(529, error=r"^HTTP 529 overloaded_error: busy"),) * 5,
        {**ALL_OK, "integrate": "failed", "audit": "skipped"},
        error=r"^HTTP 529 overloaded_error: busy .*\(gave up after 5 attempts\)$",
        code=1,
    ),
    Scenario(
        "500 api_error, recovered (the audit)",
        "audit",
        ({**SERVER_ERROR, "text": "oops", "headers": {"retry-after": "0"}, "times": 2},),
        (Try(500, error=r"^HTTP 500 api_error: oops"),) * 2 + (OK,),
        ALL_OK,
    ),
    Scenario(
        "500 api_error without retry-after: backoff, recovered",
        "plan",
        ({**SERVER_ERROR, "text": "oops", "times": 1},),
        (Try(500, error=r"^HTTP 500 api_error: oops"), OK),
        ALL_OK,
    ),
    Scenario(
        "500 api_error past the retry budget, continue_on_failure",
        "frontend",
        ({**SERVER_ERROR, "text": "oops", "headers": {"retry-after": "0"}},),
        (Try(500, error=r"^HTTP 500 api_error: oops"),) * 5,
        {**ALL_OK, "frontend": "failed"},
        error=r"^HTTP 500 api_error: oops .*\(gave up after 5 attempts\)$",
        workflow="lenient",
    ),
    Scenario(
        "connection dropped mid-stream, recovered",
        "backend",
        ({"drop_after": 3, "times": 1, "usage": START_USAGE},),
        (Try(None, 100, 1, CONNECTION), OK),
        ALL_OK,
    ),
    Scenario(
        "connection dropped before the first event, recovered",
        "frontend",
        ({"drop_after": 0, "times": 1, "usage": START_USAGE},),
        (Try(None, 0, 0, CONNECTION), OK),
        ALL_OK,
    ),
    Scenario(
        "connection dropped mid-stream on every try",
        "integrate",
        ({"drop_after": 4, "usage": START_USAGE},),
        (Try(None, 100, 1, CONNECTION),) * 3,
        {**ALL_OK, "integrate": "failed", "audit": "skipped"},
        error=r"gave up after 3 attempts",
        code=1,
        in_process=True,
    ),
    Scenario(
        "reply slower than the stage timeout",
        "frontend",
        ({"delay": 5.0},),
        (Try(None, 0, 0, r"^cancelled$"),),
        {**ALL_OK, "frontend": "failed", "integrate": "skipped", "audit": "skipped"},
        error=r"^timed out after 1 s",
        workflow="timeout-frontend",
        code=1,
    ),
    Scenario(
        "stream stalled past the timeout, the stage's retry succeeds",
        "backend",
        ({"stall": 5.0, "times": 1, "usage": START_USAGE},),
        (Try(None, 100, 1, r"^cancelled$"), OK),
        ALL_OK,
        workflow="timeout-backend",
    ),
    Scenario(
        "stream stalled past the timeout on every try",
        "backend",
        ({"stall": 5.0, "usage": START_USAGE},),
        (Try(None, 100, 1, r"^cancelled$"),) * 2,
        {**ALL_OK, "backend": "failed", "integrate": "skipped", "audit": "skipped"},
        error=r"^timed out after 1 s .*\(after 2 tries\)$",
        workflow="timeout-backend",
        code=1,
    ),
)


def variant(name: str, stage: str, keys: str) -> str:
    """The feature workflow named ``name``, with ``keys`` added to ``stage``."""
    text = FEATURE.replace("name: feature", f"name: {name}")
    line = f"  - id: {stage}\n"
    assert line in text
    return text.replace(line, line + f"    {keys}\n")


@dataclass
class Outcome:
    code: int | None
    err: str
    seconds: float


def run_cli(root: Path, env: dict[str, str], scenario: Scenario, task: str) -> Outcome:
    started = time.monotonic()
    try:
        proc = subprocess.run(
            command(task, scenario.workflow), cwd=root, env=env, capture_output=True, text=True, timeout=90
        )
    except subprocess.TimeoutExpired as exc:
        return Outcome(None, f"hung: no exit after {exc.timeout} s", time.monotonic() - started)
    return Outcome(proc.returncode, proc.stderr + proc.stdout, time.monotonic() - started)


def run_in_process(root: Path, scenario: Scenario, task: str) -> Outcome:
    from orchestrator.project import Project
    from orchestrator.run.options import RunRequest
    from orchestrator.run.prepare import prepare_run, run_prepared
    from orchestrator.runners.anthropic import AnthropicRunner, RetryPolicy

    started = time.monotonic()
    prepared = prepare_run(
        root / f"workflows/{scenario.workflow}.yaml", Project(root), RunRequest(task=task, param_args=["goal=x"])
    )
    runner = AnthropicRunner(retry=RetryPolicy(max_attempts=3, base_delay=0.01))
    outcome = run_prepared(prepared, runner=runner, flush_interval=0)
    code = {"succeeded": 0, "failed": 1}.get(outcome.status, -1)
    return Outcome(code, f"run status {outcome.status}", time.monotonic() - started)


def check(scenario: Scenario, task: str, outcome: Outcome, folder: Path, fake: FakeAnthropic) -> None:
    assert outcome.code is not None, outcome.err
    assert outcome.code in (0, 1) and outcome.code == scenario.code, f"exit {outcome.code}:\n{outcome.err}"
    assert "Traceback" not in outcome.err, outcome.err
    events = read_log(folder)
    assert events[-1]["event"] == "run_finished"
    saved = json.loads((folder / "state.json").read_text())
    assert saved["schema_version"] == 2
    assert saved["status"] == ("succeeded" if scenario.code == 0 else "failed")
    statuses = {sid: stage["status"] for sid, stage in saved["stages"].items()}
    assert statuses == scenario.statuses
    assert {sid: s.status for sid, s in recover_state(folder).stages.items()} == statuses
    sent = requests_per_stage(fake, task)
    total_tokens: Counter[str] = Counter()
    total_cost = 0.0
    for sid in STAGES:
        stage = saved["stages"][sid]
        if sid == scenario.stage:
            expected = scenario.tries
        else:
            expected = (DEFAULT_OK,) if scenario.statuses[sid] != "skipped" else ()
        attempts = stage["attempts"]
        described = [(a["status_code"], a["tokens"]["input"], a["tokens"]["output"], a["error"]) for a in attempts]
        assert len(attempts) == len(expected), f"{sid}: {len(expected)} attempts expected, recorded {described}"
        assert sent[sid] == len(attempts), f"{sid}: {sent[sid]} requests sent, {len(attempts)} attempts recorded"
        for attempt, want in zip(attempts, expected, strict=True):
            assert attempt["status_code"] == want.code, described
            assert (attempt["tokens"]["input"], attempt["tokens"]["output"]) == (want.input, want.output), described
            if want.error is None:
                assert attempt["error"] is None, described
            else:
                assert attempt["error"] and re.search(want.error, attempt["error"]), described
            assert attempt["cost_usd"] == pytest.approx(want.cost(sid), abs=1e-9), described
        tokens = {"input": sum(t.input for t in expected), "output": sum(t.output for t in expected)}
        assert stage["tokens"] == {**tokens, "cache_read": 0, "cache_write": 0}, f"{sid}: tokens not summed"
        assert stage["cost_usd"] == pytest.approx(sum(t.cost(sid) for t in expected), abs=1e-9), sid
        total_tokens.update(stage["tokens"])
        total_cost += stage["cost_usd"]
        if stage["status"] == "succeeded":
            assert stage["output"] == f"stages/{sid}.md" and (folder / stage["output"]).exists()
        if stage["status"] == "skipped":
            assert re.fullmatch(r"needs \w+, which (failed|was skipped)", stage["error"]), stage["error"]
    assert saved["tokens"] == dict(total_tokens)
    assert saved["cost_usd"] == pytest.approx(total_cost, abs=1e-9)
    failed = saved["stages"][scenario.stage]
    if scenario.error is not None:
        assert failed["error"] and re.search(scenario.error, failed["error"]), failed["error"]
    if scenario.workflow == "lenient":  # the stage after the failed one ran, and was told of the failure
        integrate = [r.text() for r in fake.messages() if of_task(task, "integrate") in r.text()]
        assert len(integrate) == 1 and "## Stage `frontend` failed" in integrate[0]


def test_api_faults_end_every_run_with_an_accurate_state(
    project: TempProject, fake: FakeAnthropic, monkeypatch: pytest.MonkeyPatch
) -> None:
    project.workflow(FEATURE)
    project.workflow(variant("lenient", "frontend", "continue_on_failure: true"), name="lenient")
    project.workflow(variant("timeout-frontend", "frontend", "timeout: 1"), name="timeout-frontend")
    project.workflow(variant("timeout-backend", "backend", "timeout: 1\n    retries: 1"), name="timeout-backend")
    tasks = {scenario.name: f"fault-{number}" for number, scenario in enumerate(SCENARIOS, 1)}
    for scenario in SCENARIOS:
        task = tasks[scenario.name]
        for fault in scenario.faults:
            fake.reply(when=of_task(task, scenario.stage), **fault)
        for sid in STAGES:  # the stages the scenario leaves alone: a reply of known usage
            if sid != scenario.stage:
                text = json.dumps(DEFAULT_VERDICT) if sid == "audit" else f"{sid} done"
                fake.reply(text, when=of_task(task, sid), usage=DEFAULT_USAGE)
        if scenario.stage == "audit":
            fake.reply(json.dumps(DEFAULT_VERDICT), when=of_task(task, "audit"), usage=REPLY_USAGE)
        else:
            fake.reply(f"{scenario.stage} done", when=of_task(task, scenario.stage), usage=REPLY_USAGE)
    env = {**os.environ, "ANTHROPIC_BASE_URL": fake.url, "ANTHROPIC_API_KEY": KEY}
    monkeypatch.setenv("ANTHROPIC_BASE_URL", fake.url)  # for the in-process runs
    monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)
    clock = time.monotonic()

    def run(scenario: Scenario) -> Outcome:
        if scenario.in_process:
            return run_in_process(project.root, scenario, tasks[scenario.name])
        return run_cli(project.root, env, scenario, tasks[scenario.name])

    with ThreadPoolExecutor(3) as pool:  # a few at a time, so the 1 s timeouts measure the fake, not the CPU
        futures = {s.name: pool.submit(run, s) for s in SCENARIOS if not s.in_process}
        outcomes = {name: future.result() for name, future in futures.items()}
    outcomes |= {s.name: run(s) for s in SCENARIOS if s.in_process}  # in this thread: asyncio.run, signals

    failures: list[str] = []
    lines: list[str] = []
    for scenario in SCENARIOS:
        task, outcome = tasks[scenario.name], outcomes[scenario.name]
        folder = project.root / "docs/ai" / task
        try:
            check(scenario, task, outcome, folder, fake)
            verdict = "ok"
        except AssertionError as exc:
            verdict = "WRONG"
            failures.append(f"{scenario.name} ({task}): {exc}")
        stages = {}
        if (folder / "state.json").exists():
            saved = json.loads((folder / "state.json").read_text())
            stages = {sid: f"{s['status']}/{len(s['attempts'])}" for sid, s in saved["stages"].items()}
        shown = " ".join(f"{sid}={value}" for sid, value in stages.items())
        how = "in-process" if scenario.in_process else "cli"
        lines.append(f"  {verdict:5} {scenario.name:60} {how:10} exit {outcome.code} {outcome.seconds:5.1f} s  {shown}")
    print(f"\nfault test: {len(SCENARIOS)} scenarios, {len(failures)} wrong, {time.monotonic() - clock:.1f} s")
    print("  (stage=status/attempts)")
    print("\n".join(lines))
    for failure in failures:
        print("  WRONG: " + failure.replace("\n", "\n    "))
    assert not failures, "\n\n".join(failures)
