"""The Messages API request body of a stage, shaped by what its model accepts (``models``).

One function builds the body the runner streams, the batch path submits and
``plan`` counts tokens for, so all three send the same thing. What it sends:

- ``system``: the workflow brief (shared by every agent of the workflow) and the
  agent's own instructions, each a cache breakpoint, so stages of one agent read
  both from the prompt cache and stages of other agents read the brief;
- ``tools`` when the stage has any, and then a top-level ``cache_control`` that
  caches the growing conversation of its tool loop turn to turn;
- ``output_config.format`` for a structured reply (the audit verdict or an
  ``output_schema``) on models with structured outputs, with the schema reduced
  to what the API compiles (``api_schema``); elsewhere the reply is asked for in
  the text and checked locally, as it always is;
- ``output_config.effort`` and ``thinking`` only when the workflow sets them.

It never sends a forced ``tool_choice``, sampling parameters or an assistant
prefill: current models refuse them. Pure: no SDK import and no I/O.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Mapping
from typing import Any

from .models import facts_for, thinking_field
from .runners import StageRequest

__all__ = ["CACHE", "api_schema", "prefix_key", "request_body"]

CACHE: dict[str, str] = {"type": "ephemeral"}

# JSON Schema keywords structured outputs compile; anything else is moved into the description (and still
# checked locally against the full schema), as Anthropic's SDKs do.
_STRING_FORMATS = frozenset(
    {"date-time", "time", "date", "duration", "email", "hostname", "uri", "ipv4", "ipv6", "uuid"}
)
_KEPT = frozenset(
    {
        "type",
        "properties",
        "required",
        "additionalProperties",
        "items",
        "enum",
        "const",
        "anyOf",
        "allOf",
        "$ref",
        "$defs",
        "definitions",
        "default",
        "description",
        "title",
        "format",
        "pattern",
        "minItems",
    }
)
_DROPPED = frozenset({"$schema", "$id", "$comment", "examples"})


def system_blocks(request: StageRequest) -> list[dict[str, Any]]:
    blocks = []
    if request.brief:
        blocks.append({"type": "text", "text": request.brief, "cache_control": CACHE})
    blocks.append({"type": "text", "text": request.system, "cache_control": CACHE})
    return blocks


def request_body(request: StageRequest, tools: list[dict[str, Any]]) -> dict[str, Any]:
    """The body of the stage's first request (a tool loop appends turns to ``messages``)."""
    facts = facts_for(request.model)
    body: dict[str, Any] = {
        "model": request.model,
        "max_tokens": request.max_tokens,
        "system": system_blocks(request),
        "messages": [{"role": "user", "content": request.prompt}],
    }
    if tools:
        body["tools"] = tools
        body["cache_control"] = CACHE  # the conversation grows turn to turn: cache it at its last block
    thinking = thinking_field(facts, request.thinking)
    if thinking is not None:
        body["thinking"] = thinking
    output_config: dict[str, Any] = {}
    if request.effort is not None:
        output_config["effort"] = request.effort
    if request.output_schema is not None and facts.structured_outputs:
        schema = api_schema(request.output_schema)
        if schema is not None:
            output_config["format"] = {"type": "json_schema", "schema": schema}
    if output_config:
        body["output_config"] = output_config
    return body


def prefix_key(body: Mapping[str, Any]) -> str:
    """What makes two requests share a cached prefix: model, tools, system and the settings that change
    the cache above the messages (the output format adds a system prompt of its own)."""
    parts = [
        body.get("model"),
        body.get("tools"),
        body.get("system"),
        (body.get("output_config") or {}).get("format"),
    ]
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode("utf-8")).hexdigest()


def api_schema(schema: Mapping[str, Any]) -> dict[str, Any] | None:
    """``schema`` as structured outputs accept it, or None when it can't be expressed there.

    Objects get ``additionalProperties: false`` (the API requires it); keywords the API does not
    compile (``minimum``, ``maxLength``, ...) move into the description; ``oneOf`` becomes
    ``anyOf``. A schema whose objects allow other properties, or that refers to itself, is
    returned as None: such a reply is asked for in the text and checked locally instead.
    """
    out = copy.deepcopy(dict(schema))
    defs = {**(out.get("$defs") or {}), **(out.get("definitions") or {})}
    if _recursive(defs):
        return None
    try:
        strict: dict[str, Any] = _strict(out)
    except _Unsupported:
        return None
    return strict


class _Unsupported(Exception):
    pass


def _strict(node: Any) -> Any:
    if isinstance(node, list):
        return [_strict(item) for item in node]
    if not isinstance(node, dict):
        return node
    moved: dict[str, Any] = {}
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _DROPPED:
            continue
        if key == "oneOf":
            out["anyOf"] = _strict(value)
        elif key in ("properties", "$defs", "definitions"):
            out[key] = {name: _strict(sub) for name, sub in value.items()} if isinstance(value, dict) else value
        elif (key == "format" and value not in _STRING_FORMATS) or (key == "minItems" and value not in (0, 1)):
            moved[key] = value
        elif key == "additionalProperties" and value is not False:
            raise _Unsupported
        elif key in _KEPT:
            out[key] = _strict(value) if key in ("items", "anyOf", "allOf") else value
        else:
            moved[key] = value
    if out.get("type") == "object" or "properties" in out:
        out["additionalProperties"] = False
    if moved:
        note = "{" + ", ".join(f"{key}: {json.dumps(value)}" for key, value in moved.items()) + "}"
        out["description"] = f"{out['description']}\n\n{note}" if out.get("description") else note
    return out


def _recursive(defs: Mapping[str, Any]) -> bool:
    """Whether a definition refers to itself, directly or through others (structured outputs refuse that)."""

    def refs(node: Any) -> set[str]:
        found: set[str] = set()
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str):
                found.add(ref.rsplit("/", 1)[-1])
            for value in node.values():
                found |= refs(value)
        elif isinstance(node, list):
            for value in node:
                found |= refs(value)
        return found

    edges = {name: refs(body) for name, body in defs.items()}

    safe: set[str] = set()  # explored without finding a cycle

    def cycle(name: str, path: frozenset[str]) -> bool:
        if name in path:
            return True
        if name in safe:
            return False
        if any(cycle(nxt, path | {name}) for nxt in edges.get(name, ())):
            return True
        safe.add(name)
        return False

    return any(cycle(name, frozenset()) for name in edges)
