"""Pydantic models of the workflow file, in its canonical and grouped forms.

Owns the shape of the YAML and every rule that needs no other stage to check
(names, ids, paths, types). Cross-stage rules (unknown needs, cycles, the
audit stage) belong to ``graph``. No I/O here: the loader gives us data, and
a ``SourceMap`` so later checks can point at the line a value came from.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    PrivateAttr,
    StrictStr,
    Tag,
    model_validator,
)

from .errors import Location
from .scopes import scope_problem

__all__ = [
    "AUDITOR_AGENT",
    "DEFAULT_MODEL",
    "TOOL_NAMES",
    "AgentSpec",
    "AuditPolicy",
    "Budget",
    "ClaudeOptions",
    "Defaults",
    "GroupedWorkflow",
    "OpenCodeOptions",
    "OpenCodePermission",
    "ParamSpec",
    "Permissions",
    "PipelineGroup",
    "PipelineStage",
    "Price",
    "SourceMap",
    "StageSpec",
    "Workflow",
    "json_schema",
]

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


StageId = Annotated[StrictStr, AfterValidator(_check_id)]
AgentName = Annotated[StrictStr, AfterValidator(_check_id)]
ParamName = Annotated[StrictStr, AfterValidator(_check_param_name)]
ModelId = Annotated[StrictStr, AfterValidator(_check_model)]
RelPath = Annotated[StrictStr, AfterValidator(_check_relpath)]
TemplateName = Annotated[StrictStr, AfterValidator(_check_template)]


class _Model(BaseModel):
    # defer_build: validators are built on first use, so start-up pays only for the form a file uses.
    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)


class ParamSpec(_Model):
    """A launch-time input, given as ``--param name=value``."""

    description: str = Field("", description="What the param means; shown in help and to the coordinator.")
    type: Literal["string", "integer", "number", "boolean"] = Field(
        "string", description="The value's type; command-line values are converted to it."
    )
    required: bool = Field(False, description="The run refuses to start without it.")
    default: Any = Field(None, description="Value used when the param is not given (string, number or boolean).")

    @model_validator(mode="after")
    def _default_fits(self) -> ParamSpec:
        if self.default is None:
            return self
        if not isinstance(self.default, str | int | float | bool):
            raise ValueError("default must be a string, a number or a boolean")
        if self.required:
            raise ValueError("a required param can't have a default; drop one of them")
        ok = {
            "string": isinstance(self.default, str),
            "integer": isinstance(self.default, int) and not isinstance(self.default, bool),
            "number": isinstance(self.default, int | float) and not isinstance(self.default, bool),
            "boolean": isinstance(self.default, bool),
        }[self.type]
        if not ok:
            raise ValueError(f"default {self.default!r} is not of type {self.type}")
        return self


class Defaults(_Model):
    """Settings every stage inherits unless its agent or the stage overrides them."""

    model: ModelId = Field(DEFAULT_MODEL, description="Anthropic model id used when nothing more specific is set.")
    max_parallel: int = Field(4, ge=1, le=256, description="Stages run at once at most; 1 = strictly sequential.")
    max_tokens: int = Field(8192, ge=1, le=200_000, description="Output token limit of each model request.")
    timeout: float = Field(
        1800, gt=0, le=86_400, description="Seconds a stage may take in all, retries included, before it fails."
    )
    max_turns: int = Field(
        30, ge=1, le=1000, description="Model turns a tool-using stage may take before it fails (tool loops end)."
    )


class Price(_Model):
    """USD per million tokens."""

    input: float = Field(ge=0, description="Input tokens.")
    output: float = Field(ge=0, description="Output tokens.")
    cache_read: float | None = Field(
        None, ge=0, description="Tokens read from the prompt cache (default: 10% of input)."
    )
    cache_write: float | None = Field(
        None, ge=0, description="Tokens written to the prompt cache (default: 125% of input)."
    )


PermissionLevel = Literal["allow", "ask", "deny"]


def _shape(value: Any) -> str:
    """Unions of a value and a mapping are chosen by the input's shape, so an error names the
    branch the user meant instead of listing every branch's complaint."""
    return "by-mapping" if isinstance(value, Mapping | BaseModel) else "by-value"


PatternLevels = Annotated[
    Annotated[PermissionLevel, Tag("by-value")] | Annotated[dict[StrictStr, PermissionLevel], Tag("by-mapping")],
    Discriminator(_shape),
]
OPENCODE_COLORS = ("primary", "secondary", "accent", "success", "warning", "error", "info")


def _check_color(value: str) -> str:
    if value in OPENCODE_COLORS or re.fullmatch(r"#[0-9a-fA-F]{6}", value):
        return value
    raise ValueError(f"{value!r} is not a colour OpenCode accepts: #RRGGBB or one of {', '.join(OPENCODE_COLORS)}")


def _check_opencode_model(value: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._:@/-]*", value):
        raise ValueError(f"{value!r}: OpenCode models are written provider/model, e.g. 'anthropic/claude-sonnet-4-5'")
    return value


class OpenCodePermission(_Model):
    """OpenCode's per-agent permissions: allow, ask or deny, or a map of patterns to those."""

    read: PatternLevels | None = Field(None, description="Reading files (a level, or {glob: level}).")
    edit: PatternLevels | None = Field(None, description="Editing files (a level, or {glob: level}).")
    glob: PatternLevels | None = Field(None, description="Finding files by pattern.")
    grep: PatternLevels | None = Field(None, description="Searching file contents.")
    list: PatternLevels | None = Field(None, description="Listing folders.")
    bash: PatternLevels | None = Field(
        None, description="Shell commands: one level, or a map of command patterns ('git *') to levels."
    )
    task: PatternLevels | None = Field(None, description="Starting subagents (a level, or {agent: level}).")
    external_directory: PatternLevels | None = Field(None, description="Touching files outside the project.")
    webfetch: PermissionLevel | None = Field(None, description="Fetching web pages.")
    websearch: PermissionLevel | None = Field(None, description="Searching the web.")
    todowrite: PermissionLevel | None = Field(None, description="Writing the todo list.")


PermissionSetting = Annotated[
    Annotated[PermissionLevel, Tag("by-value")] | Annotated[OpenCodePermission, Tag("by-mapping")],
    Discriminator(_shape),
]


class OpenCodeOptions(_Model):
    """Extra settings written into the OpenCode agent's frontmatter."""

    model: Annotated[StrictStr, AfterValidator(_check_opencode_model)] | None = Field(
        None, description="Model for OpenCode only, as provider/model (default: anthropic/<the agent's model>)."
    )
    temperature: float | None = Field(None, ge=0, le=2, description="Sampling temperature.")
    top_p: float | None = Field(None, ge=0, le=1, description="Nucleus sampling.")
    steps: int | None = Field(None, ge=1, le=10_000, description="Most tool-using steps the agent may take.")
    permission: PermissionSetting | None = Field(
        None, description="What the agent may do without asking: one level for everything, or per tool."
    )
    tools: dict[StrictStr, bool] | None = Field(
        None, description="Turn individual OpenCode tools on or off, e.g. {write: false} (prefer permission)."
    )
    color: Annotated[StrictStr, AfterValidator(_check_color)] | None = Field(
        None, description="Colour of the agent in OpenCode's UI: #RRGGBB or a theme colour such as accent."
    )
    hidden: bool | None = Field(None, description="Hide a subagent from OpenCode's @ menu.")


CLAUDE_MODEL_ALIASES = ("sonnet", "opus", "haiku", "inherit")


def _check_claude_model(value: str) -> str:
    return value if value in CLAUDE_MODEL_ALIASES else _check_model(value)


class ClaudeOptions(_Model):
    """Extra settings written into the Claude Code subagent's frontmatter."""

    tools: tuple[StrictStr, ...] | None = Field(
        None, description="Tools the subagent may use (e.g. [Read, Grep, Glob]); all tools when unset."
    )
    model: Annotated[StrictStr, AfterValidator(_check_claude_model)] | None = Field(
        None, description="Model for Claude Code only: an alias (sonnet, opus, haiku, inherit) or a model id."
    )


def _check_command_prefix(value: str) -> str:
    if not value.strip() or "\n" in value or "\x00" in value:
        raise ValueError(f"{value!r} is not a command prefix: give the start of a command, such as 'pytest'")
    return value


class Permissions(_Model):
    """What the ``bash`` tool may run. Off unless granted."""

    bash: tuple[Annotated[StrictStr, AfterValidator(_check_command_prefix)], ...] = Field(
        (),
        description="Commands the bash tool may run: a command runs only if its words start with one of these "
        "(e.g. 'pytest', 'npm test', 'git diff').",
    )
    shell: bool = Field(
        False,
        description="Allow shell syntax (pipes, &&, redirections) in bash commands; each command in it must "
        "still start with an allowed prefix.",
    )
    bash_timeout: float = Field(120, gt=0, le=86_400, description="Seconds one bash command may take.")


Tool = Literal["read", "edit", "search", "bash"]
RunnerName = Literal["anthropic", "claude-code", "opencode"]


class AgentSpec(_Model):
    """An agent type: its instructions template, static model routing, tools and runner."""

    template: TemplateName | None = Field(
        None, description="Instructions template under content/instructions/; defaults to <agent>.md."
    )
    model: ModelId | None = Field(None, description="Model for every stage this agent runs.")
    description: str | None = Field(None, description="One line saying what the agent does; tools show it.")
    opencode: OpenCodeOptions | None = Field(None, description="Settings only for the OpenCode config.")
    claude: ClaudeOptions | None = Field(None, description="Settings only for the Claude Code config.")
    tools: tuple[Tool, ...] = Field(
        (),
        description="Tools the agent may use in the workspace when run through the API: read, edit, search, bash "
        "(bash also needs permissions).",
    )
    max_turns: int | None = Field(
        None, ge=1, le=1000, description="Model turns a stage of this agent may take (default: defaults.max_turns)."
    )
    runner: RunnerName | None = Field(
        None,
        description="What runs the agent's stages: anthropic (the API, default), claude-code or opencode (the CLI).",
    )
    permissions: Permissions | None = Field(
        None, description="What the agent's bash tool may run (overrides the workflow's permissions)."
    )

    @model_validator(mode="after")
    def _tools_unique(self) -> AgentSpec:
        if len(set(self.tools)) != len(self.tools):
            raise ValueError("tools lists a tool twice")
        return self

    def template_name(self, agent: str) -> str:
        return self.template or f"{agent}.md"


class Budget(_Model):
    """A spending limit in USD, counted over every attempt (failed, retried and cancelled ones too)."""

    usd: float = Field(gt=0, le=1_000_000, description="Most USD the run (or the stage) may spend.")


class AuditPolicy(_Model):
    """How the audit gates the run."""

    max_rounds: int = Field(
        1,
        ge=1,
        le=10,
        description="Audit rounds at most: after a failed audit, the stages its findings name (and their "
        "descendants) rerun with the findings, then the audit runs again. 1 = no rework.",
    )


def _check_env_name(value: str) -> str:
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", value):
        raise ValueError(f"{value!r} is not an environment variable name")
    return value


def _check_scope(value: str) -> str:
    problem = scope_problem(value)
    if problem is not None:
        raise ValueError(problem)
    return value


class _StagePolicy(_Model):
    """What a stage does besides its text: gates, retries, limits, tools, contracts, fan-out.
    Shared by both workflow forms."""

    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True, populate_by_name=True)

    type: Literal["agent", "approval"] = Field(
        "agent", description="'agent' (default): an agent runs the stage. 'approval': a pure gate with no agent."
    )
    approval: bool | StrictStr = Field(
        False,
        description="Wait for a person's approval of the stage's output before anything downstream starts: "
        "true, or the message to show them.",
    )
    retries: int = Field(
        0, ge=0, le=10, description="Further tries after the stage fails (beyond the API client's own retries)."
    )
    timeout: float | None = Field(
        None, gt=0, le=86_400, description="Seconds one try of the stage may take in all (default: defaults.timeout)."
    )
    continue_on_failure: bool = Field(
        False, description="If the stage fails, its dependents still run and are told about the failure."
    )
    budget: Budget | None = Field(None, description="Most this stage may spend, every try counted.")
    runner: RunnerName | None = Field(
        None, description="What runs this stage: anthropic (default), claude-code or opencode (overrides the agent's)."
    )
    permissions: Permissions | None = Field(
        None, description="What this stage's bash tool may run (overrides the agent's and the workflow's)."
    )
    run: StrictStr | None = Field(
        None,
        description="A shell command run instead of an agent (e.g. 'pytest -q'): its exit code decides, the tails "
        "of its stdout and stderr are the stage's output.",
    )
    env: dict[Annotated[StrictStr, AfterValidator(_check_env_name)], StrictStr] = Field(
        default_factory=dict, description="Environment variables for the run: command (secrets are never inherited)."
    )
    cwd: RelPath | None = Field(None, description="Folder the run: command starts in, relative to the project root.")
    writes: tuple[Annotated[StrictStr, AfterValidator(_check_scope)], ...] | None = Field(
        None,
        description="Paths or globs the stage may change (e.g. 'backend/**'). Stages whose scopes overlap never "
        "run together; a change outside the scope fails the stage. May use {{ item }} in a foreach stage.",
    )
    output_schema: dict[StrictStr, Any] | RelPath | None = Field(
        None,
        description="JSON Schema (inline, or a .json/.yaml file relative to the project root) of the stage's "
        "structured output; saved as stages/<id>.json and readable by later prompts as data.",
    )
    foreach: StrictStr | None = Field(
        None,
        description="Fan out: an expression giving a list (e.g. '{{ stages.plan.output.tasks }}'); the stage runs "
        "once per item, as <id>[0], <id>[1], ..., each seeing its item as `item`.",
    )
    foreach_key: Annotated[StrictStr, AfterValidator(_check_param_name)] | None = Field(
        None, description="Name instances by this field of each item (<id>[<value>]) instead of by position."
    )
    condition: StrictStr | None = Field(
        None,
        alias="if",
        description="Run the stage only if this expression over params and upstream outputs is true "
        '(e.g. "params.with_ui"); otherwise it is skipped, its dependents still run.',
    )

    @property
    def gated(self) -> bool:
        return self.type == "approval" or self.approval is not False

    @property
    def approval_message(self) -> str:
        return self.approval if isinstance(self.approval, str) else ""


_AGENT_ONLY = ("prompt", "model", "runner", "permissions", "output_schema")


def _check_kind(stage: _StagePolicy, agent: str | None, prompt: str | None, model: str | None) -> None:
    """One of three kinds: an agent runs it, a shell command runs it, or a person approves it."""
    values: dict[str, Any] = {
        **{name: getattr(stage, name) for name in ("retries", "runner", "permissions", "output_schema", "run")},
        "agent": agent,
        "prompt": prompt,
        "model": model,
        "foreach": stage.foreach,
        "writes": stage.writes,
    }
    if stage.type == "approval":
        extra = [key for key in ("agent", "run", "foreach", "writes", *_AGENT_ONLY, "retries") if values.get(key)]
        if extra:
            raise ValueError(f"an approval stage has no agent, so it takes no {', '.join(dict.fromkeys(extra))}")
    elif stage.run is not None:
        if not stage.run.strip():
            raise ValueError("run: is empty; give the command to run")
        extra = [key for key in ("agent", *_AGENT_ONLY) if values.get(key)]
        if extra:
            raise ValueError(f"a run: stage runs a command, not an agent, so it takes no {', '.join(extra)}")
    elif agent is None:
        raise ValueError("a stage needs an agent, a run: command, or type: approval for a gate a person approves")
    if stage.run is None and (stage.env or stage.cwd):
        raise ValueError("env and cwd apply to run: commands; this stage has no run:")
    if stage.foreach and stage.approval is not False:
        raise ValueError("a foreach stage can't be an approval gate; gate a stage before or after it instead")
    if stage.foreach_key and not stage.foreach:
        raise ValueError("foreach_key names instances of a foreach stage; this stage has no foreach")


class StageSpec(_StagePolicy):
    """One step of the workflow, run by one agent once its needs have succeeded."""

    id: StageId = Field(description="Unique stage id; defaults to the agent's name. Becomes a file name.")
    agent: AgentName | None = Field(None, description="The agent that runs the stage (none for type: approval).")
    needs: tuple[StageId, ...] = Field((), description="Stages that must succeed before this one starts.")
    description: str | None = Field(None, description="What the stage is for; shown to agents.")
    prompt: str | None = Field(
        None, description="The stage's task, a Jinja template rendered at run time with params and upstream outputs."
    )
    model: ModelId | None = Field(None, description="Model override for this stage only.")
    outputs: tuple[RelPath, ...] = Field((), description="Files the stage produces, relative to the project root.")

    @model_validator(mode="before")
    @classmethod
    def _id_defaults_to_agent(cls, data: Any) -> Any:
        if isinstance(data, Mapping) and "id" not in data and isinstance(data.get("agent"), str):
            return {"id": data["agent"], **data}
        return data

    @model_validator(mode="after")
    def _needs_unique(self) -> StageSpec:
        seen: set[str] = set()
        for need in self.needs:
            if need in seen:
                raise ValueError(f"needs lists {need!r} twice")
            seen.add(need)
        _check_kind(self, self.agent, self.prompt, self.model)
        return self

    @property
    def runs_agent(self) -> bool:
        return self.agent is not None

    @property
    def is_shell(self) -> bool:
        return self.run is not None

    @property
    def has_output(self) -> bool:
        """It produces an output later stages read: an agent's reply or a command's output."""
        return self.agent is not None or self.run is not None


@dataclass
class SourceMap:
    """Where each value of a workflow came from.

    ``marks`` is keyed by the path of a value in the file as written; ``aliases``
    maps a canonical prefix such as ``("stages", 3)`` to the prefix it was written
    at (``("pipeline", 1, "parallel", 0)`` in the grouped form).
    """

    file: str
    data: bytes = b""  # the file as read, for the hash of generated files' sources
    marks: dict[Path_, tuple[int, int]] = field(default_factory=dict)
    key_marks: dict[Path_, tuple[int, int]] = field(default_factory=dict)
    aliases: dict[Path_, Path_] = field(default_factory=dict)
    block_scalars: set[Path_] = field(default_factory=set)

    def written_path(self, path: Path_) -> Path_:
        for cut in range(len(path), 0, -1):
            written = self.aliases.get(path[:cut])
            if written is not None:
                return written + path[cut:]
        return path

    def locate(self, path: Path_, *, key: bool = False, line_offset: int = 0) -> Location:
        """The closest known location of ``path`` (the key itself with ``key=True``)."""
        written = self.written_path(path)
        if key and written in self.key_marks:
            line, col = self.key_marks[written]
            return Location(self.file, line, col)
        for cut in range(len(written), -1, -1):
            mark = self.marks.get(written[:cut])
            if mark is not None:
                line, col = mark
                if cut == len(written) and line_offset:
                    skip = 1 if written in self.block_scalars else 0
                    return Location(self.file, line + line_offset + skip, None)
                return Location(self.file, line, col)
        return Location(self.file)


class _WorkflowBase(_Model):
    version: Literal[1] = Field(1, description="Format version of the workflow file.")
    name: StageId = Field(description="Workflow name; defaults to the file name. Prefixes generated agent names.")
    description: str = Field("", description="What the workflow is for; shown to every agent.")
    params: dict[ParamName, ParamSpec] = Field(default_factory=dict, description="Launch-time inputs.")
    defaults: Defaults = Field(default_factory=Defaults, description="Settings every stage inherits.")
    context: tuple[RelPath, ...] = Field(
        (), description="Files (e.g. AGENTS.md) injected into every agent's instructions, if present."
    )
    agents: dict[AgentName, AgentSpec] = Field(
        default_factory=dict, description="Agent types: template, model routing and per-tool settings."
    )
    pricing: dict[Annotated[StrictStr, Field(min_length=1)], Price] = Field(
        default_factory=dict,
        description="USD prices for cost estimates, by model id or family (opus, sonnet, haiku).",
    )
    budget: Budget | None = Field(
        None, description="Most a run may spend; when the next stage would pass it, no new stage starts."
    )
    audit: AuditPolicy = Field(
        default_factory=AuditPolicy, description="Audit policy: how many rounds of rework a failed audit may ask for."
    )
    permissions: Permissions = Field(
        default_factory=Permissions,
        description="What bash tools may run, for every agent that doesn't set its own (bash is off by default).",
    )

    _source: SourceMap | None = PrivateAttr(default=None)

    @property
    def source(self) -> SourceMap:
        return self._source or SourceMap(file=f"<workflow {self.name}>")

    def with_source(self, source: SourceMap) -> _WorkflowBase:
        self._source = source
        return self

    def locate(self, *path: str | int, key: bool = False, line_offset: int = 0) -> Location:
        return self.source.locate(tuple(path), key=key, line_offset=line_offset)

    def agent_spec(self, agent: str) -> AgentSpec:
        return self.agents.get(agent) or AgentSpec()


class Workflow(_WorkflowBase):
    """A workflow in canonical form: a flat list of stages joined by ``needs``."""

    stages: tuple[StageSpec, ...] = Field(description="The stages, joined into a DAG by their needs.")


class PipelineStage(_StagePolicy):
    """A single stage in the grouped form."""

    stage: StageId | None = Field(None, description="Stage id; defaults to the agent's name.")
    agent: AgentName | None = Field(None, description="The agent that runs the stage (none for type: approval).")
    needs: tuple[StageId, ...] | None = Field(
        None, description="Stages this one waits for; defaults to every stage of the previous pipeline item."
    )
    description: str | None = Field(None, description="What the stage is for; shown to agents.")
    prompt: str | None = Field(None, description="The stage's task, rendered at run time.")
    model: ModelId | None = Field(None, description="Model override for this stage only.")
    output: RelPath | None = Field(None, description="The file the stage produces (shorthand for outputs: [file]).")
    outputs: tuple[RelPath, ...] = Field((), description="Files the stage produces.")

    @model_validator(mode="after")
    def _one_output_form(self) -> PipelineStage:
        if self.output is not None and self.outputs:
            raise ValueError("give either output: or outputs:, not both")
        _check_kind(self, self.agent, self.prompt, self.model)
        if self.stage is None and self.agent is None:
            raise ValueError("a stage without an agent (an approval gate or a run: command) needs a stage: name")
        return self


class PipelineGroup(_Model):
    """A named group of stages that run in parallel."""

    stage: StrictStr | None = Field(None, description="Label of the group (not a stage id).")
    description: str | None = Field(None, description="What the group is for.")
    parallel: tuple[PipelineStage, ...] = Field(min_length=1, description="Stages that may run at the same time.")


def _pipeline_item_kind(value: Any) -> str:
    return "pipeline-group" if isinstance(value, Mapping) and "parallel" in value else "pipeline-stage"


PipelineItem = Annotated[
    Annotated[PipelineStage, Tag("pipeline-stage")] | Annotated[PipelineGroup, Tag("pipeline-group")],
    Discriminator(_pipeline_item_kind),
]
UNION_TAGS = frozenset({"pipeline-stage", "pipeline-group", "by-value", "by-mapping"})


class GroupedWorkflow(_WorkflowBase):
    """The grouped form from the design notes: ``pipeline:`` items, ``parallel:`` groups."""

    pipeline: tuple[PipelineItem, ...] = Field(description="Stages in order; parallel groups run side by side.")

    def to_workflow(self) -> Workflow:
        """The canonical twin. An item without ``needs`` waits for the whole previous item."""
        stages: list[StageSpec] = []
        aliases: dict[Path_, Path_] = {}
        previous: list[str] = []
        for i, item in enumerate(self.pipeline):
            members: list[tuple[PipelineStage, Path_]]
            if isinstance(item, PipelineGroup):
                members = [(m, ("pipeline", i, "parallel", j)) for j, m in enumerate(item.parallel)]
            else:
                members = [(item, ("pipeline", i))]
            current: list[str] = []
            for member, written in members:
                aliases[("stages", len(stages))] = written
                stage_id = member.stage or member.agent or ""
                policy = {name: getattr(member, name) for name in _StagePolicy.model_fields}
                stages.append(
                    StageSpec(
                        **policy,
                        id=stage_id,
                        agent=member.agent,
                        needs=member.needs if member.needs is not None else tuple(previous),
                        description=member.description,
                        prompt=member.prompt,
                        model=member.model,
                        outputs=(member.output,) if member.output else member.outputs,
                    )
                )
                aliases[("stages", len(stages) - 1, "id")] = (*written, "stage")
                current.append(stage_id)
            previous = current
        common = {name: getattr(self, name) for name in _WorkflowBase.model_fields}
        workflow = Workflow(**common, stages=tuple(stages))
        source = self.source
        source.aliases.update(aliases)
        workflow.with_source(source)
        return workflow


def json_schema() -> dict[str, Any]:
    """JSON Schema of a workflow file (either form), for editors and ``orchestrate schema``."""
    from pydantic import TypeAdapter

    adapter: TypeAdapter[Workflow | GroupedWorkflow] = TypeAdapter(Workflow | GroupedWorkflow)
    schema = adapter.json_schema(mode="validation")
    defs = schema.get("$defs", {})
    # Values the loader fills in are optional in the file: name (from the file name), stage id (agent).
    for model in ("Workflow", "GroupedWorkflow"):
        required = defs.get(model, {}).get("required", [])
        if "name" in required:
            required.remove("name")
    stage_required = defs.get("StageSpec", {}).get("required", [])
    if "id" in stage_required:
        stage_required.remove("id")
    defs["Workflow"]["description"] = "Canonical form: a flat list of stages joined by needs."
    defs["GroupedWorkflow"]["description"] = "Grouped form: pipeline items and parallel groups."
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "orchestrate workflow",
        "description": "A workflow file for orchestrate: stages run by agents, joined by needs.",
        **schema,
    }
