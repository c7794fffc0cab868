"""The examples and this repository's own workflows: they validate, compile, and output/ is current."""

from __future__ import annotations

from pathlib import Path

import pytest

from .conftest import REPO, CliRunner

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
