"""The examples and this repository's own workflows: they validate, compile and run; output/ is current."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import REPO, CliRunner
from .fake_anthropic import FakeAnthropic

EXAMPLES = sorted((REPO / "examples").glob("*/workflows/*.yaml"))
OWN = sorted((REPO / "workflows").glob("*.yaml"))


def test_there_are_examples_and_own_workflows() -> None:
    assert len(EXAMPLES) >= 2
    assert {p.stem for p in OWN} >= {"feature", "bugfix"}


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.parent.parent.name)
def test_examples_validate_and_compile(path: Path, cli: CliRunner, tmp_path: Path) -> None:
    assert cli("validate", str(path), cwd=REPO).code == 0
    out = tmp_path / "out"
    assert cli("compile", str(path), "--out", str(out), cwd=REPO).code == 0
    assert {p.parent.parent.name for p in out.rglob("*.md")} == {"opencode", "claude"}


@pytest.mark.parametrize("path", OWN, ids=lambda p: p.stem)
def test_committed_output_is_the_compiled_result_of_our_workflows(path: Path, cli: CliRunner) -> None:
    result = cli("compile", f"workflows/{path.name}", "--check", cwd=REPO)
    assert result.code == 0, result.out + result.err


def _copy_example(name: str, tmp_path: Path) -> Path:
    root = tmp_path / name
    shutil.copytree(REPO / "examples" / name, root, ignore=shutil.ignore_patterns("docs", "__pycache__", ".pytest_*"))
    return root


def _python_first_on_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """Shell stages and the bash tool run `python`: make it this interpreter, which has pytest."""
    monkeypatch.setenv("PATH", os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))


def test_the_fix_example_is_fixed_by_a_scripted_model_using_tools(
    cli: CliRunner, api: FakeAnthropic, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = _copy_example("fix-a-bug", tmp_path)
    _python_first_on_path(monkeypatch)
    before = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"], cwd=root, text=True, capture_output=True
    )
    assert before.returncode == 1 and "2 failed" in before.stdout
    api.script(
        "stage `plan` of workflow",
        [
            {"name": "search", "input": {"query": "def word_count", "pattern": "**/*.py"}},
            {"name": "read", "input": {"path": "textstats/__init__.py"}},
            "Cause: textstats/__init__.py line 6 splits on single spaces. Change it to text.split().",
        ],
    )
    api.script(
        "stage `fix` of workflow",
        [
            {"name": "read", "input": {"path": "textstats/__init__.py", "view_range": [4, 6]}},
            {
                "name": "edit",
                "input": {
                    "command": "str_replace",
                    "path": "textstats/__init__.py",
                    "old_str": 'return len(text.split(" "))',
                    "new_str": "return len(text.split())",
                },
            },
            {"name": "bash", "input": {"command": "python -m pytest -q -p no:cacheprovider"}},
            "word_count now splits on any whitespace; the tests pass.",
        ],
    )
    result = cli("run", "workflows/fix.yaml", "--task", "fix", cwd=root)
    assert result.code == 0, result.out + result.err
    assert "return len(text.split())" in (root / "textstats/__init__.py").read_text()
    state = root / "docs/ai/fix"
    test_output = (state / "stages/test.md").read_text()
    assert "$ python -m pytest -q" in test_output and "exit code 0" in test_output and "3 passed" in test_output
    # The model saw what its tools did: the numbered lines it read, then the test run.
    fix_requests = [r for r in api.messages() if "stage `fix` of workflow" in r.text()]
    results = [str(r.body["messages"][-1]["content"]) for r in fix_requests[1:]]
    assert '6\\t    return len(text.split(" "))' in results[0]
    assert "3 passed" in results[2] and "exit code: 0" in results[2]
    transcript = [json.loads(line) for line in (state / "stages/fix.transcript.jsonl").read_text().splitlines()]
    assert [t["role"] for t in transcript] == ["user", *(["assistant", "user"] * 3), "assistant"]
    audit = next(r for r in api.messages() if "stage `audit` of workflow" in r.text())
    assert "3 passed" in audit.text()  # the auditor reads the test stage's output


def test_the_decompose_example_fans_out_offline_and_keeps_every_instance(cli: CliRunner, tmp_path: Path) -> None:
    root = _copy_example("decompose", tmp_path)
    args = ("run", "workflows/decompose.yaml", "--task", "t", "--param", "goal=a login page", "--offline")
    first = cli(*args, cwd=root)
    assert first.code == 0, first.out + first.err
    assert "build: 3 items → build[api], build[form], build[tests]" in first.out
    assert "docs: skipped: its condition is false: if: params.docs" in first.out
    state = json.loads((root / "docs/ai/t/state.json").read_text())
    assert state["stages"]["build"]["instances"] == ["build[api]", "build[form]", "build[tests]"]
    assert state["stages"]["build[form]"]["item"]["title"] == "Add the login form"
    plan = json.loads((root / "docs/ai/t/stages/plan.json").read_text())
    assert [t["id"] for t in plan["tasks"]] == ["api", "form", "tests"]
    again = cli(*args, cwd=root)
    assert again.code == 0
    assert "build[api]: kept" in again.out and "build[tests]: kept" in again.out and "started" not in again.out
    with_docs = cli(*args, "--param", "docs=true", cwd=root)
    assert with_docs.code == 0
    assert "docs: started" in with_docs.out and "docs: skipped" not in with_docs.out
