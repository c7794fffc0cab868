"""Workflow file text -> ``Workflow``, with file:line:column on every error.

The only module that parses YAML. It composes the document with PyYAML's
safe machinery but builds the Python values itself, so that it can
- resolve plain scalars by the YAML 1.2 core schema (``on``/``no`` stay strings),
- refuse every tag outside that schema (``!!python/object`` and friends),
- refuse duplicate mapping keys (PyYAML silently keeps the last one),
- bound nesting depth, number size and alias expansion (billion laughs),
- remember where every value was written, for later error messages.
It must not know about graphs, templates or the file system beyond reading one file.
"""

from __future__ import annotations

import difflib
import re
import types
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from .errors import Location, WorkflowError, WorkflowErrors
from .workflow import ID_RE, UNION_TAGS, GroupedWorkflow, SourceMap, Workflow

__all__ = ["MAX_FILE_BYTES", "load_mapping", "load_workflow", "parse_workflow"]

MAX_FILE_BYTES = 5 * 1024 * 1024
MAX_DEPTH = 64
MAX_VALUES = 500_000
MAX_INT_DIGITS = 40

_STR = "tag:yaml.org,2002:str"
_INT = "tag:yaml.org,2002:int"
_FLOAT = "tag:yaml.org,2002:float"
_BOOL = "tag:yaml.org,2002:bool"
_NULL = "tag:yaml.org,2002:null"
_MAP = "tag:yaml.org,2002:map"
_SEQ = "tag:yaml.org,2002:seq"
_MERGE = "tag:yaml.org,2002:merge"

YamlPath = tuple[str | int, ...]


class _CoreSchemaLoader(yaml.SafeLoader):
    """Safe composer whose implicit resolvers follow the YAML 1.2 core schema."""

    yaml_implicit_resolvers: dict[Any, Any] = {}  # noqa: RUF012 - PyYAML's class-level registry

    def __init__(self, stream: str, file: str) -> None:
        super().__init__(stream)
        self._file = file
        self._depth = 0

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        # PyYAML composes recursively; stop at our own limit, with a line number, long before
        # Python's recursion limit turns into a RecursionError.
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                mark = self.peek_event().start_mark  # type: ignore[no-untyped-call]
                raise WorkflowError(
                    f"YAML is nested more than {MAX_DEPTH} levels deep",
                    location=Location(self._file, mark.line + 1, mark.column + 1),
                )
            node: yaml.Node | None = super().compose_node(parent, index)
            return node
        finally:
            self._depth -= 1


for _tag, _regexp, _first in (
    (_BOOL, r"^(?:true|True|TRUE|false|False|FALSE)$", "tTfF"),
    (_INT, r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$", "-+0123456789"),
    (
        _FLOAT,
        r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$",
        "-+0123456789.",
    ),
    (_NULL, r"^(?:~|null|Null|NULL|)$", ["~", "n", "N", ""]),
    (_MERGE, r"^<<$", "<"),
):
    _CoreSchemaLoader.add_implicit_resolver(_tag, re.compile(_regexp), list(_first))


def load_workflow(path: Path, *, display: str | None = None) -> Workflow:
    """Read and validate a workflow file. ``display`` is how errors name the file."""
    shown = display or str(path)
    data = _read_bytes(path, shown, "workflow file", "check the path, e.g. workflows/feature.yaml")
    workflow = parse_workflow(_decode(data, shown), source=shown, default_name=path.stem)
    workflow.source.data = data
    return workflow


def load_mapping(path: Path, *, display: str | None = None, what: str = "file") -> dict[str, Any]:
    """A YAML (or JSON) file holding one mapping, read as safely as a workflow; ``what`` names it in errors."""
    shown = display or str(path)
    smap = SourceMap(file=shown)
    data = _parse_yaml(_decode(_read_bytes(path, shown, what, "check the path"), shown), smap)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise WorkflowError(
            f"{what} must hold a mapping of names to values, not a {_kind(data)}", location=smap.locate(())
        )
    return data


def _read_bytes(path: Path, shown: str, what: str, hint: str) -> bytes:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise WorkflowError(f"{what} {shown} not found", hint=hint) from None
    except IsADirectoryError:
        raise WorkflowError(f"{shown} is a folder, not a {what}") from None
    except OSError as exc:
        raise WorkflowError(f"can't read {shown}: {exc.strerror or exc}") from exc
    if len(data) > MAX_FILE_BYTES:
        raise WorkflowError(
            f"file is {len(data):,} bytes; {what}s are limited to {MAX_FILE_BYTES:,}",
            location=Location(shown),
        )
    return data


def _decode(data: bytes, shown: str) -> str:
    if b"\x00" in data:  # UTF-16 or 32 without a byte order mark, or not text at all
        at = data.index(b"\x00")
        wide = data[1::2].count(0) > len(data) // 4 or data[0::2].count(0) > len(data) // 4
        raise WorkflowError(
            "file is not UTF-8 text: it has NUL bytes" + (" (it looks like UTF-16)" if wide else ""),
            location=Location(shown, data[:at].count(b"\n") + 1),
            hint="save the file as UTF-8",
        )
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise WorkflowError(
            "file is not valid UTF-8", location=Location(shown, line), hint="save the file as UTF-8"
        ) from None


def parse_workflow(text: str, *, source: str, default_name: str | None = None) -> Workflow:
    """Validate workflow text; ``source`` names the file in errors."""
    smap = SourceMap(file=source)
    data = _parse_yaml(text, smap)
    if data is None:
        raise WorkflowError(
            "workflow file is empty",
            location=Location(source),
            hint="start from the example in the README: name, agents and stages",
        )
    if not isinstance(data, dict):
        raise WorkflowError(
            f"a workflow must be a mapping with 'stages:' (or 'pipeline:'), not a {_kind(data)}",
            location=smap.locate(()),
        )
    if "stages" in data and "pipeline" in data:
        raise WorkflowError(
            "give either 'stages:' or 'pipeline:', not both",
            location=smap.locate(("pipeline",), key=True),
            hint="'pipeline:' is the grouped form of the same thing; keep one",
        )
    if "stages" not in data and "pipeline" not in data:
        close = _did_you_mean_hint(data.keys(), ["stages", "pipeline"], Workflow.model_fields)
        raise WorkflowError(
            "workflow has no 'stages:'",
            location=smap.locate(()),
            hint=close or "add a 'stages:' list (or the grouped 'pipeline:' form)",
        )
    if "name" not in data:
        if default_name is None or not ID_RE.fullmatch(default_name):
            raise WorkflowError(
                f"workflow has no 'name:' and its file name {default_name!r} is not a valid id",
                location=smap.locate(()),
                hint="add a name such as 'name: feature' (lowercase letters, digits, '-', '_')",
            )
        data = {"name": default_name, **data}

    model: type[Workflow | GroupedWorkflow] = GroupedWorkflow if "pipeline" in data else Workflow
    try:
        parsed = model.model_validate(data)
    except ValidationError as exc:
        raise _translate(exc, model, smap) from None
    parsed.with_source(smap)
    if isinstance(parsed, GroupedWorkflow):
        return parsed.to_workflow()
    return parsed


# -- YAML -> Python values -------------------------------------------------------------------------


def _parse_yaml(text: str, smap: SourceMap) -> Any:
    try:
        loader = _CoreSchemaLoader(text, smap.file)
    except yaml.reader.ReaderError as exc:  # a character YAML refuses (a control character, say)
        line = text[: exc.position].count("\n") + 1
        code = exc.character if isinstance(exc.character, int) else ord(exc.character)
        raise WorkflowError(
            f"invalid YAML: the character U+{code:04X} is not allowed in YAML",
            location=Location(smap.file, line),
            hint="remove it, or quote it as an escape in a double-quoted string",
        ) from None
    try:
        node = loader.get_single_node()
    except yaml.MarkedYAMLError as exc:
        raise _yaml_error(exc, text, smap.file) from None
    except yaml.YAMLError as exc:
        raise WorkflowError(f"invalid YAML: {exc}", location=Location(smap.file)) from None
    except RecursionError:
        raise WorkflowError(
            "YAML is nested too deeply", location=Location(smap.file), hint=f"keep nesting under {MAX_DEPTH} levels"
        ) from None
    finally:
        loader.dispose()
    if node is None:
        return None
    _check_expansion(node, smap.file)
    return _build(node, (), 0, smap)


def _yaml_error(exc: yaml.MarkedYAMLError, text: str, source: str) -> WorkflowError:
    mark = exc.problem_mark or exc.context_mark
    problem = exc.problem or exc.context or "invalid YAML"
    if exc.context and exc.problem and exc.context not in problem:
        problem = f"{problem} ({exc.context}"
        if exc.context_mark and mark and exc.context_mark.line != mark.line:
            problem += f" at line {exc.context_mark.line + 1}"
        problem += ")"
    location = Location(source, mark.line + 1, mark.column + 1) if mark else Location(source)
    hint = "check the indentation and quoting on this line and the one before"
    if "\t" in problem or "tab" in problem:
        hint = "YAML indentation must use spaces, not tabs"
    elif "found character '@'" in problem or "found character '`'" in problem:
        hint = "quote values that start with '@' or '`'"
    err = WorkflowError(f"invalid YAML: {problem}", location=location, hint=hint)
    if mark is not None:
        lines = text.splitlines()
        if 0 <= mark.line < len(lines):
            snippet = lines[mark.line]
            if len(snippet) <= 200:
                err.snippet = f"{snippet}\n{' ' * mark.column}^"
    return err


def _loc(node: yaml.Node, file: str) -> Location:
    return Location(file, node.start_mark.line + 1, node.start_mark.column + 1)


def _check_expansion(root: yaml.Node, file: str) -> None:
    """Refuse recursive aliases and documents whose aliases expand past ``MAX_VALUES``."""
    sizes: dict[int, int] = {}

    def size(node: yaml.Node, depth: int, active: set[int]) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in active:
            raise WorkflowError("an alias refers to the value that contains it", location=_loc(node, file))
        if depth > MAX_DEPTH:
            raise WorkflowError(f"YAML is nested more than {MAX_DEPTH} levels deep", location=_loc(node, file))
        total = 1
        if isinstance(node, yaml.SequenceNode | yaml.MappingNode):
            active.add(key)
            children: Iterable[yaml.Node] = (
                node.value if isinstance(node, yaml.SequenceNode) else (n for pair in node.value for n in pair)
            )
            for child in children:
                total += size(child, depth + 1, active)
                if total > MAX_VALUES:
                    raise WorkflowError(
                        f"the document expands to more than {MAX_VALUES:,} values (an alias bomb?)",
                        location=_loc(node, file),
                        hint="use fewer nested aliases",
                    )
            active.discard(key)
        sizes[key] = total
        return total

    size(root, 0, set())


def _build(node: yaml.Node, path: YamlPath, depth: int, smap: SourceMap) -> Any:
    smap.marks.setdefault(path, (node.start_mark.line + 1, node.start_mark.column + 1))
    if isinstance(node, yaml.ScalarNode):
        if node.style in ("|", ">"):
            smap.block_scalars.add(path)
        return _scalar(node, smap.file)
    if isinstance(node, yaml.SequenceNode):
        if node.tag != _SEQ:
            raise _tag_error(node, smap.file)
        return [_build(child, (*path, i), depth + 1, smap) for i, child in enumerate(node.value)]
    if isinstance(node, yaml.MappingNode):
        if node.tag != _MAP:
            raise _tag_error(node, smap.file)
        return _build_mapping(node, path, depth, smap)
    raise WorkflowError("unsupported YAML node", location=_loc(node, smap.file))  # pragma: no cover


def _build_mapping(node: yaml.MappingNode, path: YamlPath, depth: int, smap: SourceMap) -> dict[str, Any]:
    result: dict[str, Any] = {}
    written: dict[str, yaml.Node] = {}
    merged: list[tuple[str, yaml.Node, yaml.Node]] = []
    for key_node, value_node in node.value:
        if isinstance(key_node, yaml.ScalarNode) and key_node.tag == _MERGE:
            sources = value_node.value if isinstance(value_node, yaml.SequenceNode) else [value_node]
            for src in sources:
                if not isinstance(src, yaml.MappingNode):
                    raise WorkflowError("'<<' merges only mappings", location=_loc(src, smap.file))
                merged.extend((_key(k, smap.file), k, v) for k, v in src.value)
            continue
        key = _key(key_node, smap.file)
        if key in written:
            first = written[key].start_mark.line + 1
            raise WorkflowError(
                f"duplicate key {key!r} (first given on line {first})",
                location=_loc(key_node, smap.file),
                hint="YAML keeps only one of them; remove or rename the other",
            )
        written[key] = key_node
        smap.key_marks[(*path, key)] = (key_node.start_mark.line + 1, key_node.start_mark.column + 1)
        result[key] = _build(value_node, (*path, key), depth + 1, smap)
    for key, key_node, value_node in merged:
        if key not in result:
            smap.key_marks.setdefault((*path, key), (key_node.start_mark.line + 1, key_node.start_mark.column + 1))
            result[key] = _build(value_node, (*path, key), depth + 1, smap)
    return result


def _key(node: yaml.Node, file: str) -> str:
    if not isinstance(node, yaml.ScalarNode):
        raise WorkflowError("mapping keys must be plain strings", location=_loc(node, file))
    if node.tag not in (_STR, _INT, _FLOAT, _BOOL, _NULL):
        raise _tag_error(node, file)
    if node.value == "":
        raise WorkflowError("empty mapping key", location=_loc(node, file))
    return str(node.value)


def _scalar(node: yaml.ScalarNode, file: str) -> Any:
    value: str = node.value
    tag = node.tag
    try:
        if tag == _STR:
            return value
        if tag == _NULL:
            if value not in ("", "~", "null", "Null", "NULL"):
                raise ValueError(value)
            return None
        if tag == _BOOL:
            lowered = value.lower()
            if lowered not in ("true", "false"):
                raise ValueError(value)
            return lowered == "true"
        if tag == _INT:
            digits = value.lstrip("+-")
            if len(digits) > MAX_INT_DIGITS:
                raise WorkflowError(
                    f"number has {len(digits)} digits; numbers are limited to {MAX_INT_DIGITS}",
                    location=_loc(node, file),
                )
            if digits.startswith("0o"):
                return int(value.replace("0o", ""), 8)
            if digits.startswith("0x"):
                return int(value.replace("0x", ""), 16)
            return int(value, 10)
        if tag == _FLOAT:
            if len(value) > 64:
                raise WorkflowError("number is too long", location=_loc(node, file))
            lowered = value.lower()
            if lowered.endswith(".inf"):
                return float("-inf") if lowered.startswith("-") else float("inf")
            if lowered == ".nan":
                return float("nan")
            return float(value)
    except ValueError:
        raise WorkflowError(f"{value!r} is not a valid {tag.rsplit(':', 1)[-1]}", location=_loc(node, file)) from None
    raise _tag_error(node, file)


def _tag_error(node: yaml.Node, file: str) -> WorkflowError:
    tag = node.tag
    if tag.startswith("tag:yaml.org,2002:"):
        tag = "!!" + tag.removeprefix("tag:yaml.org,2002:")
    if "python/" in tag:
        return WorkflowError(
            f"tag {tag} is refused: workflow files are plain data and never create Python objects",
            location=_loc(node, file),
            hint="remove the tag",
        )
    return WorkflowError(
        f"unsupported YAML tag {tag}",
        location=_loc(node, file),
        hint="workflow files use plain strings, numbers, booleans, lists and mappings; remove the tag",
    )


def _kind(value: Any) -> str:
    return {list: "list", str: "string", int: "number", float: "number", bool: "boolean"}.get(
        type(value), type(value).__name__
    )


# -- pydantic errors -> located messages -----------------------------------------------------------


def _translate(exc: ValidationError, model: type[BaseModel], smap: SourceMap) -> WorkflowError:
    errors: list[WorkflowError] = []
    seen: set[tuple[YamlPath, str]] = set()
    raw = exc.errors(include_url=False)
    locs = [tuple(p for p in e["loc"] if p not in UNION_TAGS) for e in raw]
    for err, loc in zip(raw, locs, strict=False):
        raw_loc = tuple(err["loc"])
        kind = err["type"]
        if (loc, kind) in seen:
            continue
        if kind == "too_short" and any(len(o) > len(loc) and o[: len(loc)] == loc for o in locs):
            continue  # pydantic's echo of a failed item inside the list: the item's own error says it
        seen.add((loc, kind))
        where = _dotted(loc[:-1]) if kind in ("extra_forbidden", "missing") else _dotted(loc)
        if kind == "extra_forbidden":
            key = str(loc[-1])
            allowed = sorted(_allowed_keys(model, raw_loc[:-1]))
            close = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
            hint = f"did you mean {close[0]!r}?" if close else ("allowed keys: " + ", ".join(allowed))
            errors.append(
                WorkflowError(
                    f"unknown key {key!r}" + (f" in {where}" if where else ""),
                    location=smap.locate(loc, key=True),
                    hint=hint,
                )
            )
        elif kind == "missing":
            errors.append(
                WorkflowError(
                    f"missing required key {loc[-1]!r}" + (f" in {where}" if where else ""),
                    location=smap.locate(loc[:-1]),
                )
            )
        else:
            msg = str(err["msg"]).removeprefix("Value error, ")
            hint = None
            expected = (err.get("ctx") or {}).get("expected")
            if kind == "literal_error" and isinstance(err.get("input"), str) and expected:
                options = re.findall(r"'([^']*)'", str(expected))
                close = difflib.get_close_matches(err["input"], options, n=1, cutoff=0.5)
                hint = f"did you mean {close[0]!r}?" if close else None
            errors.append(WorkflowError(f"{where}: {msg}" if where else msg, location=smap.locate(loc), hint=hint))
    if len(errors) == 1:
        return errors[0]
    return WorkflowErrors(errors)


def _dotted(loc: YamlPath) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def _allowed_keys(model: type[BaseModel], loc: tuple[Any, ...]) -> set[str]:
    """The keys the model accepts at ``loc`` (pydantic's raw loc, union tags included)."""
    current: Any = model
    for part in loc:
        current = _step(current, part)
        if current is None:
            return set()
    current = _unwrap(current)
    if isinstance(current, type) and issubclass(current, BaseModel):
        return set(current.model_fields)
    for option in _union_members(current):
        if isinstance(option, type) and issubclass(option, BaseModel):
            return set(option.model_fields)
    return set()


def _unwrap(tp: Any) -> Any:
    while typing.get_origin(tp) is typing.Annotated:
        tp = typing.get_args(tp)[0]
    return tp


def _union_members(tp: Any) -> list[Any]:
    tp = _unwrap(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return [_unwrap(a) for a in typing.get_args(tp)]
    return [tp]


def _step(tp: Any, part: Any) -> Any:
    for option in _union_members(tp):
        if isinstance(part, str) and part in UNION_TAGS:
            for member in typing.get_args(_unwrap(tp)):
                meta = getattr(member, "__metadata__", ())
                if any(getattr(m, "tag", None) == part for m in meta):
                    return _unwrap(member)
            continue
        if isinstance(option, type) and issubclass(option, BaseModel):
            if isinstance(part, str) and part in option.model_fields:
                return option.model_fields[part].annotation
            continue
        origin = typing.get_origin(option)
        args = typing.get_args(option)
        if origin in (list, tuple) and isinstance(part, int) and args:
            return args[0]
        if origin in (dict, Mapping) and isinstance(part, str) and len(args) == 2:
            return args[1]
    return None


def _did_you_mean_hint(keys: Iterable[Any], choices: list[str], known: Iterable[str] = ()) -> str | None:
    """The key most like one of ``choices`` (keys in ``known`` are meant as they are, so they don't count)."""
    best: tuple[float, str, str] | None = None
    taken = set(known)
    for key in keys:
        if str(key) in taken:
            continue
        for choice in difflib.get_close_matches(str(key), choices, n=1, cutoff=0.6):
            score = difflib.SequenceMatcher(None, str(key), choice).ratio()
            if best is None or score > best[0]:
                best = (score, str(key), choice)
    return f"found {best[1]!r}; did you mean {best[2]!r}?" if best else None
