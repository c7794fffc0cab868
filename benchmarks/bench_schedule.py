"""What a user waits for: from the run call until the run's state is on disk, per DAG shape.

Each case is a generated workflow run through the public API
(``prepare_workflow`` + ``run_workflow_async``) with the offline runner's latency
standing in for model time; the timer stops when the call returns, and by then
``state.json``, ``events.jsonl``, every stage output and ``workflow-state.md``
are written and synced. In the same process and on the same DAG:

- **asyncio**: the least an asyncio program can do (one task per stage awaiting
  its needs, then sleeping), with no state at all;
- **LangGraph**: a ``StateGraph`` with one node per stage and its in-memory
  checkpointer (``InMemorySaver``), nodes sleeping the same latency. Installed
  with ``pip install -e ".[bench]"``; skipped (and said so) without it.

    python benchmarks/bench_schedule.py            # every case, best of 3
    python benchmarks/bench_schedule.py --runs 5 --only a,c

Targets (state durable): (a) <= 150 us per stage; (b) <= 1.05 x the critical
path; (c) <= 1.25 x; (e) <= 150 us per stage; ``validate`` of a 10-stage
workflow <= 0.3 s (with the interpreter's own start-up printed beside it).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import operator
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, TypedDict

from orchestrator import RunRequest, prepare_workflow, run_workflow_async

MAX_PARALLEL = 1000


@dataclass
class Case:
    key: str
    title: str
    needs: dict[str, list[str]]
    latency: dict[str, float]
    target: Callable[[float, float, int], str]


def ratio_target(limit: float) -> Callable[[float, float, int], str]:
    def check(makespan: float, critical: float, stages: int) -> str:
        return f"<= {limit} x critical path: {'ok' if makespan <= limit * critical else 'MISSED'}"

    return check


def per_stage_target(limit_us: float) -> Callable[[float, float, int], str]:
    def check(makespan: float, critical: float, stages: int) -> str:
        per = (makespan - critical) / stages * 1e6
        return f"<= {limit_us:g} us/stage: {'ok' if per <= limit_us else 'MISSED'}"

    return check


def chain(n: int, latency: float) -> tuple[dict[str, list[str]], dict[str, float]]:
    needs = {f"c{i}": ([f"c{i - 1}"] if i else []) for i in range(n)}
    return needs, dict.fromkeys(needs, latency)


def cases() -> list[Case]:
    rng = random.Random(7)
    out = []
    needs, latency = chain(200, 0.0)
    out.append(Case("a", "chain of 200 stages at 0 ms", needs, latency, per_stage_target(150)))

    needs = {}
    for layer in range(10):
        for j in range(20):
            sid = f"l{layer}_{j}"
            needs[sid] = [] if layer == 0 else rng.sample([f"l{layer - 1}_{k}" for k in range(20)], rng.choice((2, 3)))
    out.append(
        Case("b", "10 layers x 20 at 50 ms, 2-3 needs each", needs, dict.fromkeys(needs, 0.05), ratio_target(1.05))
    )

    needs = {"root": []} | {f"w{i}": ["root"] for i in range(500)} | {"join": [f"w{i}" for i in range(500)]}
    out.append(Case("c", "fan-out 1 -> 500 -> 1 at 20 ms", needs, dict.fromkeys(needs, 0.02), ratio_target(1.25)))

    needs, latency = chain(10, 0.05)
    needs["long"] = []
    latency["long"] = 0.5
    out.append(Case("d", "one 500 ms stage beside ten 50 ms in a chain", needs, latency, ratio_target(1.05)))

    needs = {}
    for i in range(2000):
        earlier = [f"r{k}" for k in range(max(0, i - 200), i)]
        needs[f"r{i}"] = rng.sample(earlier, min(len(earlier), rng.randint(0, 3)))
    out.append(Case("e", "2,000 random stages at 0 ms", needs, dict.fromkeys(needs, 0.0), per_stage_target(150)))
    return out


def with_audit(needs: dict[str, list[str]]) -> dict[str, list[str]]:
    """The DAG as a workflow runs it: an audit stage after every sink."""
    sinks = set(needs) - {n for deps in needs.values() for n in deps}
    return {**needs, "audit": sorted(sinks)}


def critical_path(needs: dict[str, list[str]], latency: dict[str, float]) -> float:
    finish: dict[str, float] = {}
    for sid in needs:  # generated in a topological order
        finish[sid] = latency.get(sid, 0.0) + max((finish[n] for n in needs[sid]), default=0.0)
    return max(finish.values())


async def plain_asyncio(needs: dict[str, list[str]], latency: dict[str, float]) -> float:
    done = {sid: asyncio.get_running_loop().create_future() for sid in needs}
    limit = asyncio.Semaphore(MAX_PARALLEL)

    async def stage(sid: str) -> None:
        for need in needs[sid]:
            await done[need]
        async with limit:
            await asyncio.sleep(latency.get(sid, 0.0))
        done[sid].set_result(None)

    start = time.perf_counter()
    await asyncio.gather(*(stage(sid) for sid in needs))
    return time.perf_counter() - start


def langgraph_runner(needs: dict[str, list[str]], latency: dict[str, float]) -> Callable[[], float] | None:
    """A function timing one LangGraph run of the DAG, or None when LangGraph is not installed."""
    try:
        from langgraph.checkpoint.memory import InMemorySaver
        from langgraph.graph import END, START, StateGraph
    except ImportError:
        return None

    class State(TypedDict):
        done: Annotated[list[str], operator.add]

    def node(sid: str) -> Callable[[State], Any]:
        async def run(state: State) -> dict[str, list[str]]:
            await asyncio.sleep(latency.get(sid, 0.0))
            return {"done": [sid]}

        return run

    builder = StateGraph(State)
    for sid in needs:
        builder.add_node(sid, node(sid))  # type: ignore[call-overload]
    for sid, deps in needs.items():
        if not deps:
            builder.add_edge(START, sid)
        elif len(deps) == 1:
            builder.add_edge(deps[0], sid)
        else:
            builder.add_edge(deps, sid)  # waits for every one of them
    for sink in set(needs) - {n for deps in needs.values() for n in deps}:
        builder.add_edge(sink, END)
    graph = builder.compile(checkpointer=InMemorySaver())
    count = [0]

    def once() -> float:
        count[0] += 1
        config: Any = {"configurable": {"thread_id": f"t{count[0]}"}, "recursion_limit": 100_000}
        start = time.perf_counter()
        result = asyncio.run(graph.ainvoke({"done": []}, config))
        elapsed = time.perf_counter() - start
        assert len(result["done"]) == len(needs)
        return elapsed

    return once


def disk_cost(folder: Path, count: int = 300) -> float:
    """Seconds to write one small new file atomically in ``folder`` (temp file, rename): what each stage's
    output costs on this disk, measured in the same run."""
    folder.mkdir()
    start = time.perf_counter()
    for i in range(count):
        tmp = folder / f".{i}.tmp"
        tmp.write_bytes(b"x" * 300)
        tmp.replace(folder / f"{i}.md")
    return (time.perf_counter() - start) / count


def cells(value: float | None, critical: float, stages: int) -> str:
    """A makespan, its overhead per stage over the critical path, and its ratio to it."""
    if value is None:
        return f"{'n/a':>13}{'':>11}{'':>7}"
    per = (value - critical) / stages * 1e6
    ratio = f"{value / critical:.2f}" if critical else "-"
    return f"{value * 1000:>10.0f} ms{per:>8.0f} us{ratio:>7}"


def write_workflow(root: Path, case: Case) -> Path:
    stages = [{"id": sid, "agent": "build", "needs": deps} for sid, deps in case.needs.items()]
    stages.append({"id": "audit", "agent": "auditor", "needs": with_audit(case.needs)["audit"]})
    path = root / "workflows" / f"bench-{case.key}.yaml"
    path.write_text(json.dumps({"name": f"bench-{case.key}", "stages": stages}))
    return path


def time_validate(root: Path, runs: int) -> tuple[float, float]:
    """Best wall time of `orchestrate validate` on a 10-stage workflow, and of importing its dependencies alone
    (pydantic, PyYAML, Jinja2, click): the floor on this machine."""
    stages = [{"id": f"s{i}", "agent": "build", "needs": [f"s{i - 1}"] if i else []} for i in range(9)]
    stages.append({"id": "audit", "agent": "auditor", "needs": ["s8"]})
    path = root / "workflows" / "ten.yaml"
    path.write_text(json.dumps({"name": "ten", "stages": stages}))
    command = [sys.executable, "-m", "orchestrator", "validate", str(path)]

    def best(cmd: list[str]) -> float:
        out = float("inf")
        for _ in range(runs):
            start = time.perf_counter()
            subprocess.run(cmd, check=True, capture_output=True)
            out = min(out, time.perf_counter() - start)
        return out

    deps = "import pydantic, yaml, jinja2.sandbox, click"
    return best(command), best([sys.executable, "-c", deps])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3, help="runs per case (the best is reported)")
    parser.add_argument("--only", default="", help="comma-separated case keys, e.g. a,c")
    parser.add_argument("--dir", type=Path, help="where the projects go (default: the system's temp folder)")
    args = parser.parse_args()
    chosen = {k for k in args.only.split(",") if k}
    print(f"python {sys.version.split()[0]}; best of {args.runs}; orchestrate timed until its state is on disk")
    print(
        f"{'':4}{'case':<45}{'stages':>7}{'critical':>10}{'orchestrate':>13}{'per stage':>11}{'ratio':>7}"
        f"{'asyncio':>10}{'LangGraph':>11}{'per stage':>11}{'ratio':>7}   target"
    )
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        root = Path(tmp)
        (root / "workflows").mkdir()
        per_file = disk_cost(root / "disk")
        print(f"disk: a stage's output file (a small new file written atomically) takes {per_file * 1e6:.0f} us here")
        for case in cases():
            if chosen and case.key not in chosen:
                continue
            path = write_workflow(root, case)
            needs = with_audit(case.needs)
            latency = {**case.latency, "audit": 0.0}
            # Model time: each stage's offline reply takes its latency.
            replies = root / f"replies-{case.key}.json"
            replies.write_text(json.dumps({sid: {"latency": t} for sid, t in latency.items() if t}))
            best = float("inf")
            for run in range(args.runs):
                # A new task each time: the first run of a task, every output a new file.
                request = RunRequest(
                    task=f"bench-{case.key}-{run}", offline=True, responses_file=replies, max_parallel=MAX_PARALLEL
                )
                prepared = prepare_workflow(path, request)
                start = time.perf_counter()
                outcome = asyncio.run(run_workflow_async(prepared))
                best = min(best, time.perf_counter() - start)
                assert outcome.status == "succeeded", outcome.status
            plain = min(asyncio.run(plain_asyncio(needs, latency)) for _ in range(args.runs))
            graph = langgraph_runner(needs, latency)
            lang = min(graph() for _ in range(args.runs)) if graph is not None else None
            stages = len(needs)
            assert stages == len(prepared.compiled.plan.order)
            critical = critical_path(needs, latency)

            print(
                f"({case.key}) {case.title:<45}{stages:>7}{critical * 1000:>8.0f}ms{cells(best, critical, stages)}"
                f"{plain * 1000:>8.0f}ms{cells(lang, critical, stages)}   {case.target(best, critical, stages)}"
            )
        if not chosen or "v" in chosen:
            validate, bare = time_validate(root, max(args.runs, 5))
            verdict = "ok" if validate <= 0.3 else "MISSED"
            print(
                f"(v) orchestrate validate, 10 stages: {validate * 1000:.0f} ms (importing its dependencies alone: "
                f"{bare * 1000:.0f} ms)   <= 300 ms: {verdict}"
            )
    try:
        import langgraph  # noqa: F401
    except ImportError:
        print('LangGraph is not installed: pip install -e ".[bench]" to compare with it')


if __name__ == "__main__":
    main()
