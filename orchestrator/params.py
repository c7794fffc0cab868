"""Launch-time params: ``--param k=v`` and ``--params-file``, typed and checked against the workflow.

Everything is checked before a single request is made: unknown names (with a
did-you-mean), values of the wrong type, required params that are missing.
"""

from __future__ import annotations

import difflib
from collections.abc import Collection, Mapping, Sequence
from typing import Any

from .errors import UsageError
from .workflow import ID_RE, ParamSpec, Workflow

__all__ = ["check_stage", "check_task", "param_text", "parse_param_args", "resolve_params"]

_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}


def check_task(task: str) -> str:
    """Task names become folders (docs/ai/<task>), so they follow the id rules."""
    if not ID_RE.fullmatch(task):
        raise UsageError(
            f"task name {task!r} can't be used: it becomes the folder docs/ai/<task>",
            hint="use lowercase letters, digits, '-' and '_', starting with a letter or digit, e.g. add-login",
        )
    return task


def check_stage(name: str, stages: Collection[str], message: str) -> str:
    """A stage named on the command line must exist; ``message`` says where it was named."""
    if name not in stages:
        close = difflib.get_close_matches(name, list(stages), n=1)
        raise UsageError(message, hint=f"did you mean {close[0]!r}?" if close else "stages: " + ", ".join(stages))
    return name


def param_text(value: Any) -> str:
    """A param's value as a person writes it (``true``, not ``True``)."""
    return str(value).lower() if isinstance(value, bool) else str(value)


def parse_param_args(args: Sequence[str]) -> dict[str, str]:
    """``["goal=Add login", "n=3"]`` -> ``{"goal": "Add login", "n": "3"}``; later ones win."""
    values: dict[str, str] = {}
    for arg in args:
        name, sep, value = arg.partition("=")
        if not sep or not name.strip():
            raise UsageError(f"--param {arg!r} is not name=value", hint='e.g. --param goal="Add a login page"')
        values[name.strip()] = value
    return values


def resolve_params(
    workflow: Workflow, given: Mapping[str, str], from_file: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The run's params: file values, then command-line values, then defaults; typed and complete."""
    declared = workflow.params
    values: dict[str, Any] = {}
    for source, items, text in (("params file", from_file or {}, False), ("--param", given, True)):
        for name, raw in items.items():
            if name not in declared:
                close = difflib.get_close_matches(name, list(declared), n=1)
                hint = (
                    f"did you mean {close[0]!r}?"
                    if close
                    else ("declared params: " + ", ".join(declared) if declared else "this workflow declares no params")
                )
                raise UsageError(f"unknown param {name!r} (from {source})", hint=hint)
            values[name] = _convert(name, declared[name], raw, from_text=text)
    missing = [name for name, spec in declared.items() if spec.required and name not in values]
    if missing:
        described = ", ".join(
            f"{name} ({declared[name].description})" if declared[name].description else name for name in missing
        )
        raise UsageError(
            f"missing required param{'s' if len(missing) > 1 else ''}: {described}",
            hint=" ".join(f'--param {name}="..."' for name in missing),
        )
    for name, spec in declared.items():
        if name not in values and spec.default is not None:
            values[name] = spec.default
    return {name: values[name] for name in declared if name in values}


def _convert(name: str, spec: ParamSpec, raw: Any, *, from_text: bool) -> Any:
    kind = spec.type
    bad = UsageError(f"param {name!r} must be {'an' if kind == 'integer' else 'a'} {kind}, not {raw!r}")
    if kind == "string":
        if isinstance(raw, bool) or not isinstance(raw, str | int | float):
            raise bad
        return str(raw)
    if kind == "boolean":
        if isinstance(raw, bool):
            return raw
        if from_text and str(raw).lower() in _TRUE | _FALSE:
            return str(raw).lower() in _TRUE
        raise bad
    if isinstance(raw, bool):
        raise bad
    if kind == "integer":
        if isinstance(raw, int):
            return raw
        if from_text:
            try:
                return int(str(raw).strip(), 10)
            except ValueError:
                raise bad from None
        raise bad
    if isinstance(raw, int | float):
        return raw
    if from_text:
        try:
            return float(str(raw).strip())
        except ValueError:
            raise bad from None
    raise bad
