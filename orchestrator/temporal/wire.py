"""The values a run on Temporal sends between its workflow and its activities, as plain JSON.

Every activity takes and returns JSON-ready dicts and lists, made and read
here, so what crosses a worker boundary is explicit and versioned with the
package rather than left to a converter's guesses about dataclasses: stage
requests, stage inputs, progress (the outcomes a request reads), kept outputs,
decisions, attempts and events (outputs included: the home writes them). Pure
functions; no Temporal import.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, replace
from typing import Any

from ..audit import Finding
from ..events import Event, StageReused, StageSucceeded, from_json, to_json
from ..fingerprint import Recalled
from ..run.outcomes import Decision, Instance, Progress, StageInput, StageOutcome
from ..runners import AttemptRecord, ShellCommand, StageRequest, Usage

__all__ = [
    "attempt_from_wire",
    "attempt_to_wire",
    "decision_from_wire",
    "decision_to_wire",
    "event_from_wire",
    "event_to_wire",
    "feedback_from_wire",
    "feedback_to_wire",
    "input_from_wire",
    "input_to_wire",
    "progress_from_wire",
    "progress_to_wire",
    "recalled_from_wire",
    "recalled_to_wire",
    "request_from_wire",
    "request_to_wire",
]

Wire = dict[str, Any]


def request_to_wire(request: StageRequest) -> Wire:
    return asdict(request)


def request_from_wire(data: Wire) -> StageRequest:
    values = dict(data)
    command = values.get("command")
    if command is not None:
        values["command"] = ShellCommand(
            command["command"], tuple((str(k), str(v)) for k, v in command["env"]), command["cwd"]
        )
    for name in ("tools", "bash", "writes"):
        values[name] = tuple(values.get(name) or ())
    return StageRequest(**values)


def input_to_wire(stage_input: StageInput) -> Wire:
    return {
        "request": request_to_wire(stage_input.request) if stage_input.request is not None else None,
        "inputs": dict(stage_input.inputs),
        "fingerprint": stage_input.fingerprint,
        "min_tokens": stage_input.min_tokens,
        "settles": stage_input.settle is not None,
    }


def input_from_wire(data: Wire) -> tuple[StageInput, bool]:
    """The input, and whether it is settled once the stage has acted (``StageInput.settle`` on its home)."""
    request = request_from_wire(data["request"]) if data["request"] is not None else None
    return StageInput(request, dict(data["inputs"]), data["fingerprint"], data["min_tokens"]), bool(data["settles"])


def attempt_to_wire(attempt: AttemptRecord) -> Wire:
    return asdict(attempt)


def attempt_from_wire(data: Wire) -> AttemptRecord:
    return AttemptRecord(**{**data, "usage": Usage(**data["usage"])})


def _outcome_from_wire(data: Wire) -> StageOutcome:
    return StageOutcome(**{**data, "usage": Usage(**data["usage"])})


def feedback_to_wire(feedback: Mapping[str, list[Finding]]) -> Wire:
    """Findings the audit sent stages back with."""
    return {sid: [f.model_dump() for f in found] for sid, found in feedback.items()}


def feedback_from_wire(data: Wire) -> dict[str, list[Finding]]:
    return {sid: [Finding.model_validate(f) for f in found] for sid, found in data.items()}


def progress_to_wire(progress: Progress, stages: Iterable[str]) -> Wire:
    """What a request of ``stages``' reader can see: their outcomes, and the run's findings, decisions,
    instances and contract notes."""
    return {
        "outcomes": {sid: asdict(progress.outcomes[sid]) for sid in stages if sid in progress.outcomes},
        "feedback": feedback_to_wire(progress.feedback),
        "decisions": {sid: decision_to_wire(d) for sid, d in progress.decisions.items()},
        "round": progress.round,
        "instances": {sid: asdict(i) for sid, i in progress.instances.items()},
        "contract": dict(progress.contract),
    }


def progress_from_wire(data: Wire) -> Progress:
    return Progress(
        outcomes={sid: _outcome_from_wire(o) for sid, o in data["outcomes"].items()},
        feedback=feedback_from_wire(data["feedback"]),
        decisions={sid: Decision(**d) for sid, d in data["decisions"].items()},
        round=data["round"],
        instances={sid: Instance(**i) for sid, i in data["instances"].items()},
        contract=dict(data["contract"]),
    )


def recalled_to_wire(recalled: Recalled | str) -> Wire:
    if isinstance(recalled, str):
        return {"runs": recalled}
    return {"kept": asdict(recalled)}


def recalled_from_wire(data: Wire) -> Recalled | str:
    if "runs" in data:
        return str(data["runs"])
    return Recalled(**data["kept"])


def decision_to_wire(decision: Decision | None) -> Wire | None:
    return asdict(decision) if decision is not None else None


def decision_from_wire(data: Wire | None) -> Decision | None:
    return Decision(**data) if data is not None else None


def event_to_wire(event: Event) -> Wire:
    """The event as its log line has it, with the output a stage wrote (the home writes it to its file)."""
    out = to_json(event)
    if isinstance(event, StageSucceeded | StageReused):
        out["output"] = event.output
    return out


def event_from_wire(data: Wire) -> Event:
    event = from_json(data)
    if isinstance(event, StageSucceeded | StageReused):
        event = replace(event, output=str(data.get("output", "")))
    return event
