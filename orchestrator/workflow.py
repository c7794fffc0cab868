"""Pydantic models of the workflow file, in its canonical and grouped forms.

Owns the shape of the YAML and every rule that needs no other stage to check
(names, ids, paths, types). Cross-stage rules (unknown needs, cycles, the
audit stage) belong to ``graph``. No I/O here: the loader gives us data, and
a ``SourceMap`` so later checks can point at the line a value came from.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Mapping
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
from .models import Effort, Thinking
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


class ParamSpec(_Model):
    """A launch-time input, given as `--param name=value`; prompts read it as `params.<name>`."""

    description: str = Field(
        "",
        description="What the param means, e.g. 'The feature to build'; shown to the coordinator and in the error "
        "when a required param is missing. Default: empty.",
    )
    type: Literal["string", "integer", "number", "boolean"] = Field(
        "string",
        description="The value's type: string, integer, number or boolean; command-line values are converted to it "
        "(booleans: true/false, yes/no, on/off, 1/0). Default: string.",
    )
    required: bool = Field(
        False, description="true: `orchestrate run` refuses to start without `--param <name>=...`. Default: false."
    )
    default: Any = Field(
        None,
        description="Value used when the run doesn't give the param: a string, number or boolean of the param's "
        "type, e.g. 3. Not allowed on a required param. Default: none (the param is left out of params).",
    )

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

    model: ModelId = Field(
        DEFAULT_MODEL,
        description="Anthropic model id for stages whose agent and stage set none, without a provider prefix, e.g. "
        f"claude-opus-5-5. Default: {DEFAULT_MODEL}.",
    )
    max_parallel: int = Field(
        4,
        ge=1,
        le=256,
        description="Most stages running at once (1 to 256); 1 = strictly sequential. `orchestrate run "
        "--max-parallel` overrides it. Default: 4.",
    )
    max_tokens: int = Field(
        8192, ge=1, le=200_000, description="Output token limit of each model request (1 to 200000). Default: 8192."
    )
    timeout: float = Field(
        1800,
        gt=0,
        le=86_400,
        description="Seconds one try of a stage may take, the API client's own retries included; a try that runs "
        "over fails. A stage's timeout overrides it. Default: 1800 (30 minutes).",
    )
    max_turns: int = Field(
        30,
        ge=1,
        le=1000,
        description="Model turns a tool-using stage may take before it fails, so tool loops end (1 to 1000). "
        "Default: 30.",
    )
    effort: Effort | None = Field(
        None,
        description="How hard models think and how much they write: low, medium, high, xhigh or max (the levels "
        "a model takes depend on it), sent as output_config.effort. An agent's effort overrides it. "
        "Default: unset (each model's own default).",
    )
    thinking: Thinking | None = Field(
        None,
        description="adaptive: the model thinks before it answers where it decides to; off: it answers at once "
        "(refused for models that always think). An agent's thinking overrides it. Default: unset (each model's "
        "own default).",
    )
    cache_warmup: bool = Field(
        True,
        description="Stages of one agent that start together wait for the first one's reply to begin, so they "
        "read its prompt from the cache instead of each paying to write it. Default: true.",
    )


class Price(_Model):
    """Prices of one model or family in USD per million tokens, e.g. {input: 3, output: 15}."""

    input: float = Field(ge=0, description="USD per million input tokens, e.g. 3. Required.")
    output: float = Field(ge=0, description="USD per million output tokens, e.g. 15. Required.")
    cache_read: float | None = Field(
        None, ge=0, description="USD per million tokens read from the prompt cache. Default: 10% of input."
    )
    cache_write: float | None = Field(
        None, ge=0, description="USD per million tokens written to the prompt cache. Default: 125% of input."
    )
    batch: float | None = Field(
        None,
        gt=0,
        le=1,
        description="What batch: true requests cost, as a share of these prices, e.g. 0.5. Default: 0.5.",
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
        raise ValueError(f"{value!r}: OpenCode models are written provider/model, e.g. 'anthropic/claude-sonnet-5-5'")
    return value


class OpenCodePermission(_Model):
    """OpenCode's per-agent permissions, per tool: allow, ask or deny, or a map of patterns to those.
    A tool left out keeps OpenCode's own default."""

    read: PatternLevels | None = Field(
        None,
        description="Reading files: allow, ask or deny, or {glob: level}, e.g. {'*.env': deny}. Default: OpenCode's.",
    )
    edit: PatternLevels | None = Field(
        None, description="Editing files: allow, ask or deny, or {glob: level}, e.g. deny. Default: OpenCode's."
    )
    glob: PatternLevels | None = Field(
        None, description="Finding files by name pattern: allow, ask or deny, or {pattern: level}. Default: OpenCode's."
    )
    grep: PatternLevels | None = Field(
        None, description="Searching file contents: allow, ask or deny, or {pattern: level}. Default: OpenCode's."
    )
    list: PatternLevels | None = Field(
        None, description="Listing folders: allow, ask or deny, or {path: level}. Default: OpenCode's."
    )
    bash: PatternLevels | None = Field(
        None,
        description="Shell commands: one level, or a map of command patterns to levels, e.g. "
        "{'*': ask, 'git status': allow}. Default: OpenCode's.",
    )
    task: PatternLevels | None = Field(
        None, description="Starting subagents: allow, ask or deny, or {agent: level}. Default: OpenCode's."
    )
    external_directory: PatternLevels | None = Field(
        None,
        description="Touching files outside the project: allow, ask or deny, or {path: level}. Default: OpenCode's.",
    )
    webfetch: PermissionLevel | None = Field(
        None, description="Fetching web pages: allow, ask or deny. Default: OpenCode's."
    )
    websearch: PermissionLevel | None = Field(
        None, description="Searching the web: allow, ask or deny. Default: OpenCode's."
    )
    todowrite: PermissionLevel | None = Field(
        None, description="Writing the todo list: allow, ask or deny. Default: OpenCode's."
    )


PermissionSetting = Annotated[
    Annotated[PermissionLevel, Tag("by-value")] | Annotated[OpenCodePermission, Tag("by-mapping")],
    Discriminator(_shape),
]


class OpenCodeOptions(_Model):
    """Extra settings written into the agent's OpenCode file (output/opencode/agents/), e.g.
    {permission: {edit: deny}}."""

    model: Annotated[StrictStr, AfterValidator(_check_opencode_model)] | None = Field(
        None,
        description="Model for OpenCode only, as provider/model, e.g. anthropic/claude-sonnet-5-5. "
        "Default: anthropic/<the agent's model>.",
    )
    temperature: float | None = Field(
        None, ge=0, le=2, description="Sampling temperature, 0 to 2, e.g. 0.2. Default: OpenCode's."
    )
    top_p: float | None = Field(
        None, ge=0, le=1, description="Nucleus sampling, 0 to 1, e.g. 0.9. Default: OpenCode's."
    )
    steps: int | None = Field(
        None, ge=1, le=10_000, description="Most tool-using steps the agent may take, e.g. 50. Default: OpenCode's."
    )
    permission: PermissionSetting | None = Field(
        None,
        description="What the agent may do without asking: one level (allow, ask or deny) for everything, or per "
        "tool, e.g. {edit: deny, bash: ask}. Default: derived from the agent's tools, else OpenCode's defaults.",
    )
    tools: dict[StrictStr, bool] | None = Field(
        None,
        description="Turn individual OpenCode tools on or off, e.g. {write: false}; prefer permission. "
        "Default: OpenCode's.",
    )
    color: Annotated[StrictStr, AfterValidator(_check_color)] | None = Field(
        None,
        description="Colour of the agent in OpenCode's UI: #RRGGBB, e.g. '#ff8800', or a theme colour (primary, "
        "secondary, accent, success, warning, error, info). Default: OpenCode's.",
    )
    hidden: bool | None = Field(None, description="true: hide the subagent from OpenCode's @ menu. Default: false.")


CLAUDE_MODEL_ALIASES = ("sonnet", "opus", "haiku", "inherit")


def _check_claude_model(value: str) -> str:
    return value if value in CLAUDE_MODEL_ALIASES else _check_model(value)


class ClaudeOptions(_Model):
    """Extra settings written into the agent's Claude Code file (output/claude/agents/), e.g.
    {tools: [Read, Grep, Glob]}."""

    tools: tuple[StrictStr, ...] | None = Field(
        None,
        description="Claude Code tools the subagent may use, e.g. [Read, Grep, Glob]. Default: the agent's tools in "
        "Claude Code's terms, or every tool when the agent lists none.",
    )
    model: Annotated[StrictStr, AfterValidator(_check_claude_model)] | None = Field(
        None,
        description="Model for Claude Code only: an alias (sonnet, opus, haiku, inherit) or a model id, e.g. opus. "
        "Default: the agent's model.",
    )


def _check_command_prefix(value: str) -> str:
    if not value.strip() or "\n" in value or "\x00" in value:
        raise ValueError(f"{value!r} is not a command prefix: give the start of a command, such as 'pytest'")
    return value


class Permissions(_Model):
    """What the `bash` tool may run, e.g. {bash: [pytest, 'git diff']}. Off unless granted."""

    bash: tuple[Annotated[StrictStr, AfterValidator(_check_command_prefix)], ...] = Field(
        (),
        description="Commands the bash tool may run: a command runs only if its words start with one of these, "
        "e.g. [pytest, 'npm test', 'git diff']. Default: [] (no command may run).",
    )
    shell: bool = Field(
        False,
        description="Allow shell syntax (pipes, &&, redirections) in bash commands; each command in it must "
        "still start with an allowed prefix. Default: false.",
    )
    bash_timeout: float = Field(
        120,
        gt=0,
        le=86_400,
        description="Seconds one bash command may take before it and its child processes are killed. Default: 120.",
    )


Tool = Literal["read", "edit", "search", "bash"]
RunnerName = Literal["anthropic", "claude-code", "opencode"]
# What does a stage's work; an agent and a command produce an output later stages read, an approval does not.
StageKind = Literal["agent", "command", "approval"]


class AgentSpec(_Model):
    """An agent type: its instructions template, static model routing, tools and runner."""

    template: TemplateName | None = Field(
        None,
        description="Instructions template, relative to content/instructions/ (or the shipped defaults), e.g. "
        "team/review.md. Default: <agent>.md.",
    )
    model: ModelId | None = Field(
        None, description="Model for every stage this agent runs, e.g. claude-opus-5-5. Default: defaults.model."
    )
    description: str | None = Field(
        None,
        description="One line saying what the agent does; OpenCode and Claude Code show it and pick subagents by "
        "it. Default: generated from the stages the agent runs.",
    )
    opencode: OpenCodeOptions | None = Field(
        None, description="Settings only for the agent's OpenCode file, e.g. {permission: {edit: deny}}. Default: none."
    )
    claude: ClaudeOptions | None = Field(
        None, description="Settings only for the agent's Claude Code file, e.g. {tools: [Read, Grep]}. Default: none."
    )
    tools: tuple[Tool, ...] = Field(
        (),
        description="Tools the agent may use in the workspace: read, edit, search, bash (bash also needs "
        "permissions), e.g. [read, search]. Default: [] (text in, text out).",
    )
    max_turns: int | None = Field(
        None,
        ge=1,
        le=1000,
        description="Model turns a stage of this agent may take (1 to 1000). Default: defaults.max_turns.",
    )
    runner: RunnerName | None = Field(
        None,
        description="What runs the agent's stages: anthropic (the API), claude-code or opencode (their command "
        "lines). Default: anthropic.",
    )
    permissions: Permissions | None = Field(
        None,
        description="What the agent's bash tool may run, e.g. {bash: [pytest]}; replaces the workflow's "
        "permissions. Default: the workflow's permissions.",
    )
    effort: Effort | None = Field(
        None,
        description="How hard the agent's model thinks and how much it writes: low, medium, high, xhigh or max, "
        "e.g. low for quick edits. Also written into the agent's Claude Code and OpenCode files. "
        "Default: defaults.effort.",
    )
    thinking: Thinking | None = Field(
        None,
        description="adaptive or off: whether the agent's model thinks before answering, where the model lets you "
        "choose. Default: defaults.thinking.",
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

    usd: float = Field(
        gt=0, le=1_000_000, description="Most USD the run (or the stage) may spend, e.g. 5. Required, above 0."
    )


class AuditPolicy(_Model):
    """How the audit gates the run."""

    max_rounds: int = Field(
        1,
        ge=1,
        le=10,
        description="Audit rounds at most (1 to 10): after a failed audit, the stages its findings name (and their "
        "descendants) rerun with the findings, then the audit runs again. Default: 1 (no rework).",
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
        "agent",
        description="agent: an agent (or a run: command) does the stage's work. approval: a pure gate with no "
        "agent that waits for `orchestrate approve`. Default: agent.",
    )
    approval: bool | StrictStr = Field(
        False,
        description="Wait for a person's approval of the stage's output before anything downstream starts: "
        "true, or the message to show them, e.g. 'Check the plan before the build'. Default: false.",
    )
    retries: int = Field(
        0,
        ge=0,
        le=10,
        description="Further tries after the stage fails (0 to 10), beyond the API client's own retries of a "
        "request. Default: 0.",
    )
    timeout: float | None = Field(
        None,
        gt=0,
        le=86_400,
        description="Seconds one try of the stage may take in all, e.g. 600. Default: defaults.timeout.",
    )
    continue_on_failure: bool = Field(
        False,
        description="true: if the stage fails, its dependents still run and are told about the failure. "
        "Default: false (they are skipped).",
    )
    budget: Budget | None = Field(
        None, description="Most this stage may spend, every try counted, e.g. {usd: 2}. Default: no stage limit."
    )
    runner: RunnerName | None = Field(
        None,
        description="What runs this stage: anthropic (the API), claude-code or opencode; overrides the agent's. "
        "Default: the agent's runner, else anthropic.",
    )
    permissions: Permissions | None = Field(
        None,
        description="What this stage's bash tool may run, e.g. {bash: [pytest]}; overrides the agent's and the "
        "workflow's. Default: the agent's, else the workflow's.",
    )
    run: StrictStr | None = Field(
        None,
        description="A shell command run instead of an agent, e.g. 'pytest -q': its exit code decides, the tails "
        "of its stdout and stderr are the stage's output. Default: none (an agent runs the stage).",
    )
    env: dict[Annotated[StrictStr, AfterValidator(_check_env_name)], StrictStr] = Field(
        default_factory=dict,
        description="Environment variables for the run: command, e.g. {CI: '1'}; secrets are never inherited. "
        "Default: none added.",
    )
    cwd: RelPath | None = Field(
        None,
        description="Folder the run: command starts in, relative to the project root, e.g. frontend. "
        "Default: the project root.",
    )
    writes: tuple[Annotated[StrictStr, AfterValidator(_check_scope)], ...] | None = Field(
        None,
        description="Paths or globs the stage may change, e.g. ['backend/**']. Stages whose scopes overlap never "
        "run together; a change outside the scope fails the stage. May use {{ item }} in a foreach stage. "
        "Default: unset (no limit).",
    )
    output_schema: dict[StrictStr, Any] | RelPath | None = Field(
        None,
        description="JSON Schema of the stage's structured output, inline or a .json/.yaml file relative to the "
        "project root, e.g. schemas/plan.json; saved as stages/<id>.json and readable by later prompts as data. "
        "Default: none (plain text output).",
    )
    foreach: StrictStr | None = Field(
        None,
        description="Fan out: an expression giving a list, e.g. '{{ stages.plan.output.tasks }}'; the stage runs "
        "once per item, as <id>[0], <id>[1], ..., each seeing its item as `item`. Default: none (runs once).",
    )
    foreach_key: Annotated[StrictStr, AfterValidator(_check_param_name)] | None = Field(
        None,
        description="Name instances by this field of each item (<id>[<value>]) instead of by position, e.g. name. "
        "Default: by position.",
    )
    batch: bool = Field(
        False,
        description="Send the stage's request through the Message Batches API: half the price, but results can "
        "take minutes to hours; for stages without tools that can wait, such as foreach instances. Default: false.",
    )
    condition: StrictStr | None = Field(
        None,
        alias="if",
        description="Run the stage only if this expression over params and upstream outputs is true, "
        'e.g. "params.with_ui"; otherwise it is skipped and its dependents still run. Default: always run.',
    )

    @property
    def gated(self) -> bool:
        return self.type == "approval" or self.approval is not False

    @property
    def approval_message(self) -> str:
        return self.approval if isinstance(self.approval, str) else ""


_AGENT_ONLY = ("prompt", "model", "runner", "permissions", "output_schema", "batch")


def _check_kind(stage: _StagePolicy, agent: str | None, prompt: str | None, model: str | None) -> None:
    """One of three kinds: an agent runs it, a shell command runs it, or a person approves it."""
    values: dict[str, Any] = {
        **{
            name: getattr(stage, name) for name in ("retries", "runner", "permissions", "output_schema", "run", "batch")
        },
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

    id: StageId = Field(
        description="Unique stage id, e.g. backend: lowercase letters, digits, '-' and '_', at most 64 characters "
        "(it becomes a file name). Default: the agent's name."
    )
    agent: AgentName | None = Field(
        None,
        description="The agent that runs the stage, e.g. build; its instructions come from "
        "content/instructions/<agent>.md. Default: none (only for run: commands and type: approval).",
    )
    needs: tuple[StageId, ...] = Field(
        (), description="Stages that must succeed before this one starts, e.g. [plan]. Default: [] (starts first)."
    )
    description: str | None = Field(None, description="What the stage is for; shown to agents. Default: none.")
    prompt: str | None = Field(
        None,
        description="The stage's task, a Jinja template rendered at run time with params and upstream outputs, e.g. "
        "'Plan: {{ params.goal }}'. Default: none (the agent works from its instructions and upstream outputs).",
    )
    model: ModelId | None = Field(
        None, description="Model for this stage only, e.g. claude-opus-5-5. Default: the agent's model."
    )
    outputs: tuple[RelPath, ...] = Field(
        (), description="Files the stage produces, relative to the project root, e.g. [docs/plan.md]. Default: []."
    )

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

    @functools.cached_property  # asked many times per stage by every run: decided once per spec
    def kind(self) -> StageKind:
        """What does the stage's work: an agent, a ``run:`` command, or a person (``type: approval``). The
        validators let exactly one of them be given; everything else asks this, never the fields."""
        if self.run is not None:
            return "command"
        return "agent" if self.agent is not None else "approval"


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
    version: Literal[1] = Field(1, description="Format version of the workflow file; only 1 exists. Default: 1.")
    name: StageId = Field(
        description="Workflow name, e.g. feature: lowercase letters, digits, '-' and '_'. Prefixes the generated "
        "agents' names (feature-plan). Default: the file name without .yaml."
    )
    description: str = Field(
        "", description="What the workflow is for, in a sentence; shown to every agent. Default: empty."
    )
    params: dict[ParamName, ParamSpec] = Field(
        default_factory=dict,
        description="Launch-time inputs by name, given as `--param name=value`, e.g. "
        "{goal: {description: What to build, required: true}}. Default: none.",
    )
    defaults: Defaults = Field(
        default_factory=Defaults,
        description="Settings every stage inherits unless its agent or the stage sets its own, e.g. "
        "{model: claude-sonnet-5-5, max_parallel: 4}. Default: each setting's own default.",
    )
    context: tuple[RelPath, ...] = Field(
        (),
        description="Files injected into every agent's instructions if present, relative to the project root, "
        "e.g. [AGENTS.md, README.md]. Default: [].",
    )
    agents: dict[AgentName, AgentSpec] = Field(
        default_factory=dict,
        description="Agent types by name: template, model routing, tools and per-tool settings, e.g. "
        "{plan: {model: claude-opus-5-5}}. An agent a stage names needs no entry here. Default: none.",
    )
    pricing: dict[Annotated[StrictStr, Field(min_length=1)], Price] = Field(
        default_factory=dict,
        description="USD prices per million tokens for cost estimates and budgets, by model id or family (opus, "
        "sonnet, haiku, fable, mythos), e.g. {sonnet: {input: 2, output: 10}}. Default: each model's list prices "
        "from the genai-prices package.",
    )
    budget: Budget | None = Field(
        None,
        description="Most a run may spend, e.g. {usd: 10}; when the next stage would pass it, no new stage starts. "
        "Default: no limit.",
    )
    audit: AuditPolicy = Field(
        default_factory=AuditPolicy,
        description="Audit policy: how many rounds of rework a failed audit may ask for, e.g. {max_rounds: 2}. "
        "Default: one round, no rework.",
    )
    permissions: Permissions = Field(
        default_factory=Permissions,
        description="What bash tools may run, for every agent and stage that doesn't set its own, e.g. "
        "{bash: [pytest]}. Default: nothing (bash is off).",
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
        """The agent as declared, or the defaults of one that isn't (asked per stage per run: kept, not rebuilt)."""
        return self.agents.get(agent) or _default_agent()


@functools.cache
def _default_agent() -> AgentSpec:
    return AgentSpec()


class Workflow(_WorkflowBase):
    """A workflow in canonical form: a flat list of stages joined by ``needs``."""

    stages: tuple[StageSpec, ...] = Field(
        description="The stages, joined into a graph by their needs; the last one should be the audit (one named "
        "audit, run by auditor, is added when none is). Required, or pipeline: instead."
    )


class PipelineStage(_StagePolicy):
    """A single stage in the grouped form."""

    stage: StageId | None = Field(
        None,
        description="Stage id, e.g. plan: lowercase letters, digits, '-' and '_'. Default: the agent's name "
        "(required for a stage without an agent).",
    )
    agent: AgentName | None = Field(
        None,
        description="The agent that runs the stage, e.g. build. Default: none (only for run: commands and "
        "type: approval).",
    )
    needs: tuple[StageId, ...] | None = Field(
        None,
        description="Stages this one waits for, e.g. [backend, frontend]. Default: every stage of the previous "
        "pipeline item.",
    )
    description: str | None = Field(None, description="What the stage is for; shown to agents. Default: none.")
    prompt: str | None = Field(
        None,
        description="The stage's task, a Jinja template rendered at run time, e.g. 'Plan: {{ params.goal }}'. "
        "Default: none.",
    )
    model: ModelId | None = Field(
        None, description="Model for this stage only, e.g. claude-opus-5-5. Default: the agent's model."
    )
    output: RelPath | None = Field(
        None,
        description="The file the stage produces, e.g. plan.md; shorthand for outputs: [plan.md]. Default: none.",
    )
    outputs: tuple[RelPath, ...] = Field(
        (), description="Files the stage produces, relative to the project root, e.g. [docs/plan.md]. Default: []."
    )

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

    stage: StrictStr | None = Field(
        None, description="Label of the group, e.g. implement (not a stage id; needs can't name it). Default: none."
    )
    description: str | None = Field(None, description="What the group is for. Default: none.")
    parallel: tuple[PipelineStage, ...] = Field(
        min_length=1,
        description="Stages that may run at the same time, at least one; each waits for the previous pipeline item "
        "unless it sets needs. Required.",
    )


def _pipeline_item_kind(value: Any) -> str:
    return "pipeline-group" if isinstance(value, Mapping) and "parallel" in value else "pipeline-stage"


PipelineItem = Annotated[
    Annotated[PipelineStage, Tag("pipeline-stage")] | Annotated[PipelineGroup, Tag("pipeline-group")],
    Discriminator(_pipeline_item_kind),
]
UNION_TAGS = frozenset({"pipeline-stage", "pipeline-group", "by-value", "by-mapping"})


class GroupedWorkflow(_WorkflowBase):
    """The grouped form from the design notes: ``pipeline:`` items, ``parallel:`` groups."""

    pipeline: tuple[PipelineItem, ...] = Field(
        description="Stages in order, each waiting for the item before it; an item with parallel: is a group whose "
        "stages run side by side. Required, or stages: instead."
    )

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
    """JSON Schema (Draft 2020-12) of a workflow file, either form, for editors and ``orchestrate schema``.

    It says what the loader says, in keywords that editors on older drafts (yaml-language-server
    reads Draft 7) understand too: choices the loader makes by shape are if/then/else on that
    shape, so a mistake is reported at its key instead of as "matches none of the forms".
    """
    from pydantic import TypeAdapter

    adapter: TypeAdapter[Workflow | GroupedWorkflow] = TypeAdapter(Workflow | GroupedWorkflow)
    defs: dict[str, Any] = adapter.json_schema(mode="validation")["$defs"]
    _walk_schema(defs, _keys_by_pattern)
    _walk_schema(defs, _choose_by_shape)
    # Values the loader fills in are optional in the file: name (from the file name), stage id (agent).
    for model in ("Workflow", "GroupedWorkflow"):
        defs[model]["required"].remove("name")
    defs["StageSpec"]["required"].remove("id")
    defs["Workflow"]["description"] = "Canonical form: a flat list of stages joined by needs."
    defs["GroupedWorkflow"]["description"] = "Grouped form: pipeline items and parallel groups."
    # The grouped form's items: a mapping with parallel: is a group, anything else a stage.
    defs["GroupedWorkflow"]["properties"]["pipeline"]["items"] = _if_key(
        "parallel", "#/$defs/PipelineGroup", "#/$defs/PipelineStage"
    )
    for model in ("StageSpec", "PipelineStage"):
        # The loader also takes if: under the field's own name, but not both at once.
        spec = defs[model]
        spec["properties"]["condition"] = {
            **spec["properties"]["if"],
            "title": "Condition",
            "description": "Another spelling of if (give one of them): run the stage only if this expression is "
            "true. Default: always run.",
        }
        spec["not"] = {"required": ["if", "condition"]}
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "orchestrate workflow",
        "description": "A workflow file for orchestrate: stages run by agents, joined by needs into a graph that "
        "ends in an audit. Canonical form: stages:; grouped form: pipeline:.",
        "type": "object",
        # The loader reads a file with pipeline: as the grouped form, any other as the canonical one.
        **_if_key("pipeline", "#/$defs/GroupedWorkflow", "#/$defs/Workflow"),
        "$defs": defs,
    }


def _if_key(key: str, then: str, otherwise: str) -> dict[str, Any]:
    return {"if": {"type": "object", "required": [key]}, "then": {"$ref": then}, "else": {"$ref": otherwise}}


def _walk_schema(node: Any, visit: Callable[[dict[str, Any]], None]) -> None:
    if isinstance(node, dict):
        visit(node)
        for value in node.values():
            _walk_schema(value, visit)
    elif isinstance(node, list):
        for value in node:
            _walk_schema(value, visit)


def _keys_by_pattern(node: dict[str, Any]) -> None:
    """Pydantic writes checked mapping keys as patternProperties, which lets any other key through:
    say instead that every key must match and every value fit."""
    patterns = node.get("patternProperties")
    if node.get("type") == "object" and isinstance(patterns, dict) and len(patterns) == 1:
        [(pattern, value)] = patterns.items()
        del node["patternProperties"]
        node["propertyNames"] = {"pattern": pattern}
        node["additionalProperties"] = value


def _choose_by_shape(node: dict[str, Any]) -> None:
    """A value-or-mapping union (permission levels) becomes a choice on the value's shape, as in the models."""
    options = node.get("oneOf")
    if isinstance(options, list) and len(options) == 2 and "discriminator" not in node:
        by_value, by_mapping = options
        is_mapping = by_mapping.get("type") == "object" or "$ref" in by_mapping
        if is_mapping and by_value.get("type") == "string":
            del node["oneOf"]
            node.update({"if": {"type": "object"}, "then": by_mapping, "else": by_value})
