"""Stages that act on the workspace, end to end: the CLI in-process, the real SDK, the localhost fake.

Tool loops (read, edit, search, bash) that change files, paths and commands refused, secrets kept
from commands, max_turns, write scopes, output contracts, run: stages, and record/replay.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from .conftest import CliResult, CliRunner, TempProject
from .fake_anthropic import FakeAnthropic, Request

TASK = "t"
API_KEY = "test-key-not-a-secret"  # what the api fixture sets


def at(stage: str) -> str:
    """Matches requests for ``stage`` only (the first line of its user message), not ones that quote it."""
    return f": stage `{stage}` of workflow"


def run(cli: CliRunner, project: TempProject, name: str, *more: str) -> CliResult:
    return cli("run", f"workflows/{name}.yaml", "--task", TASK, *more, cwd=project.root)


def folder(project: TempProject) -> Path:
    return project.root / "docs/ai" / TASK


def state(project: TempProject) -> dict[str, Any]:
    return json.loads((folder(project) / "state.json").read_text())


def output(project: TempProject, stage: str) -> str:
    return (folder(project) / "stages" / f"{stage}.md").read_text()


def for_stage(api: FakeAnthropic, stage: str) -> list[Request]:
    return [r for r in api.messages() if at(stage) in r.text()]


def tool_results(request: Request) -> list[dict[str, Any]]:
    """The tool_result blocks of a request's last (user) message: what the model got for its last calls."""
    content = request.body["messages"][-1]["content"]
    return [block for block in content if isinstance(block, dict) and block.get("type") == "tool_result"]


def all_tool_results(requests: list[Request]) -> list[dict[str, Any]]:
    """Every tool_result the model received, each once, in order (the last request holds the whole conversation)."""
    last = max(requests, key=lambda r: len(r.body["messages"]))
    return [
        block
        for message in last.body["messages"]
        if isinstance(message["content"], list)
        for block in message["content"]
        if block.get("type") == "tool_result"
    ]


@pytest.fixture
def python_on_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """``python`` in commands is this interpreter (it has pytest)."""
    monkeypatch.setenv("PATH", os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))


# -- 1. a tool loop fixes a bug ---------------------------------------------------------------------------

FIX = """
name: fix
permissions: {bash: ["python -m pytest"], shell: false, bash_timeout: 30}
agents:
  build: {tools: [read, edit, search, bash], max_turns: 6}
stages:
  - id: fix
    agent: build
    prompt: Fix the bug in src/calc.py so that the tests pass.
"""

BUGGY = "def add(a, b):\n    return a - b\n"
FIXED = "def add(a, b):\n    return a + b\n"
TEST_CALC = "from src.calc import add\n\n\ndef test_add():\n    assert add(2, 3) == 5\n"
PYTEST = "python -m pytest -q -p no:cacheprovider test_calc.py"


def fix_script(api: FakeAnthropic, final: str = "Fixed add: it subtracted instead of adding.") -> None:
    api.script(
        at("fix"),
        [
            {"name": "read", "input": {"path": "src/calc.py"}},
            {
                "name": "edit",
                "input": {
                    "command": "str_replace",
                    "path": "src/calc.py",
                    "old_str": "return a - b",
                    "new_str": "return a + b",
                },
            },
            {"name": "bash", "input": {"command": PYTEST}},
            final,
        ],
    )


def buggy_project(project: TempProject) -> None:
    project.workflow(FIX, name="fix")
    project.write("src/calc.py", BUGGY)
    project.write("test_calc.py", TEST_CALC)


def test_a_tool_loop_reads_edits_runs_the_tests_and_fixes_the_bug(
    api: FakeAnthropic, project: TempProject, cli: CliRunner, python_on_path: None
) -> None:
    buggy_project(project)
    fix_script(api)
    result = run(cli, project, "fix")
    assert result.code == 0, result.out + result.err
    assert (project.root / "src/calc.py").read_text() == FIXED
    requests = for_stage(api, "fix")
    assert len(requests) == 4
    read, edit, bash = (tool_results(r) for r in requests[1:])
    assert [b["is_error"] for b in read + edit + bash] == [False, False, False]
    assert read[0]["content"] == "     1\tdef add(a, b):\n     2\t    return a - b"
    assert "Edited src/calc.py" in edit[0]["content"]
    assert bash[0]["content"].startswith("exit code: 0\nstdout:\n") and "1 passed" in bash[0]["content"]
    assert output(project, "fix") == "Fixed add: it subtracted instead of adding.\n"
    lines = [json.loads(line) for line in (folder(project) / "stages/fix.transcript.jsonl").read_text().splitlines()]
    assert [(line["turn"], line["role"]) for line in lines] == [
        (0, "user"),
        (1, "assistant"),
        (1, "user"),
        (2, "assistant"),
        (2, "user"),
        (3, "assistant"),
        (3, "user"),
        (4, "assistant"),
    ]
    assert lines[0]["tools"] == ["read", "edit", "search", "bash"]
    calls = [block for block in lines[5]["content"] if block["type"] == "tool_use"]
    assert calls[0]["input"]["command"] == PYTEST
    assert "1 passed" in lines[6]["content"][0]["content"]
    assert lines[-1]["stop_reason"] == "end_turn"
    # Sonnet 5.5 thinks first (the thinking block comes back as the API sent it), then answers.
    assert [block["type"] for block in lines[-1]["content"]] == ["thinking", "text"]
    assert lines[-1]["content"][1]["text"] == "Fixed add: it subtracted instead of adding."
    fix = state(project)["stages"]["fix"]
    assert fix["status"] == "succeeded"
    # Four requests, one try: the turns of a tool loop are not retries.
    assert fix["tries"] == 1 and len(fix["attempts"]) == 4
    row = next(
        line
        for line in (folder(project) / "workflow-state.md").read_text().splitlines()
        if line.startswith("| `fix` |")
    )
    assert "| Tries |" in (folder(project) / "workflow-state.md").read_text()
    assert row.split("|")[5].strip() == "1"
    assert "Requests: 4 (0 failed)" in cli("explain", TASK, "fix", cwd=project.root).out


# -- 2. paths that lead out of the workspace, through every tool -----------------------------------------

SECRET = "TOP-SECRET-CONTENT-42"

ESCAPE = """
name: escape
permissions: {bash: ["ln"]}
agents:
  build: {tools: [read, edit, search, bash], max_turns: 4}
stages:
  - id: look
    agent: build
    prompt: Look around.
"""


def files_under(root: Path, skip: Path) -> dict[str, str]:
    """Every file below ``root`` (not inside ``skip``), with its content, links not followed."""
    out: dict[str, str] = {}
    for folder, dirs, names in os.walk(root):
        dirs[:] = [d for d in dirs if Path(folder, d) != skip]
        for name in names:
            path = Path(folder, name)
            out[str(path)] = "<link>" if path.is_symlink() else path.read_text()
    return out


def test_no_tool_reads_or_writes_outside_the_workspace(
    api: FakeAnthropic, project: TempProject, cli: CliRunner, tmp_path: Path
) -> None:
    project.workflow(ESCAPE, name="escape")
    project.write("src/app.py", "print('hi')\n")
    (tmp_path / "outside.txt").write_text("outside, do not touch\n")
    hidden = tmp_path / "hidden"
    hidden.mkdir()
    (hidden / "secret.txt").write_text(SECRET + "\n")
    (project.root / "made_before").symlink_to(hidden)
    before = files_under(tmp_path, skip=project.root)
    first = [
        {"name": "read", "input": {"path": "../outside.txt"}},
        {"name": "read", "input": {"path": str(tmp_path / "outside.txt")}},
        {"name": "read", "input": {"path": str(hidden / "secret.txt")}},
        {"name": "edit", "input": {"command": "create", "path": "../evil.txt", "file_text": "evil"}},
        {"name": "edit", "input": {"command": "create", "path": "made_before/evil.txt", "file_text": "evil"}},
        {"name": "search", "input": {"query": "SECRET", "path": ".."}},
        {"name": "read", "input": {"path": "made_before/secret.txt"}},
        {"name": "read", "input": {"path": "a/" * 2500}},
        {"name": "bash", "input": {"command": f"ln -s {hidden} made_by_bash"}},
    ]
    second = [
        {"name": "read", "input": {"path": "made_by_bash/secret.txt"}},
        {"name": "edit", "input": {"command": "str_replace", "path": "made_by_bash/secret.txt", "old_str": "TOP"}},
        {"name": "search", "input": {"query": "SECRET", "path": "made_by_bash"}},
    ]
    api.script(at("look"), [first, second, "Everything outside the project was refused."])
    result = run(cli, project, "escape")
    assert result.code == 0, result.out + result.err
    assert output(project, "look") == "Everything outside the project was refused.\n"
    assert (project.root / "made_by_bash").is_symlink()  # the allowed ln ran
    results = all_tool_results(for_stage(api, "look"))
    assert len(results) == len(first) + len(second)
    linked = results.pop(len(first) - 1)
    assert linked["is_error"] is False and linked["content"].startswith("exit code: 0")
    assert all(r["is_error"] is True for r in results), results
    outside = "is outside the workspace; use a path relative to the workspace root."
    through_link = "leads outside the workspace through a symbolic link; only files inside the workspace can be used."
    absolute = "the path '" + str(tmp_path)[:20]  # long absolute paths are shown cut, so compare the start
    expected = [
        ("the path '../outside.txt' ", outside),
        (absolute, outside),
        (absolute, outside),
        ("the path '../evil.txt' ", outside),
        ("the path 'made_before/evil.txt' ", through_link),
        ("the path '..' ", outside),
        ("the path 'made_before/secret.txt' ", through_link),
        ("the path is too long (5000 characters; the limit is 4096).", ""),
        ("the path 'made_by_bash/secret.txt' ", through_link),
        ("the path 'made_by_bash/secret.txt' ", through_link),
        ("the path 'made_by_bash' ", through_link),
    ]
    assert len(results) == len(expected)
    for (start, end), reply in zip(expected, results, strict=True):
        assert reply["content"].startswith(start) and reply["content"].endswith(end), reply["content"]
    assert files_under(tmp_path, skip=project.root) == before  # nothing changed or appeared outside
    for request in api.requests:
        assert SECRET not in json.dumps(request.body)


# -- 3. commands that are not allowed, and secrets kept from the ones that are ----------------------------

PLANTED = "ghp-planted-123"

COMMANDS = """
name: cmds
permissions: {bash: ["python -m pytest", "ln"], shell: false, bash_timeout: 30}
agents:
  build: {tools: [read, bash], max_turns: 4, permissions: {bash: ["printenv", "env"]}}
stages:
  - id: poke
    agent: build
    prompt: Poke around.
  - id: shell-env
    run: env
    needs: [poke]
"""


def test_only_allowed_commands_run_and_no_command_sees_the_api_key_or_other_secrets(
    api: FakeAnthropic, project: TempProject, cli: CliRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GITHUB_TOKEN", PLANTED)
    project.workflow(COMMANDS, name="cmds")
    project.write("src/app.py", "print('hi')\n")
    calls = [
        {"name": "bash", "input": {"command": "rm -rf src"}},
        {"name": "bash", "input": {"command": "cat /etc/hostname"}},
        {"name": "bash", "input": {"command": "python -m pytest -q"}},  # the workflow's, overridden by the agent's
        {"name": "bash", "input": {"command": "printenv"}},
        {"name": "bash", "input": {"command": "env"}},
    ]
    api.script(at("poke"), [calls, "Looked at the environment."])
    result = run(cli, project, "cmds")
    assert result.code == 0, result.out + result.err
    assert (project.root / "src/app.py").exists()
    rm, cat, pytest_, printenv, env = all_tool_results(for_stage(api, "poke"))
    allowed = "Every command must start with one of: 'printenv', 'env'."
    assert rm["is_error"] and rm["content"] == f"'rm -rf src' is not an allowed command for this stage. {allowed}"
    assert (
        cat["is_error"] and cat["content"] == f"'cat /etc/hostname' is not an allowed command for this stage. {allowed}"
    )
    assert pytest_["is_error"] and pytest_["content"].startswith("'python -m pytest' is not an allowed command")
    for shown in (printenv, env):
        assert shown["is_error"] is False and shown["content"].startswith("exit code: 0")
        assert "\nPATH=" in shown["content"]
        assert API_KEY not in shown["content"] and PLANTED not in shown["content"]
        assert "ANTHROPIC" not in shown["content"] and "GITHUB_TOKEN" not in shown["content"]
    shell = output(project, "shell-env")
    assert shell.startswith("$ env\nexit code 0") and "PATH=" in shell
    assert API_KEY not in shell and PLANTED not in shell and "GITHUB_TOKEN" not in shell
    for request in api.messages():
        assert API_KEY not in json.dumps(request.body) and PLANTED not in json.dumps(request.body)


# -- 4. malformed tool calls ------------------------------------------------------------------------------

MALFORMED = """
name: bad
agents:
  build: {tools: [read, edit], max_turns: 3}
stages:
  - id: clumsy
    agent: build
    prompt: Try things.
"""


def test_malformed_tool_calls_get_error_results_and_the_stage_goes_on(
    api: FakeAnthropic, project: TempProject, cli: CliRunner
) -> None:
    project.workflow(MALFORMED, name="bad")
    project.write("notes.txt", "a note\n")
    calls = [
        {"name": "read", "input": ["notes.txt"]},
        {"name": "read", "input": {}},
        {"name": "read", "input": {"path": "notes.txt", "mode": "fast"}},
        {"name": "delete", "input": {"path": "notes.txt"}},
        {"name": "bash", "input": {"command": "ls"}},  # a real tool, but not this agent's
        {"name": "edit", "input": {"command": "str_replace", "path": "notes.txt"}},
    ]
    api.script(at("clumsy"), [calls, {"name": "read", "input": {"path": "notes.txt"}}, "Read the note."])
    result = run(cli, project, "bad")
    assert result.code == 0, result.out + result.err
    assert state(project)["stages"]["clumsy"]["status"] == "succeeded"
    assert output(project, "clumsy") == "Read the note.\n"
    replies = all_tool_results(for_stage(api, "clumsy"))
    assert [(r["is_error"], r["content"]) for r in replies] == [
        (True, "invalid arguments for read: the arguments must be a JSON object, got list."),
        (True, "invalid arguments for read: 'path' is required."),
        (True, "invalid arguments for read: 'mode' is not an argument of read (it takes path, view_range)."),
        (True, "there is no tool 'delete' in this stage"),
        (True, "there is no tool 'bash' in this stage"),
        (True, "str_replace needs old_str."),
        (False, "     1\ta note"),
    ]
    assert (project.root / "notes.txt").read_text() == "a note\n"


# -- 5. max_turns ------------------------------------------------------------------------------------------

LOOPING = """
name: loop
agents:
  build: {tools: [read], max_turns: 3}
stages:
  - id: spin
    agent: build
    prompt: Read forever.
"""


def test_a_model_that_never_stops_calling_tools_fails_at_max_turns(
    api: FakeAnthropic, project: TempProject, cli: CliRunner
) -> None:
    project.workflow(LOOPING, name="loop")
    project.write("notes.txt", "a note\n")
    api.script(at("spin"), [{"name": "read", "input": {"path": "notes.txt"}}])
    result = run(cli, project, "loop")
    assert result.code == 1
    saved = state(project)["stages"]
    assert saved["spin"]["status"] == "failed"
    assert saved["spin"]["error"].startswith("the model was still calling tools after max_turns (3) turns")
    assert "raise max_turns for the agent" in saved["spin"]["error"]
    assert "max_turns (3)" in result.out + result.err
    assert len(for_stage(api, "spin")) == 3
    assert saved["audit"]["status"] == "skipped" and not for_stage(api, "audit")


# -- 6. write scopes ---------------------------------------------------------------------------------------

SCOPED = """
name: scoped
agents:
  build: {tools: [read, edit], max_turns: 3}
stages:
  - id: code
    agent: build
    writes: ["src/**"]
    prompt: Change the code only.
"""


def test_a_change_outside_the_write_scope_fails_the_stage_naming_the_file(
    api: FakeAnthropic, project: TempProject, cli: CliRunner
) -> None:
    project.workflow(SCOPED, name="scoped")
    project.write("src/app.py", "x = 1\n")
    project.write("README.md", "# App\n")
    edits = [
        {"name": "edit", "input": {"command": "create", "path": "src/app.py", "file_text": "x = 2\n"}},
        {"name": "edit", "input": {"command": "create", "path": "README.md", "file_text": "# App, changed\n"}},
    ]
    api.script(at("code"), [edits, "Changed the code and the readme."])
    result = run(cli, project, "scoped")
    assert result.code == 1
    error = state(project)["stages"]["code"]["error"]
    assert error == "it changed files outside its write scope (src/**): README.md"
    assert "README.md" in result.out
    assert state(project)["stages"]["audit"]["status"] == "skipped"


def scopes_workflow(first: str, second: str) -> str:
    return f"""
name: pair
stages:
  - id: one
    agent: build
    writes: ["{first}"]
    prompt: Work on the first part.
  - id: two
    agent: build
    writes: ["{second}"]
    prompt: Work on the second part.
"""


def spans(project: TempProject) -> dict[str, tuple[float, float]]:
    """Each stage's (started, finished) times, from events.jsonl."""
    started: dict[str, float] = {}
    out: dict[str, tuple[float, float]] = {}
    for line in (folder(project) / "events.jsonl").read_text().splitlines():
        event = json.loads(line)
        if event["event"] == "stage_started":
            started[event["stage"]] = event["time"]
        elif event["event"] == "stage_succeeded":
            out[event["stage"]] = (started[event["stage"]], event["time"])
    return out


@pytest.mark.parametrize(
    ("first", "second", "together"),
    [("src/**", "src/**", False), ("src/**", "src/app.py", False), ("src/a/**", "src/b/**", True)],
)
def test_stages_with_overlapping_write_scopes_never_run_at_the_same_time(
    api: FakeAnthropic, project: TempProject, cli: CliRunner, first: str, second: str, together: bool
) -> None:
    project.workflow(scopes_workflow(first, second), name="pair")
    api.reply("one done", when=at("one"), delay=0.5)
    api.reply("two done", when=at("two"), delay=0.5)
    result = run(cli, project, "pair")
    assert result.code == 0, result.out + result.err
    times = spans(project)
    (start_1, end_1), (start_2, end_2) = times["one"], times["two"]
    overlapped = start_1 < end_2 and start_2 < end_1
    assert overlapped is together, times
    assert end_1 - start_1 >= 0.5 and end_2 - start_2 >= 0.5


# -- 7. output contracts ------------------------------------------------------------------------------------

REPORTING = """
name: report
agents:
  build: {tools: [read, edit], max_turns: 3}
stages:
  - id: write
    agent: build
    outputs: ["report.md"]
    prompt: Write report.md.
"""

RETRY_LINE = "## Your previous try broke the stage's contract"


def test_a_declared_output_that_is_never_made_fails_the_stage_naming_it(
    api: FakeAnthropic, project: TempProject, cli: CliRunner
) -> None:
    project.workflow(REPORTING, name="report")
    api.reply("I wrote the report (not really).", when=at("write"))
    result = run(cli, project, "report")
    assert result.code == 1
    error = state(project)["stages"]["write"]["error"]
    assert error == "declared outputs are not right: report.md does not exist"
    assert "report.md" in result.out
    assert len(for_stage(api, "write")) == 1
    assert not (project.root / "report.md").exists()


def test_a_retry_is_told_what_broke_the_contract_and_can_fix_it(
    api: FakeAnthropic, project: TempProject, cli: CliRunner
) -> None:
    project.workflow(REPORTING.replace("    outputs:", "    retries: 1\n    outputs:"), name="report")
    create = {
        "name": "edit",
        "input": {"command": "create", "path": "report.md", "file_text": "# Report\n\nAll good.\n"},
    }
    api.script(RETRY_LINE, [create, "Wrote report.md this time."])  # only the second try's prompt has the line
    api.reply("I wrote the report (not really).", when=at("write"))
    result = run(cli, project, "report")
    assert result.code == 0, result.out + result.err
    first, *second = for_stage(api, "write")
    assert RETRY_LINE not in first.text()
    prompt = second[0].body["messages"][0]["content"]
    assert RETRY_LINE in prompt and "declared outputs are not right: " in prompt and "report.md" in prompt
    assert len(second) == 2  # the edit, then the final text
    assert (project.root / "report.md").read_text() == "# Report\n\nAll good.\n"
    saved = state(project)["stages"]["write"]
    assert saved["status"] == "succeeded" and saved["tries"] == 2
    assert output(project, "write") == "Wrote report.md this time.\n"


# -- 8. run: stages ----------------------------------------------------------------------------------------

SHELL = """
name: shell
stages:
  - id: test
    run: {command}
{more}
"""


def test_a_failing_command_fails_its_stage_with_the_exit_code_and_output_and_skips_the_audit(
    api: FakeAnthropic, project: TempProject, cli: CliRunner, python_on_path: None
) -> None:
    command = "python -c \"import sys; print('boom'); sys.exit(3)\""
    project.workflow(SHELL.format(command=json.dumps(command), more=""), name="shell")
    result = run(cli, project, "shell")
    assert result.code == 1
    saved = state(project)["stages"]
    error = saved["test"]["error"]
    assert error.startswith(f"`{command}` failed: exit code 3 after ") and "boom" in error
    assert "exit code 3" in result.out and "boom" in result.out
    assert saved["audit"]["status"] == "skipped"
    assert api.messages() == []


def test_a_failing_command_of_several_lines_is_reported_by_its_exit_code(
    api: FakeAnthropic, project: TempProject, cli: CliRunner
) -> None:
    command = "echo first line\necho second line >&2\nexit 4"
    project.workflow(SHELL.format(command=json.dumps(command), more=""), name="shell")
    assert run(cli, project, "shell").code == 1
    error = state(project)["stages"]["test"]["error"]
    assert error.startswith(f"`{command}` failed: exit code 4 after ")
    assert "first line" in error and "second line" in error


def test_a_command_stage_output_holds_the_command_exit_code_and_stdout_and_reaches_the_audit(
    api: FakeAnthropic, project: TempProject, cli: CliRunner, python_on_path: None
) -> None:
    command = "python -c \"import os; print('value', os.environ['GREETING'], os.getcwd())\""
    more = "    env: {GREETING: hello-there}\n    cwd: sub\n"
    project.workflow(SHELL.format(command=json.dumps(command), more=more), name="shell")
    (project.root / "sub").mkdir()
    result = run(cli, project, "shell")
    assert result.code == 0, result.out + result.err
    shown = output(project, "test")
    assert shown.startswith(f"$ {command} (in sub/)\nexit code 0\n\n")  # no clock: the duration is in the state
    expected = f"value hello-there {os.path.realpath(project.root / 'sub')}"
    assert f"stdout (last lines):\n```\n{expected}\n```" in shown
    (audit,) = for_stage(api, "audit")
    assert "## Output of stage `test`" in audit.text() and expected in audit.text()
    assert state(project)["stages"]["test"]["status"] == "succeeded"


def test_a_command_stage_is_killed_at_its_timeout_and_cannot_start_outside_the_project(
    api: FakeAnthropic, project: TempProject, cli: CliRunner, python_on_path: None, tmp_path: Path
) -> None:
    late = "python -c \"import time; time.sleep(1.5); open('late.txt', 'w').write('still running')\""
    project.workflow(SHELL.format(command=json.dumps(late), more="    timeout: 0.5\n"), name="shell")
    result = run(cli, project, "shell")
    assert result.code == 1
    assert state(project)["stages"]["test"]["error"].startswith("timed out after 0.5 s")
    time.sleep(1.6)
    assert not (project.root / "late.txt").exists()  # the command was killed, not left running

    (tmp_path / "elsewhere").mkdir()
    (project.root / "away").symlink_to(tmp_path / "elsewhere")
    where = "python -c \"open('here.txt', 'w').write('x')\""
    project.workflow(SHELL.format(command=json.dumps(where), more="    cwd: away\n"), name="shell")
    result = run(cli, project, "shell")
    assert result.code == 1
    assert state(project)["stages"]["test"]["error"].startswith("cwd 'away' resolves outside the workspace")
    assert list((tmp_path / "elsewhere").iterdir()) == []


# -- 9. record and replay ---------------------------------------------------------------------------------


def test_a_recorded_run_replays_without_network_or_key_and_redoes_the_tool_calls(
    api: FakeAnthropic, project: TempProject, cli: CliRunner, python_on_path: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    buggy_project(project)
    fix_script(api)
    recorded = run(cli, project, "fix", "--record", "rec")
    assert recorded.code == 0, recorded.out + recorded.err
    assert sorted(p.name for p in (project.root / "rec").iterdir()) == ["audit.jsonl", "fix.jsonl"]
    assert len((project.root / "rec/fix.jsonl").read_text().splitlines()) == 4
    outputs = {stage: output(project, stage) for stage in ("fix", "audit")}
    sent = len(api.requests)

    for path in sorted(folder(project).rglob("*"), reverse=True):
        path.unlink() if path.is_file() else path.rmdir()
    folder(project).rmdir()
    project.write("src/calc.py", BUGGY)
    monkeypatch.delenv("ANTHROPIC_API_KEY")
    replayed = run(cli, project, "fix", "--replay", "rec")
    assert replayed.code == 0, replayed.out + replayed.err
    assert {stage: output(project, stage) for stage in ("fix", "audit")} == outputs
    assert (project.root / "src/calc.py").read_text() == FIXED  # the replayed edit ran again
    lines = (folder(project) / "stages/fix.transcript.jsonl").read_text().splitlines()
    assert "1 passed" in json.loads(lines[6])["content"][0]["content"]  # and so did pytest
    assert len(api.requests) == sent

    project.workflow(FIX.replace("so that the tests pass", "without breaking anything"), name="fix")
    changed = run(cli, project, "fix", "--replay", "rec")
    assert changed.code == 1
    error = state(project)["stages"]["fix"]["error"]
    assert error.startswith("replay: request 1 of stage 'fix' is not the one recorded (message 1 (user) differs)")
    assert "record again with --record" in error
    assert "is not the one recorded" in changed.out
    assert len(api.requests) == sent


def test_a_replay_whose_tool_calls_now_fail_does_not_pass_off_the_recorded_answer(
    api: FakeAnthropic, project: TempProject, cli: CliRunner, python_on_path: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    buggy_project(project)
    fix_script(api)
    assert run(cli, project, "fix", "--record", "rec").code == 0
    other_bug = "def add(a, b):\n    return a * b\n"  # the recorded str_replace no longer applies
    project.write("src/calc.py", other_bug)
    monkeypatch.delenv("ANTHROPIC_API_KEY")
    replayed = run(cli, project, "fix", "--replay", "rec", "--force")
    lines = (folder(project) / "stages/fix.transcript.jsonl").read_text().splitlines()
    edit_result = json.loads(lines[4])["content"][0]
    assert edit_result["is_error"] is True and "old_str was not found" in edit_result["content"]
    assert (project.root / "src/calc.py").read_text() == other_bug  # the bug is still there
    # The edit failed this time where it worked when recorded: the replay stops instead of passing off the answer.
    assert replayed.code == 1
    assert "is not the one recorded" in state(project)["stages"]["fix"]["error"]


SCOPED_FIX = FIX.replace("    agent: build\n", "    agent: build\n    writes: ['src/**']\n")


def test_recording_into_the_project_does_not_count_as_a_change_outside_the_write_scope(
    api: FakeAnthropic, project: TempProject, cli: CliRunner, python_on_path: None
) -> None:
    buggy_project(project)
    project.workflow(SCOPED_FIX, name="fix")
    fix_script(api)
    result = run(cli, project, "fix", "--record", "rec")  # rec/ is inside the project, outside src/**
    assert (project.root / "src/calc.py").read_text() == FIXED
    assert (project.root / "rec/fix.jsonl").exists()
    assert (
        state(project)["stages"]["fix"].get("error") is None
    )  # the stage did not write rec/fix.jsonl: orchestrate did
    assert result.code == 0, result.out + result.err


# -- 10. usage errors --------------------------------------------------------------------------------------


def test_record_and_replay_together_is_a_usage_error(api: FakeAnthropic, project: TempProject, cli: CliRunner) -> None:
    buggy_project(project)
    (project.root / "rec").mkdir()
    result = run(cli, project, "fix", "--record", "rec", "--replay", "rec")
    assert result.code == 2
    assert "use --record or --replay, not both" in result.err
    assert api.messages() == [] and not folder(project).exists()


def test_replaying_a_missing_folder_is_a_usage_error_naming_the_folder(
    api: FakeAnthropic, project: TempProject, cli: CliRunner
) -> None:
    buggy_project(project)
    result = run(cli, project, "fix", "--replay", "nowhere")
    assert result.code == 2, result.out + result.err
    assert f"--replay {project.root / 'nowhere'}: no such folder" in result.err
    assert "record one first with" in result.err
    assert api.messages() == [] and not folder(project).exists()


def test_a_stage_with_both_run_and_agent_is_a_usage_error_pointing_at_the_file(
    project: TempProject, cli: CliRunner
) -> None:
    project.workflow(
        """
        name: both
        stages:
          - id: mixed
            agent: build
            run: python -c "print(1)"
        """,
        name="both",
    )
    result = run(cli, project, "both")
    assert result.code == 2
    assert "workflows/both.yaml:3:" in result.err
    assert "a run: stage runs a command, not an agent, so it takes no agent" in result.err


def test_a_command_that_leaves_a_child_outside_its_group_ends_clean(project: TempProject, tmp_path: Path) -> None:
    """`setsid` takes a child out of the command's process group: it is still found and stopped, and the
    run prints no asyncio noise about the pipes it held."""
    marker = tmp_path / "still-running"
    project.workflow(
        "name: s\nstages:\n"
        f"  - {{id: bg, run: \"setsid sh -c 'sleep 30; touch {marker}' & echo started\"}}\n"
        "  - {id: audit, agent: auditor, needs: [bg]}\n",
        name="s",
    )
    done = subprocess.run(
        [sys.executable, "-m", "orchestrator", "run", "workflows/s.yaml", "--task", "t", "--offline"],
        cwd=project.root,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Traceback" not in done.stderr and "never retrieved" not in done.stderr, done.stderr
    leftovers = subprocess.run(["pgrep", "-f", f"touch {marker}"], capture_output=True, text=True)
    assert leftovers.stdout.strip() == "", "the setsid child is still running"
