"""Pydantic models of the workflow file, in its canonical and grouped forms.

Owns the shape of the YAML and every rule that needs no other stage to check
(names, ids, paths, types). Cross-stage rules (unknown needs, cycles, the
audit stage) belong to ``graph``. No I/O here: the loader gives us data, and
a ``SourceMap`` so later checks can point at the line a value came from.

    fields.py     names, ids, paths: constants, validators, field types
    settings.py   params, defaults, prices, permissions, agents, budget, audit policy
    stages.py     a stage: StageSpec and what it does besides its text
    document.py   Workflow and GroupedWorkflow, and the SourceMap of where values were written
    schema.py     the JSON Schema for editors
"""

from __future__ import annotations

from .document import UNION_TAGS, GroupedWorkflow, PipelineGroup, PipelineStage, SourceMap, Workflow
from .fields import AUDITOR_AGENT, DEFAULT_MODEL, ID_RE, TOOL_NAMES
from .schema import json_schema
from .settings import (
    AgentSpec,
    AuditPolicy,
    Budget,
    ClaudeOptions,
    Defaults,
    OpenCodeOptions,
    OpenCodePermission,
    ParamSpec,
    Permissions,
    Price,
    StageKind,
)
from .stages import StageSpec

__all__ = [
    "AUDITOR_AGENT",
    "DEFAULT_MODEL",
    "ID_RE",
    "TOOL_NAMES",
    "UNION_TAGS",
    "AgentSpec",
    "AuditPolicy",
    "Budget",
    "ClaudeOptions",
    "Defaults",
    "GroupedWorkflow",
    "OpenCodeOptions",
    "OpenCodePermission",
    "ParamSpec",
    "Permissions",
    "PipelineGroup",
    "PipelineStage",
    "Price",
    "SourceMap",
    "StageKind",
    "StageSpec",
    "Workflow",
    "json_schema",
]
