"""Fingerprints of stages: what decides whether a stage's earlier output still holds.

A stage's fingerprint is a hash of the request it would send: the rendered
instructions (system prompt), the user message (which holds the params, the
needs' outputs, audit findings and approval notes), the model and the settings.
Next to it a stage records its *inputs*, a short digest of each part, so when a
fingerprint differs the reason can be said in words ("instructions changed:
content/instructions/build.md", "upstream plan re-ran").

``state.memo`` uses them to answer whether a stage keeps its earlier output.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping, Set
from dataclasses import dataclass
from typing import Any

from .manifest import changed_paths
from .runners import StageRequest

__all__ = ["Recalled", "describe_change", "digest", "gate_fingerprint", "request_fingerprint"]


def digest(data: str | bytes, size: int = 16) -> str:
    """A short sha256 (hex) of text or bytes; ``size=64`` for the full hash."""
    raw = data.encode("utf-8") if isinstance(data, str) else data
    return hashlib.sha256(raw).hexdigest()[:size]


def request_fingerprint(
    request: StageRequest, system_sha256: str | None = None, brief_sha256: str | None = None
) -> str:
    """The hash of everything a request sends (and nothing it does not, such as timestamps).

    ``system_sha256`` and ``brief_sha256`` are the full hashes of ``request.system`` and
    ``request.brief`` when the caller has them: the instructions are shared by every stage of an
    agent (the brief by every agent) and can be long, so they are hashed once rather than per stage.
    """
    settings = request.settings()
    hasher = hashlib.sha256()
    for part in (system_sha256 or digest(request.system, 64), request.model, str(request.max_tokens)):
        hasher.update(part.encode("utf-8") + b"\0")
    if request.brief:
        hasher.update((brief_sha256 or digest(request.brief, 64)).encode("utf-8") + b"\0")
    if settings:  # tools, contracts, a command; absent for plain text stages
        hasher.update(json.dumps(settings, sort_keys=True).encode("utf-8") + b"\0")
    hasher.update(request.prompt.encode("utf-8"))
    return hasher.hexdigest()


def gate_fingerprint(inputs: Mapping[str, str]) -> str:
    """The hash of an approval gate: what flowed into it (its needs' outputs, its message)."""
    return digest(json.dumps(dict(sorted(inputs.items()))), 64)


_LABELS = (
    # (input key prefix, how to say it changed); first match wins, in this order.
    ("runner", "runner changed"),
    ("model", "model changed"),
    ("settings", "settings changed (max_tokens or the reply format)"),
    ("source:", "instructions changed: {}"),
    ("system", "instructions changed"),
    ("param:", "param {} changed"),
    ("template", "the stage's prompt changed"),
    ("need:", "upstream {} re-ran"),
    ("workspace", "files it can see changed"),
    ("feedback", "the audit sent it back with findings"),
    ("note:", "the approval note of {} changed"),
    ("rejected", "its last output was rejected"),
    ("gate_message", "the gate's message changed"),
)


def describe_change(
    old: Mapping[str, str],
    new: Mapping[str, str],
    ran: Set[str] = frozenset(),
    manifest: Callable[[str], Mapping[str, str] | None] | None = None,
) -> str:
    """Why a stage with inputs ``old`` must run again now that they are ``new``, in words.

    ``ran`` are the stages that ran in this run (so a changed need "re-ran", else its
    output "changed"); ``manifest`` finds the workspace manifest a ``workspace`` input
    names, so changed files can be named.
    """
    changed = sorted(key for key in old.keys() | new.keys() if old.get(key) != new.get(key))
    if "system" not in changed:  # a template edit that renders the same text changes nothing
        changed = [key for key in changed if not key.startswith("source:")]
    reasons: list[str] = []
    for prefix, label in _LABELS:
        names = [
            key[len(prefix) :] for key in changed if key == prefix or (prefix.endswith(":") and key.startswith(prefix))
        ]
        if not names:
            continue
        if prefix == "system" and any(r.startswith("instructions changed") for r in reasons):
            continue
        if prefix == "need:":
            reran = [n for n in names if n in ran]
            other = [n for n in names if n not in ran]
            if reran:
                reasons.append(label.format(", ".join(reran)))
            if other:
                reasons.append(f"output of {', '.join(other)} changed")
        elif prefix == "runner" and "runner" in old and "runner" in new:
            before, after = old["runner"].split(":")[0], new["runner"].split(":")[0]
            reasons.append(f"runner changed: {before} → {after}" if before != after else "canned replies changed")
        elif prefix == "model" and "model" in old and "model" in new:
            reasons.append(f"model changed: {old['model']} → {new['model']}")
        elif prefix == "workspace":
            reasons.append(_files_changed(old.get("workspace"), new.get("workspace"), manifest))
        else:
            reasons.append(label.format(", ".join(names)))
    if not reasons:
        return "its prompt changed" if "message" in changed else "its request changed"
    return "; ".join(reasons)


def _files_changed(old: str | None, new: str | None, manifest: Callable[[str], Mapping[str, str] | None] | None) -> str:
    before = manifest(old) if manifest is not None and old else None
    after = manifest(new) if manifest is not None and new else None
    if before is None or after is None:
        return "files it can see changed"
    paths = changed_paths(before, after)
    shown = ", ".join(paths[:5]) + (f" and {len(paths) - 5} more" if len(paths) > 5 else "")
    return f"files it can see changed: {shown}" if paths else "files it can see changed"


@dataclass(frozen=True)
class Recalled:
    """An earlier output the stage keeps."""

    output: str
    data: dict[str, Any] | None
    output_sha256: str
    run_id: str
    reason: str
