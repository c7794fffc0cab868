"""Wall time and peak memory of `orchestrate validate` and `orchestrate compile` on 10, 200 and 2,000 stages.

Each measurement runs the real command in a fresh interpreter (the way a user or a
pre-commit hook runs it) and reads its peak RSS from the kernel (wait4). The bare
interpreter start-up, measured in the same run, is printed beside it as the baseline.

    python benchmarks/bench_compile.py              # 5 runs per figure, median reported
    python benchmarks/bench_compile.py --runs 9 --sizes 10,2000

Targets (from the compile issue): 10 stages <= 0.3 s; 2,000 stages <= 2 s and <= 200 MB.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

AGENTS = ["plan", "build", "frontend", "backend", "quick-edits"]
TARGETS = {10: (0.3, None), 2000: (2.0, 200.0)}
# What validate cannot avoid importing; the second baseline shows how much of a small run is just this.
LIBRARIES = ("networkx", "pydantic", "jinja2.sandbox", "yaml", "click")


def make_workflow(n: int) -> str:
    """A layered DAG: one plan stage, then layers of up to 8 stages, each needing two of the layer before."""
    n += 1  # the audit stage the compiler adds
    lines = [
        f"name: bench{n}",
        "description: Generated benchmark workflow.",
        "params:",
        "  goal: {description: What to build, required: true}",
        "stages:",
        '  - {id: s0, agent: plan, prompt: "Plan {{ params.goal }}"}',
    ]
    previous = ["s0"]
    index = 1
    while index < n - 1:
        layer = []
        for _ in range(min(8, n - 1 - index)):
            sid = f"s{index}"
            needs = sorted({previous[index % len(previous)], previous[(index * 7) % len(previous)]})
            agent = AGENTS[1 + index % (len(AGENTS) - 1)]
            lines.append(
                f"  - {{id: {sid}, agent: {agent}, needs: [{', '.join(needs)}], "
                f'prompt: "Step {index}: {{{{ stages.{needs[0]}.output }}}}"}}'
            )
            layer.append(sid)
            index += 1
        previous = layer
    # No audit stage: the compiler adds one after every sink, which is part of what is measured.
    return "\n".join(lines) + "\n"


def measure(argv: list[str], cwd: Path) -> tuple[float, float]:
    """Wall seconds and peak RSS (MB) of one run of ``argv``."""
    start = time.perf_counter()
    proc = subprocess.Popen(argv, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    stderr = proc.stderr.read().decode() if proc.stderr else ""
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed ({proc.returncode}):\n{stderr}")
    return wall, usage.ru_maxrss / 1024


def median_of(runs: int, argv: list[str], cwd: Path) -> tuple[float, float]:
    results = [measure(argv, cwd) for _ in range(runs)]
    return statistics.median(r[0] for r in results), max(r[1] for r in results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5, help="runs per figure (median wall, max memory)")
    parser.add_argument("--sizes", default="10,200,2000", help="comma-separated stage counts")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    orchestrate = [sys.executable, "-m", "orchestrator"]

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "workflows").mkdir()
        base_wall, base_mem = median_of(args.runs, [sys.executable, "-c", "pass"], root)
        libs_wall, libs_mem = median_of(args.runs, [sys.executable, "-c", f"import {', '.join(LIBRARIES)}"], root)
        print(f"python {sys.version.split()[0]} on {os.cpu_count()} cores; median of {args.runs} runs")
        print(f"{'baseline: bare interpreter start-up':<44}{base_wall:8.3f} s {base_mem:8.1f} MB")
        print(f"{'baseline: importing the libraries it needs':<44}{libs_wall:8.3f} s {libs_mem:8.1f} MB")
        print(f"{'command':<44}{'wall':>10} {'peak RSS':>11}   x start-up   target")
        for n in sizes:
            path = root / "workflows" / f"bench{n}.yaml"
            path.write_text(make_workflow(n))
            for command in ("validate", "compile"):
                argv = [*orchestrate, command, str(path.relative_to(root))]
                if command == "compile":
                    argv += ["--out", f"out{n}"]
                wall, mem = median_of(args.runs, argv, root)
                target = TARGETS.get(n)
                verdict = ""
                if target:
                    ok = wall <= target[0] and (target[1] is None or mem <= target[1])
                    limit = f"<= {target[0]} s" + (f", <= {target[1]:.0f} MB" if target[1] else "")
                    verdict = f"{limit}: {'ok' if ok else 'MISSED'}"
                label = f"{command} {n:>5} stages"
                print(f"{label:<44}{wall:8.3f} s {mem:8.1f} MB {wall / base_wall:10.1f}x   {verdict}")


if __name__ == "__main__":
    main()
