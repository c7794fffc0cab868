"""A new user's first hour, as the README tells it: from an empty git repository to a run driven by hand.

Every step is the installed command in its own process, as a user types it:
init → watch while a template is edited → compile --check → commit → run
--offline → the same workflow driven through ``orchestrate state``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

PASS = '```json\n{"verdict": "pass", "summary": "Checked.", "findings": [], "checklist": []}\n```\n'


def orchestrate(root: Path, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "orchestrator", *args],
        cwd=root,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
    )


def git(root: Path, *args: str) -> str:
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "New User",
        "GIT_AUTHOR_EMAIL": "user@example.com",
        "GIT_COMMITTER_NAME": "New User",
        "GIT_COMMITTER_EMAIL": "user@example.com",
    }
    return subprocess.run(["git", *args], cwd=root, env=env, capture_output=True, text=True, check=True).stdout


def wait_for(condition: Callable[[], bool], what: str, seconds: float = 20.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.skipif(shutil.which("git") is None, reason="the walkthrough starts from a git repository")
def test_a_new_user_from_an_empty_repository_to_a_run_driven_by_hand(tmp_path: Path) -> None:
    root = tmp_path / "shop"
    root.mkdir()
    git(root, "init", "-q")

    # 1. init: the starter workflow and the default templates; it prints the next three commands.
    init = orchestrate(root, "init")
    assert init.returncode == 0, init.stderr
    assert (root / "workflows/feature.yaml").is_file()
    assert (root / "content/instructions/plan.md").is_file()
    for command in (
        "orchestrate validate workflows/feature.yaml",
        "orchestrate compile workflows/feature.yaml",
        "orchestrate run workflows/feature.yaml",
    ):
        assert command in init.stdout

    # 2. watch: it compiles, then recompiles when a template is saved; Ctrl-C ends it cleanly.
    watch = subprocess.Popen(
        [sys.executable, "-m", "orchestrator", "watch"],
        cwd=root,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        plan_agent = root / "output/claude/agents/feature-plan.md"
        wait_for(plan_agent.is_file, "the first compile")
        time.sleep(0.5)  # let the watcher settle on its folders before the edit
        template = root / "content/instructions/plan.md"
        template.write_text(template.read_text() + "\nAlways name the riskiest step first.\n")
        wait_for(lambda: "riskiest step" in plan_agent.read_text(), "the recompile after a template edit")
    finally:
        watch.send_signal(signal.SIGINT)
        out, err = watch.communicate(timeout=20)
    assert watch.returncode == 0, err
    assert "Traceback" not in err
    assert "content/instructions/plan.md" in out + err

    # 3. compile --check agrees, and everything is committed.
    check = orchestrate(root, "compile", "--check")
    assert check.returncode == 0, check.stdout + check.stderr
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "Add the feature workflow and its agents")
    assert git(root, "status", "--porcelain") == ""

    # 4. An offline run: no model, no key, every stage and the audit recorded.
    run = orchestrate(
        root, "run", "workflows/feature.yaml", "--task", "first-try", "--param", "goal=Add a login page", "--offline"
    )
    assert run.returncode == 0, run.stderr
    assert json.loads((root / "docs/ai/first-try/state.json").read_text())["status"] == "succeeded"

    # 5. The same workflow driven stage by stage, as the compiled coordinator does inside a tool.
    begin = orchestrate(
        root, "state", "begin", "workflows/feature.yaml", "--task", "by-hand", "--param", "goal=Add a login page"
    )
    assert begin.returncode == 0, begin.stderr
    audit = json.loads((root / "docs/ai/by-hand/state.json").read_text())["audit_stage"]
    finished: list[str] = []
    for _ in range(20):
        step = json.loads(orchestrate(root, "state", "next", "by-hand", "--json").stdout)
        if not step["ready"]:
            break
        for entry in step["ready"]:
            stage = entry["stage"]
            started = orchestrate(root, "state", "start", "by-hand", stage)
            assert started.returncode == 0, started.stderr
            assert "Add a login page" in started.stdout or stage != "plan"
            reply = f"Done: {stage}.\n" + (PASS if stage == audit else "")
            ended = orchestrate(root, "state", "done", "by-hand", stage, "--output", "-", stdin=reply)
            assert ended.returncode == 0, ended.stderr
            finished.append(stage)
    saved = json.loads((root / "docs/ai/by-hand/state.json").read_text())
    assert saved["status"] == "succeeded" and saved["audit"]["verdict"] == "pass"
    assert finished[-1] == audit and set(finished) == set(saved["stages"])
    status = orchestrate(root, "status", "by-hand")
    assert status.returncode == 0 and "succeeded" in status.stdout
