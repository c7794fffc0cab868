"""A stage: what it does besides its text (gates, retries, limits, tools, contracts, fan-out) and what runs it."""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    ConfigDict,
    Field,
    StrictStr,
    model_validator,
)

from ..scopes import scope_problem
from .fields import (
    AgentName,
    ModelId,
    RelPath,
    StageId,
    _check_param_name,
    _Model,
)
from .settings import (
    Budget,
    Permissions,
    RunnerName,
    StageKind,
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
    network: bool | None = Field(
        None,
        description="Let the stage's commands (a run: command, the bash tool) reach the network; they run without "
        "it otherwise. Default: its agent's network, else false.",
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
