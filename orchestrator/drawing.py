"""Drawings of a workflow's DAG (mermaid, Graphviz dot, JSON, text) from plain data.

Kept apart from ``graph`` so that reading a saved run (``status``, the state
file) can draw its graph without planning anything or importing networkx.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

__all__ = ["FORMATS", "STATUS_STYLE", "Drawing", "render"]

FORMATS = ("mermaid", "dot", "json", "text")

STATUS_STYLE = {
    "pending": "fill:#eeeeee,stroke:#999999",
    "running": "fill:#fff3bf,stroke:#f08c00",
    "succeeded": "fill:#d3f9d8,stroke:#2f9e44",
    "failed": "fill:#ffe3e3,stroke:#e03131",
    "skipped": "fill:#f1f3f5,stroke:#adb5bd,stroke-dasharray: 4 2",
    "interrupted": "fill:#ffe8cc,stroke:#e8590c",
    "waiting_approval": "fill:#e5dbff,stroke:#7048e8",
}


@dataclass(frozen=True)
class Drawing:
    """What a drawing needs: stages in order, their needs and agents, and the audit stage."""

    name: str
    order: Sequence[str]
    needs: Mapping[str, Sequence[str]]
    agents: Mapping[str, str]
    audit_stage: str
    models: Mapping[str, str] | None = None
    waves: Sequence[Sequence[str]] = ()


def render(drawing: Drawing, fmt: str, status: Mapping[str, str] | None = None) -> str:
    """Draw as mermaid, dot, json or text; ``status`` colours mermaid nodes by stage status."""
    if fmt == "mermaid":
        return _mermaid(drawing, status or {})
    if fmt == "dot":
        return _dot(drawing)
    if fmt == "json":
        return json.dumps(
            {
                "workflow": drawing.name,
                "nodes": [
                    {"id": s, "agent": drawing.agents[s], "model": (drawing.models or {}).get(s)} for s in drawing.order
                ],
                "edges": [[need, s] for s in drawing.order for need in drawing.needs[s]],
                "waves": [list(w) for w in drawing.waves],
            },
            indent=2,
        )
    if fmt == "text":
        lines = []
        for stage_id in drawing.order:
            needs = drawing.needs[stage_id]
            after = f"  ← {', '.join(needs)}" if needs else ""
            lines.append(f"{stage_id} ({drawing.agents[stage_id]}){after}")
        return "\n".join(lines)
    raise ValueError(f"unknown drawing format {fmt!r}")


def _mermaid(drawing: Drawing, status: Mapping[str, str]) -> str:
    # Stage ids may be mermaid keywords ("end"), so nodes get positional ids and carry the id as label.
    node = {stage_id: f"s{index}" for index, stage_id in enumerate(drawing.order)}
    lines = ["flowchart TD"]
    for stage_id in drawing.order:
        label = f"{stage_id}<br/>{drawing.agents[stage_id]}"
        shape = f'{{{{"{label}"}}}}' if stage_id == drawing.audit_stage else f'["{label}"]'
        lines.append(f"    {node[stage_id]}{shape}")
    for stage_id in drawing.order:
        for need in drawing.needs[stage_id]:
            lines.append(f"    {node[need]} --> {node[stage_id]}")
    used = sorted({status[s] for s in drawing.order if status.get(s) in STATUS_STYLE})
    for name in used:
        lines.append(f"    classDef {name} {STATUS_STYLE[name]}")
    for name in used:
        members = ",".join(node[s] for s in drawing.order if status.get(s) == name)
        lines.append(f"    class {members} {name}")
    return "\n".join(lines)


def _dot(drawing: Drawing) -> str:
    lines = [f"digraph {json.dumps(drawing.name)} {{", "    rankdir=TB;"]
    for stage_id in drawing.order:
        shape = "doubleoctagon" if stage_id == drawing.audit_stage else "box"
        label = json.dumps(f"{stage_id}\n({drawing.agents[stage_id]})")
        lines.append(f"    {json.dumps(stage_id)} [label={label}, shape={shape}];")
    for stage_id in drawing.order:
        for need in drawing.needs[stage_id]:
            lines.append(f"    {json.dumps(need)} -> {json.dumps(stage_id)};")
    lines.append("}")
    return "\n".join(lines)
