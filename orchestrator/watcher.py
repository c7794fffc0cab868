"""Recompile workflows whenever a file they are built from changes: the library side of ``orchestrate watch``.

Owns which folders are watched, which changes matter (workflow files, anything
under ``content/instructions/``, and every file the last compile of a workflow
read), which workflows a change affects, and keeping the output folder as it
was when a compile fails. It reports what happened as typed values through a
callback and never prints, reads the working directory or exits; Ctrl-C
surfaces as ``KeyboardInterrupt`` for the caller to handle. The only module
importing ``watchfiles``.

Folders are watched one level deep and listed explicitly (the instruction
folder's subfolders included), because the folder holding a context file is
usually the project root, and watching that recursively would watch the whole
repository. When the set of folders changes (a new template folder, a context
file's folder appearing), the watch restarts and every workflow is compiled
again, since files may have appeared while no watch covered them.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import watchfiles

from .agent_config import TARGETS, Target, WriteReport
from .compiler import Compiled, compile_workflow, write_output
from .errors import OrchestrateError, ProjectError, WorkflowErrors
from .project import INSTRUCTIONS_DIR, WORKFLOWS_DIR, Project

__all__ = [
    "ChangeKind",
    "FileChange",
    "FilesChanged",
    "WatchReport",
    "WatchStarted",
    "WorkflowBuilt",
    "WorkflowDropped",
    "WorkflowFailed",
    "find_workflows",
    "is_scratch_file",
    "watch_workflows",
]

ChangeKind = Literal["added", "modified", "deleted"]

# How long the watcher waits for changes before handing control back to Python: the first hand-back
# tells us the OS watch is in place, so it also bounds how long `WatchStarted` takes to arrive.
IDLE_MS = 200

_KINDS: dict[watchfiles.Change, ChangeKind] = {
    watchfiles.Change.added: "added",
    watchfiles.Change.modified: "modified",
    watchfiles.Change.deleted: "deleted",
}
_SCRATCH_RE = re.compile(
    r"""
    ~$                  # emacs, vim and gedit backups
    | \.sw[a-p]$        # vim swap files
    | ^\.\#             # emacs lock files
    | ^\#.*\#$          # emacs autosaves
    | ^4913$            # vim's probe that the folder is writable
    | \.___jb_\w+___$   # JetBrains safe-write copies
    | ^\..*\.tmp$       # atomic-write temp files (ours, and many editors')
    | ^\.DS_Store$
    """,
    re.VERBOSE,
)


@dataclass(frozen=True)
class FileChange:
    """One changed file (or folder) that matters to a watched workflow."""

    path: Path
    kind: ChangeKind


@dataclass(frozen=True)
class WatchStarted:
    """The watch is in place: changes from now on are seen. ``restarted`` when the set of folders changed."""

    folders: tuple[Path, ...]
    restarted: bool = False


@dataclass(frozen=True)
class FilesChanged:
    """Files that matter changed; the reports of the compiles they cause follow."""

    changes: tuple[FileChange, ...]


@dataclass(frozen=True)
class WorkflowBuilt:
    """A workflow compiled and its agent files were written (``report`` says which ones changed)."""

    workflow: Path
    out_dir: Path
    report: WriteReport
    notices: tuple[str, ...]
    warnings: tuple[str, ...]
    recovered: bool  # the previous compile of this workflow failed

    @property
    def unchanged_output(self) -> bool:
        return not self.report.written and not self.report.removed


@dataclass(frozen=True)
class WorkflowFailed:
    """A workflow did not compile; its files in the output folder were left as they were."""

    workflow: Path
    error: OrchestrateError


@dataclass(frozen=True)
class WorkflowDropped:
    """A workflow file of ``workflows/`` was deleted, so it is no longer compiled (its output is left alone)."""

    workflow: Path


WatchReport = WatchStarted | FilesChanged | WorkflowBuilt | WorkflowFailed | WorkflowDropped


def is_scratch_file(name: str) -> bool:
    """Whether a file name is an editor's or a tool's temporary file, whose changes never matter."""
    return bool(_SCRATCH_RE.search(name))


def find_workflows(project: Project) -> list[Path]:
    """The workflow files of a project's ``workflows/`` folder, sorted."""
    return [p for p in project.workflow_files() if not is_scratch_file(p.name)]


def watch_workflows(
    workflows: Sequence[Path] | None,
    project: Project,
    *,
    on_report: Callable[[WatchReport], None],
    stop: threading.Event | None = None,
    out_dir: Path | None = None,
    targets: tuple[Target, ...] = TARGETS,
    debounce_ms: int = 300,
) -> None:
    """Compile ``workflows`` (None: every file of ``workflows/``, including ones added later), then recompile on change.

    Returns when ``stop`` is set; Ctrl-C raises ``KeyboardInterrupt``. Compile
    errors are reported as ``WorkflowFailed`` and never stop the watch.
    """
    _Watcher(workflows, project, on_report, stop, out_dir, targets, debounce_ms).run()


@dataclass
class _Workflow:
    path: Path
    files: frozenset[Path] = frozenset()  # files whose change recompiles it
    good_files: frozenset[Path] = frozenset()  # the files of its last successful compile
    snapshot: dict[Path, bytes | None] = field(default_factory=dict)  # their contents, to catch up after a restart
    ok: bool | None = None  # None: never compiled


class _Watcher:
    def __init__(
        self,
        workflows: Sequence[Path] | None,
        project: Project,
        on_report: Callable[[WatchReport], None],
        stop: threading.Event | None,
        out_dir: Path | None,
        targets: tuple[Target, ...],
        debounce_ms: int,
    ) -> None:
        self.project = project
        self.root = project.root.resolve()
        self.on_report = on_report
        self.stop = stop
        self.out_dir = (out_dir or project.output_dir).resolve()
        self.targets = targets
        self.debounce_ms = debounce_ms
        self.discover = workflows is None
        self.instructions = self.root / INSTRUCTIONS_DIR
        self.workflows_dir = self.root / WORKFLOWS_DIR
        paths = find_workflows(project) if workflows is None else workflows
        self.workflows = {p.resolve(): _Workflow(p.resolve()) for p in paths}
        self.missing: set[Path] = set()  # wanted folders that do not exist yet, and their missing parents

    # -- the loop ------------------------------------------------------------------------------------

    def run(self) -> None:
        self.build(self.workflows.values())
        catch_up: Literal["stale", "all"] = "stale"
        restarted = False
        while not self.stopped():
            outcome = self.watch(self.folders(), restarted, catch_up)
            if outcome == "stop":
                return
            catch_up, restarted = outcome, True

    def watch(
        self, folders: dict[Path, int], restarted: bool, catch_up: Literal["stale", "all"]
    ) -> Literal["stop", "stale", "all"]:
        """Watch ``folders`` until the set of folders to watch changes, or the watch is stopped.

        Returns "stop", or what to compile once the next watch is in place.
        """
        ready = False
        batches = watchfiles.watch(
            *folders,
            watch_filter=None,
            debounce=self.debounce_ms,
            step=min(50, self.debounce_ms),
            stop_event=self.stop,
            rust_timeout=IDLE_MS,
            yield_on_timeout=True,
            recursive=False,
        )
        try:
            for raw in batches:
                if not ready:
                    ready = True
                    # Saves made while no watch was in place were missed: compile what they may have touched.
                    self.build(self.workflows.values() if catch_up == "all" else self.stale())
                    self.on_report(WatchStarted(tuple(folders), restarted))
                changes = self.relevant(raw)
                if not changes:
                    continue
                self.on_report(FilesChanged(tuple(changes)))
                self.discover_workflows()
                if self.folders() != folders:
                    # A folder appeared (or was replaced): what it holds was never watched, so rebuild everything.
                    return "all"
                self.build(self.affected({c.path for c in changes}))
                if self.folders() != folders:
                    return "stale"
        except OSError as exc:
            # Setting up the watch (on the first batch) failed.
            if ready:
                raise
            if self.folders() != folders:
                return catch_up  # a folder vanished between listing and watching: list them again
            raise ProjectError(
                f"can't watch {', '.join(map(str, folders))}: {exc}",
                hint="check the folders' permissions; on Linux, fs.inotify.max_user_watches may be too low",
            ) from exc
        finally:
            batches.close()
        return "stop"

    def stopped(self) -> bool:
        return self.stop is not None and self.stop.is_set()

    def discover_workflows(self) -> None:
        """Follow workflow files added to or deleted from ``workflows/`` when watching all of them."""
        if not self.discover:
            return
        found = {p.resolve() for p in find_workflows(self.project)}
        for path in sorted(self.workflows.keys() - found):
            del self.workflows[path]
            self.on_report(WorkflowDropped(path))
        for path in sorted(found - self.workflows.keys()):
            self.workflows[path] = _Workflow(path)

    def affected(self, paths: set[Path]) -> list[_Workflow]:
        if any(self._under_instructions(p) and p not in self.known_files() for p in paths):
            # A template no compile has read yet may be one a workflow now picks up (it can shadow a built-in).
            return list(self.workflows.values())
        # A workflow that failed (or never compiled) may have failed on a file it never got to read.
        return [w for w in self.workflows.values() if w.files & paths or w.ok is not True]

    def known_files(self) -> frozenset[Path]:
        return frozenset().union(*(w.files for w in self.workflows.values()))

    # -- what to watch and what matters --------------------------------------------------------------

    def wanted_folders(self) -> set[Path]:
        wanted = {self.instructions}
        if self.discover:
            wanted.add(self.workflows_dir)
        for workflow in self.workflows.values():
            wanted.add(workflow.path.parent)
            wanted.update(path.parent for path in workflow.files)
        if self.instructions.is_dir():
            wanted.update(p for p in self.instructions.rglob("*") if p.is_dir())
        return wanted

    def folders(self) -> dict[Path, int]:
        """The existing folders to watch, each with its inode: a folder deleted and made again needs a new watch."""
        out: dict[Path, int] = {}
        self.missing = set()
        for folder in sorted(self.wanted_folders()):
            while True:
                try:
                    if folder.is_dir():
                        out[folder] = folder.stat().st_ino
                        break
                except OSError:
                    pass
                self.missing.add(folder)
                if folder.parent == folder:
                    break
                folder = folder.parent
        return out

    def relevant(self, raw: Iterable[tuple[watchfiles.Change, str]]) -> list[FileChange]:
        """The changes that matter, one per path, named by the file's state now rather than by raw events.

        Editors save in several steps (write a temp file and rename it over the
        original, or delete and re-create), so the events of one save can say
        "added" or "deleted" for a file that was simply modified.
        """
        kinds: dict[Path, set[ChangeKind]] = {}
        known = self.known_files()
        for change, name in raw:
            path = Path(name)
            if is_scratch_file(path.name) or path == self.out_dir or self.out_dir in path.parents:
                continue
            if (
                path in known
                or path in self.workflows
                or path in self.missing
                or self._under_instructions(path)
                or (self.discover and path.parent == self.workflows_dir and path.suffix in (".yaml", ".yml"))
            ):
                kinds.setdefault(path, set()).add(_KINDS[change])
        existed = {p for w in self.workflows.values() for p, data in w.snapshot.items() if data is not None}
        out: list[FileChange] = []
        for path, seen in sorted(kinds.items()):
            new = "added" in seen and path not in existed
            if not os.path.lexists(path):
                if not new:
                    out.append(FileChange(path, "deleted"))
                # else: made and removed within one batch, a tool's temp file
            else:
                out.append(FileChange(path, "added" if new else "modified"))
        return out

    def _under_instructions(self, path: Path) -> bool:
        return path == self.instructions or self.instructions in path.parents

    # -- compiling -----------------------------------------------------------------------------------

    def build(self, workflows: Iterable[_Workflow]) -> None:
        for workflow in sorted(workflows, key=lambda w: w.path):
            self.build_one(workflow)

    def build_one(self, workflow: _Workflow) -> None:
        try:
            compiled = compile_workflow(workflow.path, self.project, self.targets)
            report = write_output(compiled, self.out_dir)
        except OrchestrateError as exc:
            workflow.files = workflow.good_files | {workflow.path} | self._error_files(exc)
            workflow.snapshot = {path: _read(path) for path in workflow.files}
            workflow.ok = False
            self.on_report(WorkflowFailed(workflow.path, exc))
            return
        recovered = workflow.ok is False
        workflow.snapshot = self._source_snapshot(workflow, compiled)
        workflow.files = workflow.good_files = frozenset(workflow.snapshot)
        workflow.ok = True
        self.on_report(
            WorkflowBuilt(
                workflow=workflow.path,
                out_dir=self.out_dir,
                report=report,
                notices=compiled.plan.notices,
                warnings=compiled.warnings,
                recovered=recovered,
            )
        )

    def stale(self) -> list[_Workflow]:
        """Workflows whose files changed since their last compile."""
        return [w for w in self.workflows.values() if not all(_same(_read(p), d) for p, d in w.snapshot.items())]

    def _path(self, display: str) -> Path | None:
        """The file behind a name as compile shows it (relative to the root, or absolute); None for built-ins."""
        if display.startswith(("builtin/", "<")):
            return None
        path = Path(display)
        return Path(os.path.normpath(path if path.is_absolute() else self.root / path))

    def _source_snapshot(self, workflow: _Workflow, compiled: Compiled) -> dict[Path, bytes | None]:
        snapshot: dict[Path, bytes | None] = {workflow.path: compiled.plan.workflow.source.data}
        for agent in compiled.rendered:
            for display, data in agent.sources:
                path = self._path(display)
                if path is not None:
                    snapshot[path] = data
        # Files compile reads but that are not agent sources, or that don't exist yet (a context file
        # warned about as missing): creating or editing them must recompile too.
        spec = compiled.plan.workflow
        extra = [self.root / rel for rel in spec.context]
        extra += [self.root / s.output_schema for s in spec.stages if isinstance(s.output_schema, str)]
        for path in extra:
            snapshot.setdefault(Path(os.path.normpath(path)), _read(path))
        # A symlinked file changes where it points to: watch that too.
        for path in list(snapshot):
            real = path.resolve()
            if real != path:
                snapshot.setdefault(real, snapshot[path])
        return snapshot

    def _error_files(self, error: OrchestrateError) -> set[Path]:
        errors = error.errors if isinstance(error, WorkflowErrors) else [error]
        found = (self._path(e.location.file) for e in errors if e.location is not None)
        return {p for p in found if p is not None}


def _read(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError:
        return None


def _same(disk: bytes | None, seen: bytes | None) -> bool:
    """Whether a file still holds what compile read; context files are read as text (no BOM, LF endings)."""
    if disk is None or seen is None:
        return disk is seen
    return _normal(disk) == _normal(seen)


def _normal(data: bytes) -> bytes:
    return data.removeprefix(b"\xef\xbb\xbf").replace(b"\r\n", b"\n")
