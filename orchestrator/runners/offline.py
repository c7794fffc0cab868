"""A runner without any API: deterministic placeholders or canned replies, for free runs and tests.

``orchestrate run … --offline`` uses it so a user can try a workflow before
paying for it; tests, examples and benchmarks use it too. Replies come from a
responses mapping keyed by stage id (a string, or ``{output, latency, verdict,
fail, data}``); every other stage gets a placeholder that names the stage and a
digest of its prompt, so downstream stages visibly receive upstream outputs. A
stage with an ``output_schema`` gets ``data`` or a sample built from its schema
(two items per list, so a ``foreach`` over it fans out). The audit stage passes
unless a response says otherwise, and its summary says that nothing was
checked. Tools are never called. Every request is kept in ``calls``.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import Mapping
from typing import Any

from ..errors import UsageError
from . import AttemptRecord, AttemptReporter, StageFailure, StageRequest, StageResult

__all__ = ["OfflineRunner", "check_responses", "sample_of"]

_RESPONSE_KEYS = {"output", "latency", "verdict", "fail", "data"}


def check_responses(responses: Mapping[str, Any], stages: Mapping[str, Any], source: str) -> None:
    """Refuse responses for unknown stages or with unknown keys, before anything runs."""
    for stage_id, value in responses.items():
        if stage_id not in stages:
            raise UsageError(
                f"{source}: no stage {stage_id!r} in this workflow", hint="keys are stage ids: " + ", ".join(stages)
            )
        if isinstance(value, Mapping):
            unknown = set(value) - _RESPONSE_KEYS
            if unknown:
                raise UsageError(
                    f"{source}: stage {stage_id!r} has unknown keys {', '.join(sorted(unknown))}",
                    hint="a response is a string or a mapping with output, data, latency, verdict, fail",
                )
        elif not isinstance(value, str):
            raise UsageError(f"{source}: the response of stage {stage_id!r} must be a string or a mapping")


class OfflineRunner:
    """Answers every stage locally after ``latency`` seconds (one number, or per stage id)."""

    def __init__(self, responses: Mapping[str, Any] | None = None, latency: float | Mapping[str, float] = 0.0) -> None:
        self.responses = {k: dict(v) if isinstance(v, Mapping) else v for k, v in (responses or {}).items()}
        self.latency = dict(latency) if isinstance(latency, Mapping) else latency
        self.calls: list[StageRequest] = []

    def _latency(self, stage_id: str, response: Any) -> float:
        if isinstance(response, dict) and "latency" in response:
            return float(response["latency"])
        if isinstance(self.latency, dict):
            return float(self.latency.get(stage_id, 0.0))
        return float(self.latency)

    async def run(self, request: StageRequest, report: AttemptReporter) -> StageResult:
        # Kept lean: benchmarks use this runner to measure the engine, so its own cost must be small.
        self.calls.append(request)
        response = self.responses.get(request.stage_id)
        started = time.time()
        clock = time.monotonic()
        await asyncio.sleep(self._latency(request.stage_id, response))
        failure = response.get("fail") if isinstance(response, dict) else None
        report(
            AttemptRecord(number=1, started=started, duration=round(time.monotonic() - clock, 3), error=failure or None)
        )
        if failure:
            raise StageFailure(str(failure))
        output = response.get("output") if isinstance(response, dict) else response
        if output is None:
            digest = hashlib.sha256(request.prompt.encode()).hexdigest()[:12]
            output = (
                f"Offline placeholder for stage `{request.stage_id}` ({request.agent}, {request.model}), "
                f"task `{request.task}`. No model was called. Prompt digest: {digest}."
            )
        data: dict[str, Any] | None = None
        if request.verdict:
            verdict = response.get("verdict") if isinstance(response, dict) else None
            data = (
                dict(verdict)
                if isinstance(verdict, Mapping)
                else {
                    "verdict": "pass",
                    "summary": "Offline run: no model audited anything; this pass only means every stage ran.",
                    "findings": [],
                    "checklist": [],
                }
            )
        elif request.output_schema is not None:
            given = response.get("data") if isinstance(response, dict) else None
            sample = given if isinstance(given, Mapping) else sample_of(request.output_schema, request.stage_id)
            data = dict(sample) if isinstance(sample, Mapping) else None
            if not (isinstance(response, dict) and "output" in response):
                output = json.dumps(data, indent=2)
        return StageResult(output=str(output), data=data, stop_reason="end_turn")


def sample_of(schema: Mapping[str, Any], label: str, depth: int = 0) -> Any:
    """A small value that fits ``schema``: what an offline run hands on in place of a model's structured reply."""
    if depth > 8:
        return None
    for key in ("const",):
        if key in schema:
            return schema[key]
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return schema["enum"][0]
    if "default" in schema:
        return schema["default"]
    examples = schema.get("examples")
    if isinstance(examples, list) and examples:  # the author's own example makes the best offline stand-in
        return examples[0]
    for key in ("anyOf", "oneOf", "allOf"):
        options = schema.get(key)
        if isinstance(options, list) and options and isinstance(options[0], Mapping):
            return sample_of(options[0], label, depth + 1)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), kind[0] if kind else None)
    properties = schema.get("properties")
    if kind == "object" or (kind is None and isinstance(properties, Mapping)):
        out: dict[str, Any] = {}
        for name, sub in (properties or {}).items():
            if isinstance(sub, Mapping):
                out[name] = sample_of(sub, f"{label}.{name}", depth + 1)
        return out
    if kind == "array":
        items = schema.get("items")
        count = max(2, int(schema.get("minItems", 0) or 0))
        if "maxItems" in schema:
            count = min(count, int(schema["maxItems"]))
        if not isinstance(items, Mapping):
            return [f"offline-{label}.{i}" for i in range(count)]
        return [sample_of(items, f"{label}.{i}", depth + 1) for i in range(count)]
    if kind == "integer":
        return int(schema.get("minimum", 1))
    if kind == "number":
        return float(schema.get("minimum", 1))
    if kind == "boolean":
        return True
    if kind == "null":
        return None
    text = f"offline-{label}"
    minimum = int(schema.get("minLength", 0) or 0)
    return text.ljust(minimum, ".")
