"""The workflow as a whole, in its canonical (stages) and grouped (pipeline) forms, and where each value was written."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from pydantic import (
    Discriminator,
    Field,
    PrivateAttr,
    StrictStr,
    Tag,
    model_validator,
)

from ..errors import Location
from .fields import (
    AgentName,
    ModelId,
    ParamName,
    Path_,
    RelPath,
    StageId,
    _Model,
)
from .settings import (
    AgentSpec,
    AuditPolicy,
    Budget,
    Defaults,
    ParamSpec,
    Permissions,
    Price,
)
from .stages import StageSpec, _check_kind, _StagePolicy


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
    sandbox: Literal["bubblewrap", "none"] = Field(
        "bubblewrap",
        description="How commands (run: stages, the bash tool) are confined: bubblewrap (Linux; the bwrap command "
        "of the bubblewrap package) or none, which runs them unconfined and warns on every run. Default: bubblewrap.",
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
