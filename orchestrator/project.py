"""The resolved paths of a project, and the one check that keeps paths inside it.

A project is the folder holding ``workflows/``, ``content/instructions/``,
``output/`` and ``docs/ai/``. The CLI finds it (from the workflow's location or
``--root``); the library only receives a ``Project`` and never reads the cwd.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .errors import ProjectError

__all__ = ["INSTRUCTIONS_DIR", "OUTPUT_DIR", "STATE_DIR", "WORKFLOWS_DIR", "Project", "find_project"]

INSTRUCTIONS_DIR = "content/instructions"
OUTPUT_DIR = "output"
STATE_DIR = "docs/ai"
WORKFLOWS_DIR = "workflows"


@dataclass(frozen=True)
class Project:
    root: Path
    # Where the key that signs decisions on gates is kept (outside the project; see ``state.keys``). The CLI
    # sets it from the user's environment; None: decisions are neither signed nor checked.
    keys: Path | None = None

    @property
    def instructions_dir(self) -> Path:
        return self.root / INSTRUCTIONS_DIR

    @property
    def output_dir(self) -> Path:
        return self.root / OUTPUT_DIR

    @property
    def state_root(self) -> Path:
        return self.root / STATE_DIR

    def workflow_files(self) -> list[Path]:
        """The workflow files of ``workflows/`` (``*.yaml``, ``*.yml``), sorted; hidden names are editors'
        lock and swap files, not workflows."""
        folder = self.root / WORKFLOWS_DIR
        if not folder.is_dir():
            return []
        return sorted(
            p for p in folder.iterdir() if p.suffix in (".yaml", ".yml") and not p.name.startswith(".") and p.is_file()
        )

    def display(self, path: Path) -> str:
        """``path`` as users see it in messages and markers: relative to the root when inside it."""
        try:
            return path.resolve().relative_to(self.root.resolve()).as_posix()
        except ValueError:
            return str(path)

    def inside(self, path: Path, *, what: str) -> Path:
        """``path`` resolved (symlinks included); refuse it when it leaves the project."""
        resolved = path.resolve()
        if not resolved.is_relative_to(self.root.resolve()):
            raise ProjectError(
                f"{what} {path} resolves to {resolved}, outside the project {self.root}",
                hint="keep files of a project inside its folder (check for '..' and symlinks)",
            )
        return resolved


def find_project(workflow_path: Path, root: Path | None = None) -> Project:
    """The project a workflow belongs to: ``root`` when given, else the folder holding ``workflows/``.

    ``workflows/feature.yaml`` belongs to ``.``; ``examples/x/workflow.yaml`` to ``examples/x``.
    """
    if root is not None:
        if not root.is_dir():
            raise ProjectError(f"project root {root} is not a folder")
        return Project(root.resolve())
    folder = workflow_path.resolve().parent
    if folder.name == WORKFLOWS_DIR:
        folder = folder.parent
    return Project(folder)
