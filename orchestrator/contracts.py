"""Output contracts of a stage: declared output files and the JSON Schema of its structured output.

A stage may declare ``outputs:`` (paths or globs under the workspace that must
exist and be non-empty when it ends) and ``output_schema:`` (a JSON Schema,
Draft 2020-12, its structured reply must match). This module checks both and
returns problems as short readable lines; it never raises for a contract that
is not met, never writes, and never follows a symlink out of the workspace.

It is the only module that imports ``jsonschema`` (and ``referencing``, which
jsonschema resolves ``$ref`` with). Remote ``$ref`` are never fetched.
"""

from __future__ import annotations

import json
import os
import re
import stat
from collections.abc import Iterable, Mapping, Sequence
from fnmatch import fnmatchcase
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from .scopes import DEFAULT_IGNORE

if TYPE_CHECKING:
    from jsonschema import ValidationError

# jsonschema is imported where a schema is checked, not with this module: most workflows have no
# output_schema, and validate, compile and run should not pay for it at start-up.

__all__ = ["check_reply", "output_problems", "parse_structured", "schema_problems", "validate_data"]

_MAX_PROBLEMS = 10
_LONGEST = 200
_BASE_URI = "urn:orchestrate:output-schema"
_WRAP_HINT = "to return a list, wrap it: {type: object, properties: {items: {type: array, ...}}, required: [items]}"
_NAME = re.compile(r"[A-Za-z_$][\w$-]*")
_FENCE = re.compile(r"```[ \t]*json[ \t]*\r?\n(.*?)```", re.DOTALL | re.IGNORECASE)
# Values under these keywords are data, not subschemas: a {"$ref": ...} inside them is not a reference.
_DATA_KEYWORDS = frozenset({"const", "enum", "default", "examples"})


def _where(path: Sequence[str | int]) -> str:
    """A JSON path as people write it: ``tasks[0].title``; ``(root)`` for the top."""
    text = ""
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
        elif _NAME.fullmatch(part):
            text += f".{part}" if text else part
        else:
            text += f"[{json.dumps(part)}]"
    return text or "(root)"


def _short(message: str) -> str:
    return message if len(message) <= _LONGEST else message[: _LONGEST - 3] + "..."


def _capped(lines: list[str]) -> list[str]:
    if len(lines) <= _MAX_PROBLEMS:
        return lines
    return [*lines[:_MAX_PROBLEMS], f"... and {len(lines) - _MAX_PROBLEMS} more"]


def _lines(errors: Iterable[ValidationError]) -> list[str]:
    # List indices sort as numbers, so [2] comes before [10].
    ordered = sorted(
        errors, key=lambda e: ([(0, p, "") if isinstance(p, int) else (1, 0, p) for p in e.absolute_path], e.message)
    )
    return [f"{_where(e.absolute_path)}: {_short(e.message)}" for e in ordered]


def _unresolved_refs(schema: Mapping[str, Any]) -> list[str]:
    """Problems with ``$ref`` that can't be resolved inside the schema itself."""
    from referencing import Registry
    from referencing.exceptions import Unresolvable
    from referencing.jsonschema import DRAFT202012

    root_id = schema.get("$id")
    base = root_id if isinstance(root_id, str) and root_id else _BASE_URI
    resolver = Registry().with_resource(base, DRAFT202012.create_resource(dict(schema))).resolver(base_uri=base)
    problems: list[str] = []
    pending: list[tuple[Any, tuple[str | int, ...]]] = [(schema, ())]
    while pending:
        node, path = pending.pop()
        if isinstance(node, list):
            pending.extend((item, (*path, i)) for i, item in enumerate(node))
            continue
        if not isinstance(node, Mapping):
            continue
        if path and "$id" in node:
            # A nested $id moves the base URI; trusting such subtrees beats guessing wrongly.
            continue
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str):
                try:
                    resolver.lookup(value)
                except Unresolvable:
                    problems.append(
                        f"{_where((*path, key))}: {value!r} does not resolve "
                        "(only references inside this schema work; nothing is fetched)"
                    )
            elif key not in _DATA_KEYWORDS:
                pending.append((value, (*path, key)))
    return sorted(problems)


def schema_problems(schema: Any) -> list[str]:
    """Problems with a user's ``output_schema``, to report when the workflow loads; [] when fine.

    The schema must be a mapping, a valid Draft 2020-12 JSON Schema whose ``$ref``
    resolve within it, with top-level ``type: object`` (structured output is an object).
    """
    if not isinstance(schema, Mapping):
        return [f"output_schema must be a mapping (a JSON Schema), not {type(schema).__name__}"]
    from jsonschema import Draft202012Validator

    meta = Draft202012Validator(Draft202012Validator.META_SCHEMA, format_checker=Draft202012Validator.FORMAT_CHECKER)
    problems = _lines(meta.iter_errors(schema))
    if not problems:
        problems = _unresolved_refs(schema)
    kind = schema.get("type")
    if kind != "object":
        said = "has no top-level type" if kind is None else f"has top-level type {kind!r}"
        problems.append(f"type: the schema {said}, but a structured output must be an object; {_WRAP_HINT}")
    return _capped(problems)


def validate_data(data: Any, schema: Mapping[str, Any]) -> list[str]:
    """Every way ``data`` breaks ``schema``, one line each with its JSON path, sorted; [] when valid.

    At most 10 lines, then ``... and N more``. ``format`` is an
    annotation only (Draft 2020-12's default), so it is not asserted.
    """
    from jsonschema import Draft202012Validator
    from referencing.exceptions import Unresolvable

    try:
        return _capped(_lines(Draft202012Validator(schema).iter_errors(data)))
    except Unresolvable as error:
        return [f"(schema): a $ref does not resolve: {_short(str(error))}"]


def _decode_problem(error: json.JSONDecodeError) -> str:
    return f"{error.msg}: line {error.lineno} column {error.colno}"


def parse_structured(text: str) -> Any:
    """The JSON value of a structured reply: the whole text, else its last fenced json block.

    Raises ValueError with a readable message when neither is JSON.
    """
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        whole = error
    blocks = _FENCE.findall(text)
    if not blocks:
        raise ValueError(f"the reply is not JSON: {_decode_problem(whole)}") from None
    try:
        return json.loads(blocks[-1])
    except json.JSONDecodeError as error:
        raise ValueError(f"the last ```json block of the reply is not JSON: {_decode_problem(error)}") from None


def check_reply(output: str, data: Any, schema: Mapping[str, Any]) -> tuple[dict[str, Any] | None, str | None]:
    """A structured reply's data (``data`` when the runner parsed it, else the JSON of ``output``) and what is
    wrong with it against ``schema``, in one line the stage's next try can act on."""
    value = data
    if value is None:
        try:
            value = parse_structured(output)
        except ValueError as exc:
            return None, f"its structured output is not JSON: {exc}"
    invalid = validate_data(value, schema)
    if invalid:
        return None, "its structured output does not match output_schema: " + "; ".join(invalid)
    return (value if isinstance(value, dict) else None), None


def _inside(path: Path, base: Path) -> Path | None:
    """``path`` with symlinks resolved, or None when it lands outside ``base``."""
    try:
        resolved = path.resolve()
    except (OSError, RuntimeError):
        # A symlink loop: keep the path as is, so stat() fails on it and it reads as a broken link.
        resolved = Path(os.path.abspath(path))
    return resolved if resolved.is_relative_to(base) else None


def _entries(folder: str) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(folder) as listing:
            return list(listing)
    except OSError:
        return []


def _glob(folder: str, rel: str, segments: tuple[str, ...]) -> dict[str, os.DirEntry[str]]:
    """Non-folder entries under ``folder`` whose remaining path matches ``segments`` (``**`` = any run)."""
    found: dict[str, os.DirEntry[str]] = {}
    pending = [(folder, rel, segments)]
    seen: set[tuple[str, tuple[str, ...]]] = set()
    while pending:
        current, prefix, rest = pending.pop()
        if not rest or (prefix, rest) in seen:
            continue
        seen.add((prefix, rest))
        head, last = rest[0], len(rest) == 1
        if head == "**":
            pending.append((current, prefix, rest[1:]))
        for entry in _entries(current):
            name = f"{prefix}/{entry.name}" if prefix else entry.name
            if entry.name in DEFAULT_IGNORE and head != entry.name:
                continue
            is_dir = entry.is_dir(follow_symlinks=False)
            if head == "**":
                if is_dir:
                    pending.append((entry.path, name, rest))
                elif last:
                    found[name] = entry
            elif fnmatchcase(entry.name, head):
                if not last and is_dir:
                    pending.append((entry.path, name, rest[1:]))
                elif last and not is_dir:
                    found[name] = entry
    return found


def _check_files(found: Mapping[str, os.DirEntry[str]], base: Path) -> tuple[list[str], list[str], bool]:
    """(links that point out, empty files, whether any file has content) among matched entries."""
    outside: list[str] = []
    empty: list[str] = []
    full = False
    for name in sorted(found):
        target = _inside(Path(found[name].path), base)
        if target is None:
            outside.append(f"{name} points outside the workspace")
            continue
        try:
            info = target.stat()
        except OSError:
            continue
        if stat.S_ISREG(info.st_mode):
            full = full or info.st_size > 0
            if info.st_size == 0:
                empty.append(name)
    return outside, empty, full


def _check_glob(base: Path, pattern: str) -> list[str]:
    segments = tuple(s for s in pattern.split("/") if s not in ("", "."))
    literal = 0
    while literal < len(segments) - 1 and not any(c in segments[literal] for c in "*?["):
        literal += 1
    prefix = "/".join(segments[:literal])
    start = _inside(base.joinpath(*segments[:literal]), base)
    if start is None:
        return [f"{prefix} points outside the workspace"]
    found = _glob(os.fspath(start), prefix, segments[literal:]) if start.is_dir() else {}
    outside, empty, full = _check_files(found, base)
    if not (outside or empty or full):
        return [f"no file matches {pattern!r}"]
    return outside + _capped([f"{name} is empty (matches {pattern!r})" for name in empty])


def _check_path(base: Path, pattern: str) -> list[str]:
    rel = PurePosixPath(pattern).as_posix()
    target = base / rel
    resolved = _inside(target, base)
    if resolved is None:
        return [f"{rel} points outside the workspace"]
    try:
        info = resolved.stat()
    except OSError:
        return [f"{rel} is a broken link" if os.path.lexists(target) else f"{rel} does not exist"]
    if stat.S_ISREG(info.st_mode):
        return [f"{rel} is empty"] if info.st_size == 0 else []
    if not stat.S_ISDIR(info.st_mode):
        return [f"{rel} is not a regular file or folder"]
    found = _glob(os.fspath(resolved), rel, ("**",))
    outside, empty, full = _check_files(found, base)
    if full:
        return outside
    return [*outside, f"{rel}/ holds only empty files" if empty else f"{rel}/ is an empty folder"]


def output_problems(root: Path, patterns: Sequence[str]) -> list[str]:
    """What is wrong with a stage's declared outputs under ``root``; [] when all are there.

    A plain path must exist; a file must be non-empty, a folder must hold at least
    one non-empty file. A glob (``*``, ``?``, ``[...]`` within a segment, ``**`` for
    any run of segments) must match at least one file, and every file it matches
    must be non-empty. Tool folders (``DEFAULT_IGNORE``) are only searched when named
    literally. Whatever resolves outside ``root`` is reported and not followed.
    Messages use posix paths relative to ``root``.
    """
    base = root.resolve()
    problems: list[str] = []
    for pattern in dict.fromkeys(patterns):
        if not [s for s in pattern.split("/") if s not in ("", ".")]:
            problems.append(f"output {pattern!r} names no path")
        elif any(c in pattern for c in "*?["):
            problems.extend(_check_glob(base, pattern))
        else:
            problems.extend(_check_path(base, pattern))
    return problems
