"""A new project's starting files: a starter workflow, its JSON Schema and copies of the shipped templates.

Owns what ``init`` writes and the rule that it never replaces a file a user may
have edited unless asked to. It must not print, read the working directory or
decide what to tell the user next: it returns a ``Scaffold`` describing what it
did and the CLI says it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Literal

from .errors import ProjectError
from .fileio import atomic_write
from .project import INSTRUCTIONS_DIR, STATE_DIR, WORKFLOWS_DIR

__all__ = ["STARTER_WORKFLOW", "FileAction", "Scaffold", "ScaffoldFile", "default_templates", "init_project"]

FileAction = Literal["created", "unchanged", "kept", "overwritten"]

STARTER_PATH = f"{WORKFLOWS_DIR}/feature.yaml"
SCHEMA_PATH = f"{WORKFLOWS_DIR}/workflow.schema.json"  # what the starter's first line points editors at
GITIGNORE_LINE = f"{STATE_DIR}/"

STARTER_WORKFLOW = """\
# yaml-language-server: $schema=workflow.schema.json
# A starter workflow: plan a feature, build backend and frontend in parallel, integrate them, audit.
# Edit it freely; `orchestrate validate workflows/feature.yaml` checks every change.
version: 1                    # the file format; 1 is the only one so far
name: feature                 # names the generated agents: feature-plan, feature-backend, ...
description: Plan a feature, build backend and frontend in parallel, integrate them, and audit the result.

# Launch-time inputs: `orchestrate run ... --param goal="..."`; prompts read them as {{ params.goal }}.
params:
  goal:
    description: What to build.
    required: true

# What every agent and stage gets unless it says otherwise.
defaults:
  model: claude-sonnet-5-5    # a current Claude model id; `orchestrate validate` says what a model refuses
  max_parallel: 2             # stages running at once; 1 runs them strictly one after another
  # effort: medium            # how hard models think: low, medium, high, xhigh or max (unset: the model's own)

# Files every agent is given before its own instructions (cached once for all of them). Uncomment once they
# exist (missing ones are warned about).
# context: [AGENTS.md, README.md]

# Settings per agent. An agent's instructions are the Jinja template content/instructions/<agent>.md
# (`orchestrate init` copied the defaults there: edit them), or the built-in default when that file is missing.
agents:
  plan:
    model: claude-opus-5-5
    description: Breaks the goal into a plan the other stages carry out.
  backend:
    description: Builds the server side of the plan, with tests.
  frontend:
    description: Builds the user-facing side of the plan, with tests.
  build:
    description: Joins the backend and frontend work and runs every check.
  auditor:
    model: claude-opus-5-5
    description: Checks the finished work against the goal and the plan before anyone calls it done.

# The graph. A stage starts once every stage in its `needs` has succeeded; stages whose needs are
# met at the same time run in parallel. A stage without a prompt works from its needs' outputs.
stages:
  - id: plan
    agent: plan
    prompt: "Write an implementation plan for: {{ params.goal }}"
  - id: backend               # backend and frontend both need only the plan: they run side by side
    agent: backend
    needs: [plan]
  - id: frontend
    agent: frontend
    needs: [plan]
  - id: integrate
    agent: build
    needs: [backend, frontend]
  - id: audit                 # every workflow ends in one audit stage; a failing audit fails the run
    agent: auditor
    needs: [integrate]
"""


@dataclass(frozen=True)
class ScaffoldFile:
    """One file ``init`` looked at, relative to the project root, and what it did with it."""

    path: str
    action: FileAction


@dataclass(frozen=True)
class Scaffold:
    """What ``init_project`` did."""

    root: Path
    workflow: str  # the starter workflow, relative to the root
    files: tuple[ScaffoldFile, ...]
    gitignore: Literal["added", "present"] | None  # None: not asked to touch .gitignore
    in_git: bool  # whether the root is inside a git repository (state and output/ are meant to be committed)


def default_templates() -> dict[str, bytes]:
    """The agent templates shipped with the package, by file name.

    Partials (``_*.md``) are left out: the shipped templates include them as
    ``builtin/_name.md``, so a project copy would never be used.
    """
    folder = resources.files("orchestrator").joinpath("defaults", "instructions")
    return {
        item.name: item.read_bytes()
        for item in sorted(folder.iterdir(), key=lambda i: i.name)
        if item.name.endswith(".md") and not item.name.startswith("_") and item.is_file()
    }


def init_project(root: Path, *, force: bool = False, gitignore: bool = False) -> Scaffold:
    """Write the starter workflow and the default templates into ``root``; existing files are kept unless ``force``.

    Raises ``ProjectError`` when ``root`` is missing, not a folder or not writable,
    or a file can't be written.
    """
    _check_root(root)
    from .workflow import json_schema  # pydantic's schema: only init pays for building it

    wanted = {STARTER_PATH: STARTER_WORKFLOW.encode()}
    wanted[SCHEMA_PATH] = (json.dumps(json_schema(), indent=2) + "\n").encode()
    wanted.update({f"{INSTRUCTIONS_DIR}/{name}": data for name, data in default_templates().items()})
    files = tuple(_place(root, rel, data, force=force) for rel, data in wanted.items())
    ignored = _add_gitignore(root) if gitignore else None
    return Scaffold(
        root=root, workflow=STARTER_PATH, files=files, gitignore=ignored, in_git=_inside_git(root.resolve())
    )


def _check_root(root: Path) -> None:
    if not root.exists():
        raise ProjectError(
            f"{root} does not exist", hint=f"create it first (mkdir -p {root}), or pass --root an existing folder"
        )
    if not root.is_dir():
        raise ProjectError(f"{root} is not a folder", hint="pass --root the project folder")
    if not os.access(root, os.W_OK | os.X_OK):
        raise ProjectError(f"{root} is not writable", hint="check the folder's permissions, or pass --root another one")


def _place(root: Path, rel: str, data: bytes, *, force: bool) -> ScaffoldFile:
    path = root / rel
    action: FileAction = "created"
    if path.exists() or path.is_symlink():
        if not path.is_file():
            raise ProjectError(f"{path} exists and is not a file", hint="move it away and run init again")
        existing = _read(path)
        if existing.replace(b"\r\n", b"\n") == data:
            return ScaffoldFile(rel, "unchanged")
        if not force:
            return ScaffoldFile(rel, "kept")
        action = "overwritten"
    _write(path, data)
    return ScaffoldFile(rel, action)


def _add_gitignore(root: Path) -> Literal["added", "present"]:
    path = root / ".gitignore"
    text = _read(path).decode("utf-8", errors="replace") if path.exists() else ""
    forms = {GITIGNORE_LINE, GITIGNORE_LINE.rstrip("/"), "/" + GITIGNORE_LINE, "/" + GITIGNORE_LINE.rstrip("/")}
    if any(line.strip() in forms for line in text.splitlines()):
        return "present"
    if text and not text.endswith("\n"):
        text += "\n"
    _write(path, (text + GITIGNORE_LINE + "\n").encode())
    return "added"


def _inside_git(folder: Path) -> bool:
    # `.git` is a file in worktrees and submodules, so any entry of that name counts.
    return any((candidate / ".git").exists() for candidate in (folder, *folder.parents))


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ProjectError(f"can't read {path}: {exc.strerror or exc}") from exc


def _write(path: Path, data: bytes) -> None:
    try:
        atomic_write(path, data)
    except OSError as exc:
        raise ProjectError(
            f"can't write {exc.filename or path}: {exc.strerror or exc}",
            hint="check the folder's permissions and free space",
        ) from exc
