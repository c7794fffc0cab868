"""The dashboard's pages: what a project's state folders hold, drawn as HTML (the home of markdown-it here).

Reads only: each task's ``state.json`` (brought up to date with its event log),
its history and its stage outputs and transcripts; writes nothing. A stage's
output is the agent's text, so it is untrusted: it is rendered from markdown
with raw HTML turned off (any tag in it is shown as text) and unsafe links
dropped, and the app's Content-Security-Policy runs no inline script anyway.
The graph is an SVG drawn here from the stages' needs, coloured by status.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from jinja2 import Environment, PackageLoader, select_autoescape
from markdown_it import MarkdownIt
from markupsafe import Markup

from ..errors import StateError
from ..state.history import TaskHistory, history_of
from ..state.model import RunState, StageState
from ..state.repository import FileRepository, observed_state

__all__ = ["Pages", "TaskRow"]

_MARKDOWN = MarkdownIt("commonmark", {"html": False, "linkify": False}).enable("table")
COLOURS = {
    "succeeded": "#2e7d32",
    "failed": "#c62828",
    "running": "#1565c0",
    "waiting_approval": "#ef6c00",
    "skipped": "#757575",
    "interrupted": "#6a1b9a",
    "pending": "#9e9e9e",
}


def _epoch(stamp: str | None) -> float | None:
    if not stamp:
        return None
    try:
        return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


@dataclass
class TaskRow:
    task: str
    workflow: str
    status: str
    started: str
    started_at: float
    duration: float | None
    requests: int
    cost_usd: float | None
    verdict: str | None
    runs: int
    error: str = ""


class Pages:
    """Renders the pages of the project whose tasks live in ``state_root``."""

    def __init__(self, state_root: Path) -> None:
        self.state_root = state_root
        self.env = Environment(
            loader=PackageLoader("orchestrator.ui", "templates"),
            autoescape=select_autoescape(["html"]),
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.env.filters["markdown"] = lambda text: Markup(_MARKDOWN.render(text or ""))
        self.env.filters["money"] = lambda v: "?" if v is None else f"${v:.4f}"
        self.env.filters["seconds"] = lambda v: "-" if v is None else f"{v:.1f} s"
        self.env.filters["k"] = lambda n: f"{n / 1000:.1f}k" if n >= 1000 else str(n)
        self.env.globals["colours"] = COLOURS

    # -- what there is ----------------------------------------------------------------------------

    def tasks(self) -> list[str]:
        try:
            return sorted(p.name for p in self.state_root.iterdir() if (p / "state.json").exists())
        except OSError:
            return []

    def folder(self, task: str) -> Path:
        folder = self.state_root / task
        if task not in self.tasks():  # only names listed from the folder: nothing outside it
            raise KeyError(task)
        return folder

    def rows(self) -> list[TaskRow]:
        rows = []
        for task in self.tasks():
            folder = self.state_root / task
            try:
                state = observed_state(folder, display=task)
                history = history_of(folder, task, task)
            except StateError as exc:
                rows.append(TaskRow(task, "?", "damaged", "", 0.0, None, 0, None, None, 0, exc.message))
                continue
            started = _epoch(state.started) or 0.0
            rows.append(
                TaskRow(
                    task,
                    state.workflow,
                    state.status,
                    time.strftime("%Y-%m-%d %H:%M", time.localtime(started)) if started else "",
                    started,
                    state.duration,
                    history.requests,
                    history.cost_usd,
                    state.audit.verdict if state.audit else None,
                    len(history.runs),
                )
            )
        return rows

    # -- pages ------------------------------------------------------------------------------------

    def tasks_page(self, *, fragment: bool = False) -> str:
        name = "_tasks_table.html" if fragment else "tasks.html"
        return self.env.get_template(name).render(rows=self.rows())

    def task_page(self, task: str, *, csrf: str, read_only: bool, fragment: bool = False) -> str:
        folder = self.folder(task)
        state = observed_state(folder, display=task)
        repository = FileRepository(folder, task)
        history: TaskHistory = history_of(folder, task, task)
        stages = [self._stage(repository, state, stage) for stage in state.stages.values()]
        name = "_task_body.html" if fragment else "task.html"
        return self.env.get_template(name).render(
            task=task,
            state=state,
            stages=stages,
            history=history,
            graph=Markup(graph_svg(state)),
            timeline=timeline(state),
            csrf=csrf,
            read_only=read_only,
            params=json.dumps(state.params, indent=2, ensure_ascii=False),
        )

    def _stage(self, repository: FileRepository, state: RunState, stage: StageState) -> dict[str, Any]:
        output = repository.output(stage.id) if stage.output else None
        return {
            "state": stage,
            "output": output,
            "transcript": _transcript(repository.stages / f"{stage.id}.transcript.jsonl"),
        }


def _transcript(path: Path) -> list[dict[str, Any]]:
    """The turns of a tool loop, each with its role and, for tool calls, their names and inputs."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError:
        return []
    turns = []
    for line in lines:
        try:
            turn = json.loads(line)
        except ValueError:
            continue
        if isinstance(turn, dict):
            content = turn.get("content")
            shown = content if isinstance(content, str) else json.dumps(content, indent=1, ensure_ascii=False)
            turns.append({"turn": turn.get("turn"), "role": turn.get("role", ""), "content": shown[:4000]})
    return turns


def timeline(state: RunState) -> list[dict[str, Any]]:
    """Each stage that ran, as a bar: its start and length as percentages of the run so far."""
    spans = []
    for stage in state.stages.values():
        start, end = _epoch(stage.started), _epoch(stage.finished)
        if start is not None:
            spans.append((stage.id, stage.status, start, end))
    if not spans:
        return []
    first = min(s[2] for s in spans)
    last = max([s[3] or time.time() for s in spans])
    total = max(last - first, 1e-3)
    return [
        {
            "id": sid,
            "status": status,
            "left": round((start - first) / total * 100, 2),
            "width": max(round(((end or last) - start) / total * 100, 2), 0.5),
            "seconds": round((end or last) - start, 2),
        }
        for sid, status, start, end in spans
    ]


def graph_svg(state: RunState) -> str:
    """The stages as boxes in columns by depth (a stage sits right of everything it needs), joined by their
    needs and filled by status. Ids are escaped: they come from the workflow file."""
    from markupsafe import escape

    depth: dict[str, int] = {}
    for sid, stage in state.stages.items():  # state.json lists stages in plan order: needs come first
        needs = [n for n in stage.needs if n in state.stages]
        if stage.instance_of is not None:
            needs = [stage.instance_of]
        depth[sid] = 1 + max((depth.get(n, 0) for n in needs), default=-1)
    columns: dict[int, list[str]] = {}
    for sid, level in depth.items():
        columns.setdefault(level, []).append(sid)
    box_w, box_h, gap_x, gap_y = 150, 34, 60, 14
    where: dict[str, tuple[int, int]] = {}
    for level, sids in columns.items():
        for row, sid in enumerate(sids):
            where[sid] = (20 + level * (box_w + gap_x), 20 + row * (box_h + gap_y))
    width = 40 + (max(columns) + 1) * (box_w + gap_x) if columns else 200
    height = 40 + max((len(s) for s in columns.values()), default=1) * (box_h + gap_y)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" class="graph" width="{width}" height="{height}" role="img">']
    for sid, stage in state.stages.items():
        x, y = where[sid]
        needs = [stage.instance_of] if stage.instance_of else stage.needs
        for need in needs:
            if need in where:
                nx, ny = where[need]
                parts.append(
                    f'<line x1="{nx + box_w}" y1="{ny + box_h / 2}" x2="{x}" y2="{y + box_h / 2}" class="edge"/>'
                )
    for sid, stage in state.stages.items():
        x, y = where[sid]
        colour = COLOURS.get(stage.status, "#9e9e9e")
        label = escape(sid if len(sid) <= 20 else sid[:19] + "…")
        parts.append(
            f'<g class="node" data-stage="{escape(sid)}" data-status="{stage.status}">'
            f'<rect x="{x}" y="{y}" width="{box_w}" height="{box_h}" rx="6" fill="{colour}"/>'
            f'<text x="{x + box_w / 2}" y="{y + box_h / 2 + 5}" text-anchor="middle">{label}</text>'
            f"<title>{escape(sid)}: {stage.status}</title></g>"
        )
    parts.append("</svg>")
    return "".join(parts)
