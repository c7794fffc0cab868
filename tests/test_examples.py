"""The examples and this repository's own workflows: they validate, compile and run as their READMEs say.

Every folder in ``examples/`` with a ``workflows/`` folder is an example. Its README's code blocks
are its walkthrough: each ``orchestrate`` line runs (in a copy of the example, never in the
repository) and must end with the exit code its ``# exit N`` comment promises, 0 without one.
Blocks that start a real run (a ``run`` without ``--offline``) need a model, so they are only
checked: the files they name must exist.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from .conftest import REPO, CliRunner, event_lines
from .fake_anthropic import FakeAnthropic

EXAMPLES_DIR = REPO / "examples"
FOLDERS = sorted(p for p in EXAMPLES_DIR.iterdir() if p.is_dir() and not p.name.startswith((".", "_")))
EXAMPLES = [p for p in FOLDERS if (p / "workflows").is_dir()]
OWN = sorted((REPO / "workflows").glob("*.yaml"))
PYTEST = "python -m pytest -q -p no:cacheprovider"


@dataclass(frozen=True)
class ReadmeCommand:
    line: str
    folder: str  # where it runs, relative to the repository root, after the README's `cd` lines
    args: tuple[str, ...]  # the words after `orchestrate`
    code: int  # the exit code its `# exit N` comment promises
    real: bool  # in a code block that starts a real run


def readme_commands(readme: Path) -> list[ReadmeCommand]:
    """The ``orchestrate`` lines of a README's code blocks, in order; ``cd`` lines carry over between blocks."""
    folder = "."
    commands: list[ReadmeCommand] = []
    for block in re.findall(r"^```[^\n]*\n(.*?)^```", readme.read_text(encoding="utf-8"), re.S | re.M):
        lines = [line.strip() for line in block.splitlines()]
        found: list[tuple[str, str, tuple[str, ...], int]] = []
        for line in lines:
            if line.startswith("cd "):
                folder = os.path.normpath(os.path.join(folder, shlex.split(line, comments=True)[1]))
            elif line.startswith("orchestrate "):
                promised = re.search(r"#\s*exit (\d+)", line)
                words = tuple(shlex.split(line, comments=True)[1:])
                found.append((line, folder, words, int(promised.group(1)) if promised else 0))
        real = any(words[0] == "run" and "--offline" not in words for _, _, words, _ in found)
        commands += [ReadmeCommand(line, where, words, code, real) for line, where, words, code in found]
    return commands


def _named_files(command: ReadmeCommand) -> list[str]:
    return [word for word in command.args if word.endswith((".yaml", ".yml", ".json"))]


def _option(args: tuple[str, ...], name: str) -> str:
    return args[args.index(name) + 1]


def _python_first_on_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """Shell stages and the bash tool run `python`: make it this interpreter, which has pytest."""
    monkeypatch.setenv("PATH", os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))


def _copy_example(name: str, tmp_path: Path) -> Path:
    """A copy at ``tmp_path/examples/<name>``, so ``tmp_path`` stands in for the repository root; without
    what trying the example may have left in the repository (run state, recordings, caches)."""
    source = EXAMPLES_DIR / name

    def left_behind(folder: str, names: list[str]) -> set[str]:
        skip = {n for n in names if n in ("__pycache__", ".pytest_cache")}
        if Path(folder) == source:
            skip |= {"recording"} & set(names)
        if Path(folder) == source / "docs":
            skip |= {"ai"} & set(names)
        return skip

    root = tmp_path / "examples" / name
    shutil.copytree(source, root, ignore=left_behind)
    return root


def test_there_are_examples_and_own_workflows() -> None:
    assert {p.name for p in EXAMPLES} >= {"feature", "bugfix", "docs-review", "decompose", "pipeline"}
    assert {p.stem for p in OWN} >= {"feature", "bugfix"}


@pytest.mark.parametrize("folder", FOLDERS, ids=lambda p: p.name)
def test_every_example_has_a_readme_whose_commands_name_files_that_exist(folder: Path) -> None:
    readme = folder / "README.md"
    assert readme.is_file(), f"examples/{folder.name} has no README.md saying what it shows and how to run it"
    commands = readme_commands(readme)
    verbs = [(c.args[0], "--offline" in c.args, "--out" in c.args) for c in commands]
    assert ("validate", False, False) in verbs, f"{readme}: no `orchestrate validate` line"
    assert any(verb == "compile" for verb, _, _ in verbs), f"{readme}: no `orchestrate compile` line"
    assert ("run", True, False) in verbs, f"{readme}: no offline run (`orchestrate run ... --offline`)"
    assert ("run", False, False) in verbs, f"{readme}: no real run (`orchestrate run ...` without --offline)"
    for command in commands:
        if command.args[0] == "compile":
            assert "--out" in command.args, f"{readme}: `{command.line}` would write into the example's output/"
        for name in _named_files(command):
            assert (REPO / command.folder / name).is_file(), f"{readme}: `{command.line}` names a missing {name}"


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_examples_validate_and_compile(example: Path, cli: CliRunner, tmp_path: Path) -> None:
    workflows = sorted((example / "workflows").glob("*.yaml"))
    assert workflows
    for path in workflows:
        assert cli("validate", str(path), cwd=REPO).code == 0
        out = tmp_path / path.stem
        result = cli("compile", str(path), "--out", str(out), cwd=REPO)
        assert result.code == 0, result.out + result.err
        written = {p.relative_to(out).parts[:2] for p in out.rglob("*.md")}
        assert written == {("opencode", "agents"), ("claude", "agents")}
        assert len(list(out.glob("claude/agents/*-coordinator.md"))) == 1


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_the_readme_walkthrough_runs_offline_with_the_exit_codes_it_promises(
    example: Path, cli: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _copy_example(example.name, tmp_path)
    _python_first_on_path(monkeypatch)
    ran_offline = 0
    for command in readme_commands(example / "README.md"):
        if command.real:
            continue
        assert command.folder == f"examples/{example.name}" or command.args[0] in ("validate", "graph", "compile"), (
            f"`{command.line}` runs from {command.folder}: run examples from their folder (cd examples/{example.name})"
        )
        args = list(command.args)
        if "--out" in args:
            args[args.index("--out") + 1] = str(tmp_path / "out")
        result = cli(*args, cwd=tmp_path / command.folder)
        assert result.code == command.code, f"`{command.line}`\n{result.out}{result.err}"
        if args[0] == "run":
            ran_offline += 1
            project = (tmp_path / command.folder / args[1]).parent.parent
            state = project / "docs/ai" / _option(command.args, "--task")
            assert (state / "workflow-state.md").is_file() and (state / "state.json").is_file()
    assert ran_offline
    assert not list((tmp_path / "examples" / example.name).rglob(".pytest_cache"))


def test_the_feature_example_runs_backend_and_frontend_side_by_side_offline(cli: CliRunner, tmp_path: Path) -> None:
    root = _copy_example("feature", tmp_path)
    result = cli("run", "workflows/feature.yaml", "--task", "t", "--param", "goal=a login page", "--offline", cwd=root)
    assert result.code == 0, result.out + result.err
    lines = event_lines(result.out)
    started = [line.split(":")[0] for line in lines if ": started" in line]
    assert started == ["plan", "backend", "frontend", "integrate", "audit"]
    # Both branches start before either finishes: they run at the same time.
    backend_done = lines.index(next(line for line in lines if line.startswith("backend: succeeded")))
    assert lines.index(next(line for line in lines if line.startswith("frontend: started"))) < backend_done
    assert {p.name for p in (root / "docs/ai/t/stages").glob("*.md")} == {
        f"{s}.md" for s in ("plan", "backend", "frontend", "integrate", "audit")
    }


def _pytest_in(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *PYTEST.split()[1:]], cwd=root, text=True, capture_output=True)


def test_the_bugfix_example_offline_stops_at_red_because_no_test_reproduces_the_bug(
    cli: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = _copy_example("bugfix", tmp_path)
    _python_first_on_path(monkeypatch)
    sources = {p: p.read_text() for p in (*root.glob("tests/*.py"), *root.glob("textstats/*.py"))}
    result = cli("run", "workflows/bugfix.yaml", "--task", "word-count", "--offline", cwd=root)
    assert result.code == 1, result.out + result.err
    lines = event_lines(result.out)
    assert "red: attempt 1 failed: exit code 1" in "\n".join(lines)
    assert "3 passed" in result.out and "red: pytest exited 0; before the fix a test must fail (exit 1)" in result.out
    for skipped in ("fix: skipped: needs red, which failed", "suite: skipped", "audit: skipped"):
        assert any(line.startswith(skipped) for line in lines), skipped
    state = json.loads((root / "docs/ai/word-count/state.json").read_text())
    assert {sid: s["status"] for sid, s in state["stages"].items()} == {
        "plan": "succeeded",
        "reproduce": "succeeded",
        "red": "failed",
        "fix": "skipped",
        "suite": "skipped",
        "audit": "skipped",
    }
    assert {p: p.read_text() for p in sources} == sources and not list(root.glob("tests/test_*whitespace*"))


def test_the_bugfix_example_says_so_when_pytest_is_missing_rather_than_calling_the_bug_reproduced(
    cli: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`python -m pytest` without pytest exits 1, as failing tests do: red must not take that for red."""
    root = _copy_example("bugfix", tmp_path)
    shims = tmp_path / "bin"
    shims.mkdir()
    (shims / "python").write_text(f'#!/bin/sh\nexec {sys.executable} -S "$@"\n')  # no site-packages: no pytest
    (shims / "python").chmod(0o755)
    monkeypatch.setenv("PATH", f"{shims}{os.pathsep}{os.environ.get('PATH', '')}")
    result = cli("run", "workflows/bugfix.yaml", "--task", "word-count", "--offline", cwd=root)
    assert result.code == 1
    assert "red: pytest is not installed for this python: pip install pytest" in result.out
    assert json.loads((root / "docs/ai/word-count/state.json").read_text())["stages"]["red"]["status"] == "failed"


NEW_TEST = """from textstats import word_count


def test_word_count_treats_a_run_of_whitespace_as_one_separator() -> None:
    assert word_count("two  words") == 2
    assert word_count("  padded\\tand\\nsplit  ") == 3


def test_word_count_of_nothing_is_zero() -> None:
    assert word_count("") == 0
"""


def test_the_bugfix_example_is_fixed_test_first_by_a_scripted_model_using_tools(
    cli: CliRunner, api: FakeAnthropic, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = _copy_example("bugfix", tmp_path)
    _python_first_on_path(monkeypatch)
    before = _pytest_in(root)
    assert before.returncode == 0 and "3 passed" in before.stdout  # the suite misses the bug
    api.script(
        "stage `plan` of workflow",
        [
            {"name": "search", "input": {"query": "def word_count", "pattern": "**/*.py"}},
            {"name": "read", "input": {"path": "textstats/__init__.py"}},
            "Cause: textstats/__init__.py line 6 splits on single spaces. Change it to text.split().",
        ],
    )
    api.script(
        "stage `reproduce` of workflow",
        [
            {"name": "read", "input": {"path": "tests/test_textstats.py"}},
            {"name": "edit", "input": {"command": "create", "path": "tests/test_whitespace.py", "file_text": NEW_TEST}},
            {"name": "bash", "input": {"command": PYTEST}},
            "Added tests/test_whitespace.py; both new tests fail: 2 failed, 3 passed.",
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
            {"name": "bash", "input": {"command": PYTEST}},
            "word_count now splits on any whitespace; the tests pass.",
        ],
    )
    result = cli("run", "workflows/bugfix.yaml", "--task", "fix", cwd=root)
    assert result.code == 0, result.out + result.err
    assert "return len(text.split())" in (root / "textstats/__init__.py").read_text()
    assert (root / "tests/test_whitespace.py").read_text() == NEW_TEST
    state = root / "docs/ai/fix"
    red = (state / "stages/red.md").read_text()
    assert "exit code 0" in red and "2 failed, 3 passed" in red and "red: a test fails before the fix" in red
    suite = (state / "stages/suite.md").read_text()
    assert f"$ {PYTEST}" in suite and "exit code 0" in suite and "5 passed" in suite
    # The models saw what their tools did: the failing run, the numbered lines, then the passing run.
    reproduce = [r for r in api.messages() if "stage `reproduce` of workflow" in r.text()]
    assert "2 failed, 3 passed" in str(reproduce[3].body["messages"][-1]["content"])
    fix = [r for r in api.messages() if "stage `fix` of workflow" in r.text()]
    results = [str(r.body["messages"][-1]["content"]) for r in fix[1:]]
    assert '6\\t    return len(text.split(" "))' in results[0]
    assert "5 passed" in results[2] and "exit code: 0" in results[2]
    assert "Cause: textstats/__init__.py line 6" in fix[0].text()  # the plan reaches the fix through its prompt
    transcript = [json.loads(line) for line in (state / "stages/fix.transcript.jsonl").read_text().splitlines()]
    assert [t["role"] for t in transcript] == ["user", *(["assistant", "user"] * 3), "assistant"]
    audit = next(r for r in api.messages() if "stage `audit` of workflow" in r.text())
    assert "2 failed, 3 passed" in audit.text() and "5 passed" in audit.text()  # the auditor reads red and suite


def test_the_bugfix_example_fails_a_fix_stage_that_edits_the_tests(
    cli: CliRunner, api: FakeAnthropic, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = _copy_example("bugfix", tmp_path)
    _python_first_on_path(monkeypatch)
    api.script(
        "stage `reproduce` of workflow",
        [
            {"name": "edit", "input": {"command": "create", "path": "tests/test_whitespace.py", "file_text": NEW_TEST}},
            "Added tests/test_whitespace.py.",
        ],
    )
    cheat = NEW_TEST.replace("== 2", "== 3")
    api.script(
        "stage `fix` of workflow",
        [
            {"name": "edit", "input": {"command": "create", "path": "tests/test_whitespace.py", "file_text": cheat}},
            "Done.",
        ],
    )
    result = cli("run", "workflows/bugfix.yaml", "--task", "cheat", cwd=root)
    assert result.code == 1
    assert "it changed files outside its write scope (textstats/**): tests/test_whitespace.py" in result.out
    assert any(line.startswith("suite: skipped") for line in event_lines(result.out))


def _docs_review(cli: CliRunner, root: Path, *extra: str, topic: str = "counting words") -> tuple[int, str]:
    result = cli("run", "workflows/docs-review.yaml", "--task", "usage", "--param", f"topic={topic}", *extra, cwd=root)
    return result.code, result.out + result.err


def test_the_docs_review_example_pauses_at_the_gate_and_continues_after_approval(
    cli: CliRunner, tmp_path: Path
) -> None:
    root = _copy_example("docs-review", tmp_path)
    code, out = _docs_review(cli, root, "--offline")
    assert code == 3, out
    assert "review: waiting for approval: Read guide/usage.md" in out and "orchestrate approve usage review" in out
    status = cli("status", "usage", cwd=root)
    assert status.code == 0
    assert re.search(r"review\s+waiting approval", status.out) and re.search(r"publish\s+pending", status.out)
    note = "Add an example with tabs and newlines"
    assert cli("approve", "usage", "review", "--note", note, cwd=root).code == 0
    decision = json.loads((root / "docs/ai/usage/approvals/review.json").read_text())
    assert decision["decision"] == "approved" and decision["note"] == note
    code, out = _docs_review(cli, root, "--offline")
    assert code == 0, out
    lines = event_lines(out)
    assert "draft: kept" in "\n".join(lines) and f": {note}" in next(line for line in lines if "approved by" in line)
    assert any(line.startswith("publish: started") for line in lines)
    state = json.loads((root / "docs/ai/usage/state.json").read_text())
    assert state["stages"]["publish"]["inputs"]["note:review"] == hashlib.sha256(note.encode()).hexdigest()[:16]
    assert note in (root / "docs/ai/usage/workflow-state.md").read_text()


def test_the_docs_review_example_rejected_fails_the_branch_until_the_draft_changes(
    cli: CliRunner, tmp_path: Path
) -> None:
    root = _copy_example("docs-review", tmp_path)
    assert _docs_review(cli, root, "--offline")[0] == 3
    assert cli("reject", "usage", "review", "--note", "Too long", cwd=root).code == 0
    for _ in range(2):  # the decision holds for the draft it was made on
        code, out = _docs_review(cli, root, "--offline")
        assert code == 1, out
        lines = event_lines(out)
        assert "review: rejected by" in out and "rejected: Too long" in out
        assert any(line.startswith("publish: skipped: needs review, which failed") for line in lines)
        assert any(line.startswith("audit: skipped") for line in lines)
    code, out = _docs_review(cli, root, "--offline", topic="one short example")
    assert code == 3, out
    assert "draft: started" in out and "review: waiting for approval" in out


def test_the_docs_review_approval_note_reaches_the_publish_prompt_through_the_api(
    cli: CliRunner, api: FakeAnthropic, tmp_path: Path
) -> None:
    root = _copy_example("docs-review", tmp_path)
    page = "# Usage\n\n```\ntextstats count notes.txt\n```\n"
    api.script(
        "stage `draft` of workflow",
        [
            {"name": "edit", "input": {"command": "create", "path": "guide/usage.md", "file_text": page}},
            "Wrote guide/usage.md.",
        ],
    )
    assert _docs_review(cli, root)[0] == 3
    assert not [r for r in api.messages() if "stage `publish` of workflow" in r.text()]  # nothing past the gate
    note = "Add an example with tabs and newlines"
    assert cli("approve", "usage", "review", "--note", note, cwd=root).code == 0
    code, out = _docs_review(cli, root)
    assert code == 0, out
    publish = [r for r in api.messages() if "stage `publish` of workflow" in r.text()]
    assert len(publish) == 1 and "## Approval of stage `review`" in publish[0].text()
    assert f"Note: {note}" in publish[0].text()
    assert (root / "guide/usage.md").read_text() == page


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


@pytest.mark.parametrize("path", OWN, ids=lambda p: p.stem)
def test_committed_output_is_the_compiled_result_of_our_workflows(path: Path, cli: CliRunner) -> None:
    result = cli("compile", f"workflows/{path.name}", "--check", cwd=REPO)
    assert result.code == 0, result.out + result.err
