"""The public Python API: what a program gets from ``import orchestrator``."""

from __future__ import annotations

import json

import pytest

import orchestrator
from orchestrator import OrchestrateError, RunRequest, prepare_workflow, run_workflow

from .conftest import FEATURE, TempProject


def test_every_public_name_resolves() -> None:
    for name in orchestrator.__all__:
        assert getattr(orchestrator, name) is not None, name


def test_a_workflow_runs_from_python_and_leaves_the_same_state_folder(project: TempProject) -> None:
    path = project.workflow(FEATURE)
    seen: list[str] = []

    class Names:
        def on_event(self, event: object) -> None:
            seen.append(type(event).__name__)

    prepared = prepare_workflow(path, RunRequest(task="t", param_args=["goal=Add login"], offline=True))
    outcome = run_workflow(prepared, listeners=[Names()])
    assert outcome.status == "succeeded"
    assert outcome.stages["audit"].status == "succeeded" and outcome.verdict is not None
    state = json.loads((project.root / "docs/ai/t/state.json").read_text())
    assert state["status"] == "succeeded" and state["params"] == {"goal": "Add login"}
    assert seen[0] == "RunStarted" and seen[-1] == "RunFinished"
    # The same task again keeps every stage, as `orchestrate run` does.
    again = run_workflow(prepare_workflow(path, RunRequest(task="t", param_args=["goal=Add login"], offline=True)))
    assert all(stage.reused for sid, stage in again.stages.items())


def test_a_user_mistake_is_an_error_with_exit_code_2_before_anything_is_written(project: TempProject) -> None:
    path = project.workflow(FEATURE)
    with pytest.raises(OrchestrateError) as caught:
        prepare_workflow(path, RunRequest(task="t", offline=True))  # the goal param is required
    assert caught.value.exit_code == 2 and "goal" in caught.value.message
    assert not (project.root / "docs/ai").exists()
