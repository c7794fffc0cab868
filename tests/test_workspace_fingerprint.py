"""Stages that act see the workspace: a command after a stage that changed files runs again, on the files as
they are now, and says which files changed; with nothing changed, a rerun keeps everything and sends nothing."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

from .conftest import CliRunner, TempProject
from .fake_anthropic import DEFAULT_VERDICT, FakeAnthropic

WORKFLOW = """
name: change
agents:
  editor: {template: build.md, tools: [read, edit]}
stages:
  - {id: plan, agent: plan, prompt: Plan the change.}
  - id: edit
    agent: editor
    needs: [plan]
    writes: ["src/**"]
    prompt: Write the greeting.
  - id: tests
    needs: [edit]
    run: python -c "print('app says:', open('src/app.py').read().strip())"
  - {id: audit, agent: auditor, needs: [tests]}
"""


def at(stage: str) -> str:
    return f": stage `{stage}` of workflow"


def script_edit(api: FakeAnthropic, greeting: str) -> None:
    write = {"command": "create", "path": "src/app.py", "file_text": f"{greeting}\n"}
    api.script(f"{at('edit')}", [{"name": "edit", "input": write}, f"Wrote {greeting}."])


def state(project: TempProject) -> dict[str, Any]:
    return json.loads((project.root / "docs/ai/t/state.json").read_text())


RUN = ("run", "workflows/change.yaml", "--task", "t")


def first_run(cli: CliRunner, api: FakeAnthropic, project: TempProject, monkeypatch: Any) -> None:
    """The workflow's first run: the edit writes "hello, world" into src/app.py, the tests print it."""
    monkeypatch.setenv("PATH", os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
    project.workflow(WORKFLOW, name="change")
    project.write("src/app.py", "hello\n")
    script_edit(api, "hello, world")
    api.reply(json.dumps(DEFAULT_VERDICT), when=at("audit"))
    assert cli(*RUN, cwd=project.root).code == 0


def test_a_command_after_an_edit_reruns_on_the_new_files_and_an_unchanged_rerun_keeps_all(
    cli: CliRunner, api: FakeAnthropic, project: TempProject, monkeypatch: Any
) -> None:
    first_run(cli, api, project, monkeypatch)
    first = state(project)
    assert first["stages"]["tests"]["gate"] is False  # a command stage, not an approval gate
    assert "app says: hello, world" in (project.root / "docs/ai/t/stages/tests.md").read_text()
    assert "after" not in (project.root / "docs/ai/t/stages/tests.md").read_text()  # no clock in the output
    assert first["stages"]["tests"]["inputs"]["workspace"]

    sent = len(api.messages())
    again = cli(*RUN, cwd=project.root)
    assert again.code == 0, again.out
    assert len(api.messages()) == sent  # nothing changed: nothing sent
    kept = state(project)
    assert all(stage["reused"] for stage in kept["stages"].values())
    assert (project.root / "docs/ai/t/stages/tests.md").read_text().count("app says: hello, world") == 1

    # The edit stage's prompt changes, and it writes something else: the tests must see it, and the audit too.
    project.workflow(WORKFLOW.replace("Write the greeting.", "Write a friendlier greeting."), name="change")
    api.rules.clear()
    script_edit(api, "hi there")
    api.reply(json.dumps(DEFAULT_VERDICT), when=at("audit"))
    third = cli(*RUN, cwd=project.root)
    assert third.code == 0, third.out
    after = state(project)
    assert after["stages"]["edit"]["reused"] is False
    assert after["stages"]["tests"]["reused"] is False
    assert after["stages"]["tests"]["reason"] == "upstream edit re-ran; files it can see changed: src/app.py"
    assert "app says: hi there" in (project.root / "docs/ai/t/stages/tests.md").read_text()
    audit = [r for r in api.messages() if at("audit") in r.text()][-1]
    assert "app says: hi there" in audit.text() and "hello, world" not in audit.text()
    markdown = (project.root / "docs/ai/t/workflow-state.md").read_text()
    assert "approval" not in markdown.split("## ")[1]  # the stage table calls the tests a command


def test_a_file_changed_by_hand_reruns_the_stages_that_see_it(
    cli: CliRunner, api: FakeAnthropic, project: TempProject, monkeypatch: Any
) -> None:
    first_run(cli, api, project, monkeypatch)
    Path(project.root / "README.md").write_text("A note added by hand.\n")
    plan = json.loads(cli("plan", "workflows/change.yaml", "--task", "t", "--json", cwd=project.root).out)
    actions = {s["stage"]: (s["action"], s["reason"]) for s in plan["stages"]}
    assert actions["plan"][0] == "keep"  # it acts on nothing: the workspace is not its input
    assert actions["edit"][0] == "run" and actions["edit"][1].startswith("files it can see changed: README.md")
    result = cli(*RUN, cwd=project.root)
    assert result.code == 0
    assert state(project)["stages"]["edit"]["reason"] == "files it can see changed: README.md"


def test_a_workflow_at_the_project_root_still_sees_the_workspace(cli: CliRunner, project: TempProject) -> None:
    """Leaving the workflow's folder out of what a stage sees must not leave out the whole project."""
    (project.root / "r.yaml").write_text(
        'name: r\nstages:\n  - {id: t, run: "cat a.txt"}\n  - {id: audit, agent: auditor, needs: [t]}\n'
    )
    (project.root / "a.txt").write_text("one\n")
    run = ("run", "r.yaml", "--task", "t", "--offline")
    assert cli(*run, cwd=project.root).code == 0
    (project.root / "a.txt").write_text("two\n")
    result = cli(*run, cwd=project.root)
    assert result.code == 0 and "t: started (command) — files it can see changed: a.txt" in result.out
