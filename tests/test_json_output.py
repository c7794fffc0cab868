"""Every command that reports can say it as JSON, and the command answers to its own name as a module."""

from __future__ import annotations

import json
import subprocess
import sys

from .conftest import FEATURE, CliRunner, TempProject

GATED = FEATURE.replace(
    "  - id: backend\n    agent: build\n", "  - id: backend\n    agent: build\n    approval: true\n"
)
RUN = ("run", "workflows/feature.yaml", "--task", "t", "--param", "goal=x", "--offline")


def test_explain_approve_and_reject_print_json(project: TempProject, cli: CliRunner) -> None:
    project.workflow(GATED)
    assert cli(*RUN, cwd=project.root).code == 3  # waits at the backend gate
    explained = json.loads(cli("explain", "t", "backend", "--json", cwd=project.root).out)
    assert explained["stage"] == "backend" and explained["state"]["status"] == "waiting_approval"
    assert any("orchestrate approve t backend" in line for line in explained["explanation"])
    assert [e["event"] for e in explained["events"]][-1] == "approval_requested"
    decided = json.loads(cli("approve", "t", "backend", "--note", "fine", "--json", cwd=project.root).out)
    assert decided == {
        "task": "t",
        "stage": "backend",
        "decision": "approved",
        "note": "fine",
        "by": decided["by"],
        "file": "docs/ai/t/approvals/backend.json",
        "run_status": "waiting_approval",
    }
    assert cli(*RUN, cwd=project.root).code == 0


def test_the_state_commands_that_record_print_json(project: TempProject, cli: CliRunner) -> None:
    project.workflow(FEATURE)
    root = project.root
    assert cli("state", "begin", "workflows/feature.yaml", "--task", "t", "--param", "goal=x", cwd=root).code == 0
    assert cli("state", "start", "t", "plan", cwd=root).code == 0
    out = root.parent / "plan.md"
    out.write_text("the plan\n")
    done = json.loads(cli("state", "done", "t", "plan", "--output", str(out), "--json", cwd=root).out)
    assert [r["stage"] for r in done["ready"]] == ["backend", "frontend"]
    assert cli("state", "start", "t", "backend", cwd=root).code == 0
    failed = json.loads(cli("state", "fail", "t", "backend", "--reason", "no disk", "--json", cwd=root).out)
    assert failed["failed"] == ["backend"]
    noted = json.loads(cli("state", "note", "t", "backend", "retry tomorrow", "--json", cwd=root).out)
    assert noted["note"] == "retry tomorrow" and noted["stage"] == "backend"


def test_python_m_orchestrate_is_the_command(project: TempProject) -> None:
    project.workflow(FEATURE)
    result = subprocess.run(
        [sys.executable, "-m", "orchestrate", "validate", "workflows/feature.yaml"],
        cwd=project.root,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "feature" in result.stdout + result.stderr
