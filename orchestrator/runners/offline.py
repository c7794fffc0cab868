"""A runner without any API: deterministic placeholders or canned replies, for free runs and tests.

``orchestrate run … --offline`` uses it so a user can try a workflow before
paying for it; tests, examples and benchmarks use it too. Replies come from a
responses mapping keyed by stage id (a string, or ``{output, latency, verdict,
fail}``); every other stage gets a placeholder that names the stage and a digest
of its prompt, so downstream stages visibly receive upstream outputs. The audit
stage passes unless a response says otherwise, and its summary says that
nothing was checked. Every request is kept in ``calls``.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Mapping
from typing import Any

from ..errors import UsageError
from . import AttemptRecord, AttemptReporter, StageFailure, StageRequest, StageResult

__all__ = ["OfflineRunner", "check_responses"]

_RESPONSE_KEYS = {"output", "latency", "verdict", "fail"}


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
                    hint="a response is a string or a mapping with output, latency, verdict, fail",
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
        if request.structured is not None:
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
        return StageResult(output=str(output), data=data, stop_reason="end_turn")
