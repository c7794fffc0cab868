"""``orchestrate watch``: edits recompile, broken edits leave output alone, and Ctrl-C ends it cleanly.

The watcher really runs (on a thread, or as ``python -m orchestrator watch``)
and files are edited under it; every wait polls with a deadline.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import pytest

from orchestrator.project import Project
from orchestrator.watcher import (
    FilesChanged,
    WatchReport,
    WatchStarted,
    WorkflowBuilt,
    WorkflowDropped,
    WorkflowFailed,
    is_scratch_file,
    watch_workflows,
)

from .conftest import FEATURE, CliRunner, TempProject

DEADLINE = 10.0
PLAN_OUT = "output/opencode/agents/feature-plan.md"
R = TypeVar("R", bound=WatchReport)


class Watch:
    """A watcher running on a thread, and the reports it has made so far."""

    def __init__(self) -> None:
        self.reports: list[WatchReport] = []
        self.changed = threading.Condition()
        self.stop = threading.Event()
        self.error: BaseException | None = None

    def run(self, project: Project, workflows: list[Path] | None) -> None:
        try:
            watch_workflows(workflows, project, on_report=self.add, stop=self.stop, debounce_ms=50)
        except BaseException as exc:
            self.error = exc
            with self.changed:
                self.changed.notify_all()

    def add(self, report: WatchReport) -> None:
        with self.changed:
            self.reports.append(report)
            self.changed.notify_all()

    def mark(self) -> int:
        with self.changed:
            return len(self.reports)

    def next(self, kind: type[R], after: int = 0, where: Callable[[R], bool] = lambda r: True) -> R:
        """The first report of ``kind`` made at or after index ``after``, waiting for it if needed."""
        deadline = time.monotonic() + DEADLINE
        with self.changed:
            while True:
                for report in self.reports[after:]:
                    if isinstance(report, kind) and where(report):
                        return report
                left = deadline - time.monotonic()
                if self.error is not None or left <= 0:
                    raise AssertionError(f"no {kind.__name__} report; got {self.reports}") from self.error
                self.changed.wait(left)

    def since(self, mark: int) -> list[WatchReport]:
        with self.changed:
            return self.reports[mark:]


@contextmanager
def watching(root: Path, workflows: list[Path] | None = None) -> Iterator[Watch]:
    watch = Watch()
    thread = threading.Thread(target=watch.run, args=(Project(root), workflows), daemon=True)
    thread.start()
    try:
        watch.next(WatchStarted)
        yield watch
    finally:
        watch.stop.set()
        thread.join(DEADLINE)
    assert not thread.is_alive(), "the watch did not end when its stop event was set"
    assert watch.error is None, watch.error


def wait_until(condition: Callable[[], bool], what: Callable[[], str]) -> None:
    deadline = time.monotonic() + DEADLINE
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what()}")
        time.sleep(0.02)


def save_like_an_editor(path: Path, text: str) -> None:
    """Write a temp file beside the file and rename it over it, as many editors save."""
    temp = path.with_name(f".{path.name}.swp")
    temp.write_text(text)
    os.replace(temp, path)


def output_files(root: Path) -> dict[str, tuple[bytes, int]]:
    return {
        p.relative_to(root).as_posix(): (p.read_bytes(), p.stat().st_mtime_ns)
        for p in sorted((root / "output").rglob("*"))
        if p.is_file()
    }


@pytest.fixture
def feature(project: TempProject) -> TempProject:
    project.workflow(FEATURE.replace("agents:\n", "context: [AGENTS.md]\nagents:\n", 1))
    project.template("plan.md", "# {{ agent.config_name }}\n\nPlan version 1.\n")
    project.write("AGENTS.md", "Agents version 1.\n")
    return project


def test_edits_to_templates_and_context_files_recompile_unrelated_edits_do_not(feature: TempProject) -> None:
    root = feature.root
    with watching(root) as watch:
        assert "Plan version 1." in (root / PLAN_OUT).read_text()

        mark = watch.mark()
        save_like_an_editor(root / "content/instructions/plan.md", "# {{ agent.config_name }}\n\nPlan version 2.\n")
        built = watch.next(WorkflowBuilt, mark)
        assert "opencode/agents/feature-plan.md" in built.report.written
        assert "opencode/agents/feature-build.md" not in built.report.written
        assert "Plan version 2." in (root / PLAN_OUT).read_text()
        changed = watch.next(FilesChanged, mark)
        assert [(c.path, c.kind) for c in changed.changes] == [(root / "content/instructions/plan.md", "modified")]

        # Files nothing was compiled from, in watched folders: the project root and the template folder.
        mark = watch.mark()
        (root / "notes.txt").write_text("unrelated\n")
        (root / "content/instructions/.plan.md.swp").write_text("swap\n")
        (root / "content/instructions/plan.md~").write_text("backup\n")
        (root / "AGENTS.md").write_text("Agents version 2.\n")
        watch.next(WorkflowBuilt, mark)
        reports = watch.since(mark)
        assert [type(r) for r in reports] == [FilesChanged, WorkflowBuilt], reports
        assert [c.path.name for c in reports[0].changes] == ["AGENTS.md"]  # type: ignore[union-attr]
        assert "Agents version 2." in (root / PLAN_OUT).read_text()


def test_a_broken_edit_leaves_output_alone_and_the_next_good_save_recovers(feature: TempProject) -> None:
    root = feature.root
    workflow = root / "workflows/feature.yaml"
    good = workflow.read_text()
    with watching(root) as watch:
        before = output_files(root)

        mark = watch.mark()
        workflow.write_text(good.replace("stages:\n", "stages: [\n", 1))
        failed = watch.next(WorkflowFailed, mark)
        assert failed.workflow == workflow
        assert failed.error.location is not None
        assert failed.error.location.file == "workflows/feature.yaml"
        assert failed.error.location.line is not None
        assert output_files(root) == before

        mark = watch.mark()
        workflow.write_text(good.replace("max_parallel: 4", "max_paralel: 4"))
        typo = watch.next(WorkflowFailed, mark)
        assert "max_paralel" in typo.error.message
        assert output_files(root) == before

        mark = watch.mark()
        workflow.write_text(good.replace("Write an implementation plan", "Write a plan"))
        recovered = watch.next(WorkflowBuilt, mark)
        assert recovered.recovered
        assert output_files(root).keys() == before.keys()


def test_a_template_that_does_not_exist_yet_is_picked_up_when_created(project: TempProject) -> None:
    # No content/instructions/ at all at first: creating the folder and the template must be noticed.
    project.workflow(FEATURE.replace("auditor: {model: claude-opus-5-5}", "auditor: {template: gate.md}"))
    root = project.root
    with watching(root) as watch:
        failed = watch.next(WorkflowFailed)
        assert "gate.md" in str(failed.error)
        mark = watch.mark()
        project.template("gate.md", "# {{ agent.config_name }}\n\nGate the work.\n")
        built = watch.next(WorkflowBuilt, mark)
        assert built.recovered
        assert "Gate the work." in (root / "output/opencode/agents/feature-auditor.md").read_text()


def test_watching_the_workflows_folder_follows_new_and_deleted_workflows(feature: TempProject) -> None:
    root = feature.root
    with watching(root) as watch:
        mark = watch.mark()
        second = feature.workflow("name: second\nstages: [{id: plan, agent: plan}]\n", name="second")
        watch.next(WorkflowBuilt, mark, where=lambda r: r.workflow == second)
        assert (root / "output/opencode/agents/second-plan.md").is_file()

        mark = watch.mark()
        second.unlink()
        watch.next(WorkflowDropped, mark)


def test_only_named_workflows_are_watched(feature: TempProject) -> None:
    root = feature.root
    other = feature.workflow("name: other\nstages: [{id: plan, agent: plan}]\n", name="other")
    with watching(root, [root / "workflows/feature.yaml"]) as watch:
        assert not (root / "output/opencode/agents/other-plan.md").exists()
        mark = watch.mark()
        other.write_text("name: other\nstages: [{id: plan, agent: quick-edits}]\n")
        (root / "AGENTS.md").write_text("Agents version 3.\n")
        watch.next(WorkflowBuilt, mark)
        assert [c.path.name for c in watch.next(FilesChanged, mark).changes] == ["AGENTS.md"]


@pytest.mark.parametrize(
    ("name", "scratch"),
    [
        (".plan.md.swp", True),
        ("plan.md~", True),
        (".#plan.md", True),
        ("4913", True),
        (".feature.yaml.abc123.tmp", True),
        ("plan.md", False),
        ("feature.yaml", False),
        ("AGENTS.md", False),
    ],
)
def test_editor_scratch_files_are_recognised(name: str, scratch: bool) -> None:
    assert is_scratch_file(name) is scratch


class Process:
    """``orchestrate ARGS`` as a subprocess, its output collected line by line as it comes."""

    def __init__(self, *args: str, cwd: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "orchestrator", *args],
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        self.out: list[str] = []
        self.err: list[str] = []
        self.readers = [
            threading.Thread(target=self.read, args=(self.proc.stdout, self.out), daemon=True),
            threading.Thread(target=self.read, args=(self.proc.stderr, self.err), daemon=True),
        ]
        for reader in self.readers:
            reader.start()

    @staticmethod
    def read(stream: Any, lines: list[str]) -> None:
        for line in stream:
            lines.append(line.rstrip("\n"))

    def wait_for(self, lines: list[str], pattern: str, after: int = 0) -> str:
        wait_until(
            lambda: any(re.search(pattern, line) for line in lines[after:]) or self.proc.poll() is not None,
            lambda: f"{pattern!r} in the output; stdout={self.out} stderr={self.err}",
        )
        found = [line for line in lines[after:] if re.search(pattern, line)]
        assert found, f"{pattern!r} not printed before exit; stdout={self.out} stderr={self.err}"
        return found[0]


def test_the_command_prints_each_recompile_and_stops_cleanly_on_ctrl_c(feature: TempProject) -> None:
    root = feature.root
    workflow = root / "workflows/feature.yaml"
    good = workflow.read_text()
    watch = Process("watch", "--debounce", "50", cwd=root)
    try:
        watch.wait_for(watch.out, r"^Compiled workflows/feature\.yaml → output/: 10 written")
        watch.wait_for(watch.out, r"^Watching ")

        mark = len(watch.out)
        (root / "content/instructions/plan.md").write_text("# {{ agent.config_name }}\n\nPlan version 2.\n")
        watch.wait_for(watch.out, r"modified: content/instructions/plan\.md$", mark)
        watch.wait_for(watch.out, rf"^  wrote    {PLAN_OUT}$", mark)
        watch.wait_for(watch.out, r"^Compiled workflows/feature\.yaml → output/: 2 written, 8 unchanged", mark)

        before = output_files(root)
        mark, err_mark = len(watch.out), len(watch.err)
        workflow.write_text(good.replace("stages:\n", "stages: [\n", 1))
        error = watch.wait_for(watch.err, r"^Error: ", err_mark)
        assert re.match(r"Error: workflows/feature\.yaml:\d+:\d+: invalid YAML", error), error
        watch.wait_for(watch.err, r"^  hint: ", err_mark)
        watch.wait_for(watch.err, r"not compiled, output files left as they were", err_mark)
        assert output_files(root) == before

        mark = len(watch.out)
        workflow.write_text(good)
        watch.wait_for(watch.out, r"^workflows/feature\.yaml compiles again\.$", mark)
        watch.wait_for(watch.out, r"^workflows/feature\.yaml: no changes to output/$", mark)

        watch.proc.send_signal(signal.SIGINT)
        assert watch.proc.wait(DEADLINE) == 0
    finally:
        if watch.proc.poll() is None:
            watch.proc.kill()
        watch.proc.wait(DEADLINE)
    for reader in watch.readers:
        reader.join(DEADLINE)
    assert watch.out[-1] == "Stopped watching."
    assert not any("Traceback" in line or "Interrupted" in line for line in watch.err), watch.err


def test_watch_without_workflows_is_refused(tmp_path: Path, cli: CliRunner) -> None:
    result = cli("watch", cwd=tmp_path)
    assert result.code == 2
    assert result.err.startswith("Error: no workflow files (*.yaml, *.yml) in workflows/")
    assert "orchestrate init" in result.err


def test_watch_of_a_missing_workflow_is_refused(feature: TempProject, cli: CliRunner) -> None:
    result = cli("watch", "workflows/featur.yaml", cwd=feature.root)
    assert result.code == 2
    assert "does not exist" in result.err


def test_watch_refuses_workflows_of_two_projects(feature: TempProject, cli: CliRunner) -> None:
    other = feature.write("examples/x/workflows/x.yaml", "name: x\nstages: [{id: plan, agent: plan}]\n")
    result = cli("watch", "workflows/feature.yaml", str(other), cwd=feature.root)
    assert result.code == 2
    assert result.err.startswith("Error: the workflows belong to different projects: ./, examples/x/")
