"""The JSON Schema of the workflow file, for editors: pydantic's, made to choose one form by the keys it sees."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .document import (
    GroupedWorkflow,
    Workflow,
)


def json_schema() -> dict[str, Any]:
    """JSON Schema (Draft 2020-12) of a workflow file, either form, for editors and ``orchestrate schema``.

    It says what the loader says, in keywords that editors on older drafts (yaml-language-server
    reads Draft 7) understand too: choices the loader makes by shape are if/then/else on that
    shape, so a mistake is reported at its key instead of as "matches none of the forms".
    """
    from pydantic import TypeAdapter

    adapter: TypeAdapter[Workflow | GroupedWorkflow] = TypeAdapter(Workflow | GroupedWorkflow)
    defs: dict[str, Any] = adapter.json_schema(mode="validation")["$defs"]
    _walk_schema(defs, _keys_by_pattern)
    _walk_schema(defs, _choose_by_shape)
    # Values the loader fills in are optional in the file: name (from the file name), stage id (agent).
    for model in ("Workflow", "GroupedWorkflow"):
        defs[model]["required"].remove("name")
    defs["StageSpec"]["required"].remove("id")
    defs["Workflow"]["description"] = "Canonical form: a flat list of stages joined by needs."
    defs["GroupedWorkflow"]["description"] = "Grouped form: pipeline items and parallel groups."
    # The grouped form's items: a mapping with parallel: is a group, anything else a stage.
    defs["GroupedWorkflow"]["properties"]["pipeline"]["items"] = _if_key(
        "parallel", "#/$defs/PipelineGroup", "#/$defs/PipelineStage"
    )
    for model in ("StageSpec", "PipelineStage"):
        # The loader also takes if: under the field's own name, but not both at once.
        spec = defs[model]
        spec["properties"]["condition"] = {
            **spec["properties"]["if"],
            "title": "Condition",
            "description": "Another spelling of if (give one of them): run the stage only if this expression is "
            "true. Default: always run.",
        }
        spec["not"] = {"required": ["if", "condition"]}
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "orchestrate workflow",
        "description": "A workflow file for orchestrate: stages run by agents, joined by needs into a graph that "
        "ends in an audit. Canonical form: stages:; grouped form: pipeline:.",
        "type": "object",
        # The loader reads a file with pipeline: as the grouped form, any other as the canonical one.
        **_if_key("pipeline", "#/$defs/GroupedWorkflow", "#/$defs/Workflow"),
        "$defs": defs,
    }


def _if_key(key: str, then: str, otherwise: str) -> dict[str, Any]:
    return {"if": {"type": "object", "required": [key]}, "then": {"$ref": then}, "else": {"$ref": otherwise}}


def _walk_schema(node: Any, visit: Callable[[dict[str, Any]], None]) -> None:
    if isinstance(node, dict):
        visit(node)
        for value in node.values():
            _walk_schema(value, visit)
    elif isinstance(node, list):
        for value in node:
            _walk_schema(value, visit)


def _keys_by_pattern(node: dict[str, Any]) -> None:
    """Pydantic writes checked mapping keys as patternProperties, which lets any other key through:
    say instead that every key must match and every value fit."""
    patterns = node.get("patternProperties")
    if node.get("type") == "object" and isinstance(patterns, dict) and len(patterns) == 1:
        [(pattern, value)] = patterns.items()
        del node["patternProperties"]
        node["propertyNames"] = {"pattern": pattern}
        node["additionalProperties"] = value


def _choose_by_shape(node: dict[str, Any]) -> None:
    """A value-or-mapping union (permission levels) becomes a choice on the value's shape, as in the models."""
    options = node.get("oneOf")
    if isinstance(options, list) and len(options) == 2 and "discriminator" not in node:
        by_value, by_mapping = options
        is_mapping = by_mapping.get("type") == "object" or "$ref" in by_mapping
        if is_mapping and by_value.get("type") == "string":
            del node["oneOf"]
            node.update({"if": {"type": "object"}, "then": by_mapping, "else": by_value})
