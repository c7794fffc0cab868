"""The audit gate: the verdict model, and what the auditor is shown.

The audit stage's reply is a structured ``Verdict``: a structured output held to
this model's JSON schema where the model supports that, else a reply that ends
with the verdict in a fenced ``json`` block. ``parse_verdict`` reads either. A
verdict that can't be read fails the audit stage (after one more try told what
was wrong): never a silent pass.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from functools import cache
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .contracts import parse_structured

__all__ = ["ChecklistItem", "Finding", "Verdict", "VerdictError", "parse_verdict", "verdict_schema"]


class Finding(BaseModel):
    model_config = ConfigDict(extra="ignore")

    stage: str = Field(description="The stage that has to fix it.")
    severity: Literal["critical", "major", "minor"] = Field(description="critical and major fail the audit.")
    title: str = Field(description="The problem in one line.")
    evidence: str = Field("", description="File and line, or the command and its output.")
    fix: str = Field("", description="What the stage must change.")


class ChecklistItem(BaseModel):
    model_config = ConfigDict(extra="ignore")

    item: str = Field(description="The checklist item, e.g. requirements, tests, security.")
    result: Literal["pass", "fail", "n/a"]
    note: str = Field("", description="The evidence.")


class Verdict(BaseModel):
    """The auditor's verdict. ``fail`` fails the run."""

    model_config = ConfigDict(extra="ignore")

    verdict: Literal["pass", "fail"]
    summary: str = Field(description="What was checked and why it passes or fails, in a sentence or two.")
    findings: list[Finding] = Field(default_factory=list, description="Every finding, most severe first.")
    checklist: list[ChecklistItem] = Field(default_factory=list, description="Each checklist item applied.")


class VerdictError(ValueError):
    """The audit reply holds no readable verdict."""


@cache
def _schema() -> dict[str, Any]:
    return Verdict.model_json_schema()


def verdict_schema() -> dict[str, Any]:
    """The JSON Schema of the auditor's verdict (a fresh copy each call)."""
    return copy.deepcopy(_schema())


def parse_verdict(data: Mapping[str, Any] | None, text: str) -> Verdict:
    """The verdict from structured ``data``, else from ``text``: the whole reply as JSON (a structured
    output), or its last ```json block (a reply in prose)."""
    candidate: Any = data
    if candidate is None:
        try:
            candidate = parse_structured(text)
        except ValueError as exc:
            if "```json" in text:
                raise VerdictError(f"the audit reply's json block is not valid JSON: {exc}") from None
            raise VerdictError("the audit reply has no verdict (neither a JSON reply nor a ```json block)") from None
    try:
        return Verdict.model_validate(candidate)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'verdict'}: {e['msg']}" for e in exc.errors(include_url=False)
        )
        raise VerdictError(f"the audit verdict is malformed: {problems}") from None
