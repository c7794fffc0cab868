"""The command line as a user meets it: output, exit codes, errors on stderr, JSON for scripts."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

from .conftest import FEATURE, REPO, CliRunner, TempProject


def test_validate_prints_waves_critical_path_and_agents(project: TempProject, cli: CliRunner) -> None:
    project.workflow(FEATURE)
    result = cli("validate", "workflows/feature.yaml", cwd=project.root)
    assert result.code == 0, result.err
    assert result.out.splitlines()[:7] == [
        "workflows/feature.yaml: workflow 'feature' is valid (5 stages, 4 agents)",
        "Waves (stages in one wave can run in parallel):",
        "  1. plan",
        "  2. backend, frontend",
        "  3. integrate",
        "  4. audit",
        "Critical path: plan → backend → integrate → audit (4 stages)",
    ]
    assert "  plan           feature-plan  (claude-opus-5-5)" in result.out
    assert "  coordinator    feature-coordinator  (claude-sonnet-5-5)" in result.out
    assert result.err == ""


def test_validate_json_is_the_same_plan_for_scripts(project: TempProject, cli: CliRunner) -> None:
    project.workflow(FEATURE.replace("  - id: audit\n    agent: auditor\n    needs: [integrate]\n", ""))
    result = cli("validate", "--json", "workflows/feature.yaml", cwd=project.root)
    assert result.code == 0
    data = json.loads(result.out)
    assert data["valid"] is True
    assert data["waves"] == [["plan"], ["backend", "frontend"], ["integrate"], ["audit"]]
    assert data["critical_path"] == ["plan", "backend", "integrate", "audit"]
    assert data["notices"] == ["no audit stage declared: added 'audit' (agent auditor) after integrate"]
    assert {a["config_name"] for a in data["agents"]} == {
        "feature-plan",
        "feature-build",
        "feature-frontend",
        "feature-auditor",
        "feature-coordinator",
    }


def test_validate_json_reports_errors_as_data(project: TempProject, cli: CliRunner) -> None:
    project.workflow("name: feature\nstages:\n  - {id: a, agent: plan, needs: [b]}\n")
    result = cli("validate", "--json", "workflows/feature.yaml", cwd=project.root)
    assert result.code == 2
    assert json.loads(result.out) == {
        "valid": False,
        "errors": [
            {
                "file": "workflows/feature.yaml",
                "line": 3,
                "column": 34,
                "message": "stage 'a' needs unknown stage 'b'",
                "hint": "known stages: a",
            }
        ],
    }


def test_user_errors_are_one_message_exit_2_and_no_traceback(project: TempProject, cli: CliRunner) -> None:
    project.workflow("name: feature\nstages:\n  - {id: a, agent: plan, needs: [a]}\n")
    result = cli("validate", "workflows/feature.yaml", cwd=project.root)
    assert result.code == 2
    assert result.out == ""
    assert result.err.splitlines() == [
        "Error: workflows/feature.yaml:3:34: cycle in needs: a → a",
        "  hint: a stage can't wait, directly or indirectly, for itself; remove one of these needs",
    ]


def test_errors_name_files_relative_to_where_the_user_is(project: TempProject, cli: CliRunner) -> None:
    project.workflow("name: feature\nstages: [{agent: plan, nedds: []}]\n")
    result = cli("validate", "proj/workflows/feature.yaml", cwd=project.root.parent)
    assert result.err.startswith("Error: proj/workflows/feature.yaml:2:24: unknown key 'nedds'")


def test_debug_shows_the_traceback(project: TempProject, cli: CliRunner) -> None:
    project.workflow("name: feature\nstages: []\n")
    result = cli("--debug", "validate", "workflows/feature.yaml", cwd=project.root)
    assert result.code == 2
    assert "Traceback (most recent call last)" in result.err
    assert "Error: workflows/feature.yaml:2:1: workflow has no stages" in result.err


def test_missing_workflow_file_and_usage_errors_exit_2(project: TempProject, cli: CliRunner) -> None:
    result = cli("validate", "workflows/nope.yaml", cwd=project.root)
    assert result.code == 2
    assert result.err.startswith("Error: workflow file workflows/nope.yaml not found")
    assert cli("compile", cwd=project.root).code == 2
    assert cli("graph", "--format", "png", "x.yaml", cwd=project.root).code == 2
    assert cli("frobnicate", cwd=project.root).code == 2


def test_graph_mermaid_and_text(project: TempProject, cli: CliRunner) -> None:
    project.workflow(FEATURE)
    mermaid = cli("graph", "workflows/feature.yaml", "--format", "mermaid", cwd=project.root)
    assert mermaid.code == 0
    assert mermaid.out.startswith("flowchart TD\n")
    assert mermaid.out.count("-->") == 5
    text = cli("graph", "workflows/feature.yaml", "--format", "text", cwd=project.root)
    assert text.out.splitlines() == [
        "plan (plan)",
        "backend (build)  ← plan",
        "frontend (frontend)  ← plan",
        "integrate (build)  ← backend, frontend",
        "audit (auditor)  ← integrate",
    ]


def test_schema_is_valid_json_schema_with_a_description_for_every_field(cli: CliRunner) -> None:
    result = cli("schema")
    assert result.code == 0
    schema = json.loads(result.out)
    jsonschema.Draft202012Validator.check_schema(schema)
    missing = [
        f"{name}.{field}"
        for name, definition in schema["$defs"].items()
        for field, spec in definition.get("properties", {}).items()
        if not spec.get("description")
    ]
    assert missing == []


def test_schema_accepts_both_forms_and_rejects_typos(cli: CliRunner) -> None:
    from .test_loader import DESIGN_NOTE_PIPELINE

    validator = jsonschema.Draft202012Validator(json.loads(cli("schema").out))
    assert list(validator.iter_errors(yaml.safe_load(FEATURE))) == []
    assert list(validator.iter_errors(yaml.safe_load(DESIGN_NOTE_PIPELINE))) == []
    for path in sorted((REPO / "workflows").glob("*.yaml")):
        assert list(validator.iter_errors(yaml.safe_load(path.read_text()))) == [], path
    typo = yaml.safe_load(FEATURE.replace("needs: [plan]", "neds: [plan]", 1))
    assert list(validator.iter_errors(typo)) != []


def test_validate_imports_neither_anthropic_nor_the_price_tables(project: TempProject) -> None:
    project.workflow(FEATURE)
    code = (
        "import sys\n"
        "from orchestrator.cli import main\n"
        "try:\n    main(['validate', 'workflows/feature.yaml'])\n"
        "except SystemExit as exc:\n    assert exc.code == 0, exc.code\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('anthropic', 'rich', 'httpx', 'genai_prices'))\n"
        "print(heavy)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=project.root, capture_output=True, text=True, timeout=60, check=True
    )
    assert proc.stdout.strip().splitlines()[-1] == "[]"


def test_console_script_and_module_entry_points(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "orchestrator", "--version"], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0
    assert proc.stdout.startswith("orchestrate, version ")


@pytest.mark.parametrize("args", [["schema"], ["validate", "--help"]])
def test_closed_stdout_is_not_a_traceback(args: list[str]) -> None:
    proc = subprocess.run(
        f"{sys.executable} -m orchestrator {' '.join(args)} | head -c 10",
        shell=True,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "Traceback" not in proc.stderr


def test_a_reader_that_goes_away_does_not_stop_the_run(project: TempProject) -> None:
    """`orchestrate run ... | head -1`: the run goes on to the end, with its exit code and no traceback."""
    project.workflow(FEATURE)
    command = [sys.executable, "-m", "orchestrator", "run", "workflows/feature.yaml", "--task", "t"]
    proc = subprocess.Popen(
        [*command, "--param", "goal=x", "--offline", "--latency", "0.2"],
        cwd=project.root,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stderr is not None
    assert "run " in proc.stdout.readline()
    proc.stdout.close()  # the reader has gone, like `head -1`
    assert proc.wait(timeout=60) == 0
    assert "Traceback" not in proc.stderr.read()
    saved = json.loads((project.root / "docs/ai/t/state.json").read_text())
    assert saved["status"] == "succeeded"
