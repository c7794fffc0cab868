"""Names, ids, paths and model ids as the workflow file may write them: constants, validators, field types."""

from __future__ import annotations

import re
from pathlib import PurePosixPath
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictStr,
)

DEFAULT_MODEL = "claude-sonnet-5-5"
TOOL_NAMES = ("read", "edit", "search", "bash")
RUNNERS = ("anthropic", "claude-code", "opencode")
AUDITOR_AGENT = "auditor"
ID_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
PARAM_RE = re.compile(r"[a-z_][a-z0-9_]{0,63}")
MODEL_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}")
TEMPLATE_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*(/[A-Za-z0-9_][A-Za-z0-9_.-]*)*")

Path_ = tuple[str | int, ...]


def _check_id(value: str) -> str:
    if not ID_RE.fullmatch(value):
        raise ValueError(
            f"{value!r} is not a valid id: use lowercase letters, digits, '-' and '_', start with a letter "
            "or digit, at most 64 characters (ids become file names)"
        )
    return value


def _check_param_name(value: str) -> str:
    if not PARAM_RE.fullmatch(value):
        raise ValueError(
            f"{value!r} is not a valid param name: use lowercase letters, digits and '_', starting with a "
            "letter or '_' (templates read it as params.<name>)"
        )
    return value


def _check_model(value: str) -> str:
    if "/" in value:
        raise ValueError(
            f"{value!r}: give the Anthropic model id without a provider prefix (e.g. {DEFAULT_MODEL!r}); "
            "the OpenCode config gets 'anthropic/' added for you"
        )
    if not MODEL_RE.fullmatch(value):
        raise ValueError(f"{value!r} is not a valid model id")
    return value


def _check_relpath(value: str) -> str:
    """A path that stays inside the project: relative, no '..', no drive or backslashes."""
    if not value.strip():
        raise ValueError("path is empty")
    if "\\" in value or "\x00" in value:
        raise ValueError(f"{value!r}: use '/' as the separator")
    path = PurePosixPath(value)
    if path.is_absolute() or re.match(r"^[A-Za-z]:", value):
        raise ValueError(f"{value!r} is absolute; give a path relative to the project root")
    if ".." in path.parts:
        raise ValueError(f"{value!r} leaves the project folder ('..' is not allowed)")
    return value


def _check_template(value: str) -> str:
    if not TEMPLATE_RE.fullmatch(value) or ".." in value.split("/"):
        raise ValueError(
            f"{value!r} is not a valid template name: a path relative to content/instructions/ such as "
            "'plan.md' or 'team/review.md'"
        )
    return value


def _pattern(regex: re.Pattern[str]) -> Any:
    """The regex a validator fullmatches, repeated in the JSON Schema so editors flag a bad value as it is typed."""
    return Field(json_schema_extra={"pattern": f"^{regex.pattern}$"})


StageId = Annotated[StrictStr, AfterValidator(_check_id), _pattern(ID_RE)]
AgentName = Annotated[StrictStr, AfterValidator(_check_id), _pattern(ID_RE)]
ParamName = Annotated[StrictStr, AfterValidator(_check_param_name), _pattern(PARAM_RE)]
ModelId = Annotated[StrictStr, AfterValidator(_check_model), _pattern(MODEL_RE)]
RelPath = Annotated[StrictStr, AfterValidator(_check_relpath)]
TemplateName = Annotated[StrictStr, AfterValidator(_check_template)]


class _Model(BaseModel):
    # defer_build: validators are built on first use, so start-up pays only for the form a file uses.
    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)
