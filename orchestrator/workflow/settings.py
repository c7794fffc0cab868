"""Settings of a workflow and its agents: params, defaults, prices, permissions, agents, budget, audit policy."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    Discriminator,
    Field,
    StrictStr,
    Tag,
    model_validator,
)

from ..models import Effort, Thinking
from .fields import (
    DEFAULT_MODEL,
    ModelId,
    TemplateName,
    _check_model,
    _Model,
)


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
    network: bool | None = Field(
        None,
        description="Let the commands of this agent's stages (the bash tool) reach the network. Default: false.",
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
