"""Rendering: agent instructions at compile time, stage prompts at run time.

A ``Renderer`` belongs to one plan. It reads the workflow's context files once,
records which template files each agent's render used (for the source hash in
generated files) and turns every Jinja failure into a ``WorkflowError`` naming
the template file and line.
"""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from jinja2 import Template, TemplateError, TemplateNotFound, TemplateSyntaxError, Undefined
from jinja2.exceptions import SecurityError, UndefinedError

from ..errors import Location, WorkflowError
from ..graph import Plan
from ..project import INSTRUCTIONS_DIR, Project
from .checks import TemplateChecker, field_location, prompt_location
from .context import COORDINATOR, instruction_context, stage_dicts
from .sandbox import BUILTIN_PREFIX, Loaded, make_environment

__all__ = ["MAX_CONTEXT_BYTES", "RenderedAgent", "Renderer"]

MAX_CONTEXT_BYTES = 256 * 1024
# The workflow section of every agent's brief (a project may override it in content/instructions/).
WORKFLOW_SECTION = "_workflow.md"


def _is_workflow_section(display: str) -> bool:
    return display == WORKFLOW_SECTION or display.endswith("/" + WORKFLOW_SECTION)


def _context_section(files: list[dict[str, str]]) -> str:
    text = "## Project context\n"
    for item in files:
        text += f"\n### {item['path']}\n\n{item['text'].rstrip()}\n"
    return text


@dataclass(frozen=True)
class RenderedAgent:
    """One agent's instructions, ready for a config file or a system prompt."""

    agent: str
    name: str
    description: str
    model: str
    text: str
    coordinator: bool
    sources: tuple[tuple[str, bytes], ...]
    # What every agent of the workflow is told alike (the workflow and the project context): sent first,
    # before ``text``, so one cached prefix serves every agent. Empty for the coordinator.
    brief: str = ""

    @property
    def instructions(self) -> str:
        """The whole system prompt: the brief, then the agent's own instructions."""
        return f"{self.brief}\n{self.text}" if self.brief else self.text

    def sources_digest(self) -> str:
        """A hash of every file the text came from; CRLF and LF checkouts hash the same."""
        digest = hashlib.sha256()
        for name, data in sorted(self.sources):
            digest.update(name.encode() + b"\0" + data.replace(b"\r\n", b"\n") + b"\0")
        return digest.hexdigest()


class Renderer:
    """Renders and checks one plan's templates and prompts."""

    def __init__(self, project: Project | None, plan: Plan, source: str, source_bytes: bytes = b"") -> None:
        self.project = project
        self.plan = plan
        self.source = source
        self.source_bytes = source_bytes
        self.env, self.loader = make_environment(project.instructions_dir if project else None)
        self.checker = TemplateChecker(self.env, self.loader, plan)
        self.warnings: list[str] = []
        self._context_files: list[dict[str, str]] | None = None
        self._stages: dict[str, dict[str, Any]] | None = None
        self._workflow_section: tuple[str, list[tuple[str, bytes]]] | None = None

    def check(self) -> list[WorkflowError]:
        """Every template and prompt problem that can be found without rendering."""
        return self.checker.check_all()

    # -- compile time --------------------------------------------------------------------------------

    def render_agents(self) -> list[RenderedAgent]:
        """Every agent the plan uses, then the coordinator."""
        out = [self.render_agent(agent) for agent in self.plan.agents]
        out.append(self.render_agent(COORDINATOR, coordinator=True))
        return out

    def render_agent(self, agent: str, *, coordinator: bool = False) -> RenderedAgent:
        name = f"{COORDINATOR}.md" if coordinator else self.plan.workflow.agent_spec(agent).template_name(agent)
        files = self.context_files()
        context = self._context(agent, coordinator)
        record: list[Loaded] = []
        self.loader.record = record
        try:
            template = self._get_template(name, None if coordinator else agent)
            text = self._render(template.render, context, name)
        finally:
            self.loader.record = None
        text = text.replace("\r\n", "\n").strip("\n") + "\n"
        with_context = bool(files) and not self._mentions_context(template)
        brief = ""
        sources = [(self.source, self.source_bytes)]
        sources += [(item.display, item.data) for item in record]
        if coordinator:
            if with_context:  # the coordinator is never sent to the API: its context simply follows its text
                text += "\n" + _context_section(files)
        else:
            # A template that includes the workflow section itself keeps it where it put it.
            with_workflow = not any(_is_workflow_section(item.display) for item in record)
            parts: list[str] = []
            if with_workflow:
                workflow_text, workflow_sources = self.workflow_section()
                parts.append(workflow_text)
                sources += workflow_sources
            if with_context:
                parts.append(_context_section(files))
            brief = "\n".join(parts)
        sources += [(item["path"], item["text"].encode()) for item in files]
        agent_ctx = context["agent"]
        return RenderedAgent(
            agent=agent,
            name=agent_ctx["config_name"],
            description=agent_ctx["description"],
            model=agent_ctx["model"],
            text=text,
            coordinator=coordinator,
            sources=tuple(dict.fromkeys(sources)),
            brief=brief,
        )

    def workflow_section(self) -> tuple[str, list[tuple[str, bytes]]]:
        """``_workflow.md`` rendered once for the workflow: the first part of every agent's brief."""
        if self._workflow_section is None:
            context = self._context(COORDINATOR, True)
            record: list[Loaded] = []
            self.loader.record = record
            try:
                template = self._get_template(WORKFLOW_SECTION, None)
                text = self._render(template.render, context, WORKFLOW_SECTION)
            finally:
                self.loader.record = None
            text = text.replace("\r\n", "\n").strip("\n") + "\n"
            self._workflow_section = (text, [(item.display, item.data) for item in record])
        return self._workflow_section

    def _context(self, agent: str, coordinator: bool) -> dict[str, Any]:
        if self._stages is None:
            self._stages = stage_dicts(self.plan)
        return instruction_context(
            self.plan,
            agent,
            coordinator=coordinator,
            source=self.source,
            context_files=self.context_files(),
            stages=self._stages,
        )

    def context_files(self) -> list[dict[str, str]]:
        """The workflow's ``context:`` files that exist, read once; missing ones become warnings."""
        if self._context_files is not None:
            return self._context_files
        files: list[dict[str, str]] = []
        for index, rel in enumerate(self.plan.workflow.context):
            if self.project is None:
                continue
            path = self.project.root / rel
            if not path.is_file():
                self.warnings.append(f"context file {rel} not found; agents get no {rel}")
                continue
            where = self.plan.workflow.locate("context", index)
            resolved = path.resolve()
            if not resolved.is_relative_to(self.project.root.resolve()):
                raise WorkflowError(f"context file {rel} resolves outside the project", location=where)
            data = resolved.read_bytes()
            if len(data) > MAX_CONTEXT_BYTES:
                raise WorkflowError(
                    f"context file {rel} is {len(data):,} bytes; the limit is {MAX_CONTEXT_BYTES:,}",
                    location=where,
                    hint="point context at a shorter summary file",
                )
            try:
                text = data.decode("utf-8-sig").replace("\r\n", "\n")
            except UnicodeDecodeError:
                raise WorkflowError(f"context file {rel} is not UTF-8 text", location=where) from None
            files.append({"path": rel, "text": text})
        self._context_files = files
        return files

    # -- run time ------------------------------------------------------------------------------------

    def render_prompt(self, stage_id: str, values: Mapping[str, Any]) -> str:
        """A stage's prompt with run-time values (``params``, ``task``, ``stages``, ...)."""
        stage = self.plan.stages[stage_id]
        if not stage.prompt:
            return ""
        try:
            template = self.env.from_string(stage.prompt)
        except TemplateSyntaxError as exc:
            raise WorkflowError(
                f"syntax error in the prompt of stage {stage_id!r}: {exc.message}",
                location=prompt_location(self.plan, stage_id, exc.lineno),
            ) from None
        return self._render(template.render, dict(values), f"the prompt of stage {stage_id!r}", stage_id=stage_id)

    def evaluate(self, stage_id: str, field_name: str, expression: str, values: Mapping[str, Any]) -> Any:
        """The value of a stage's ``if`` or ``foreach`` expression (bare, or wrapped in ``{{ }}``)."""
        text = expression.strip()
        if text.startswith("{{") and text.endswith("}}"):
            text = text[2:-2].strip()
        what = f"the {field_name} of stage {stage_id!r}"
        location = field_location(self.plan, stage_id, field_name)
        try:
            compiled = self.env.compile_expression(text, undefined_to_none=False)
        except TemplateSyntaxError as exc:
            raise WorkflowError(f"syntax error in {what}: {exc.message}", location=location) from None

        def run(context: dict[str, Any]) -> Any:
            value = compiled(**context)
            if isinstance(value, Undefined):
                value._fail_with_undefined_error()
            return value

        try:
            return run(dict(values))
        except WorkflowError:
            raise
        except (TemplateError, ArithmeticError, TypeError, ValueError, AttributeError, LookupError) as exc:
            # SecurityError and UndefinedError are TemplateErrors: the sandbox and unknown names land here too.
            raise WorkflowError(f"{what} could not be evaluated: {exc}", location=location) from None

    def render_text(self, stage_id: str, field_name: str, text: str, values: Mapping[str, Any]) -> str:
        """A short run-time text of a stage (a write scope pattern) rendered with the stage's values."""
        if "{" not in text:
            return text
        what = f"the {field_name} of stage {stage_id!r}"
        try:
            template = self.env.from_string(text)
        except TemplateSyntaxError as exc:
            raise WorkflowError(
                f"syntax error in {what}: {exc.message}", location=field_location(self.plan, stage_id, field_name)
            ) from None
        return self._render(template.render, dict(values), what, stage_id=stage_id)

    # -- helpers -------------------------------------------------------------------------------------

    def _get_template(self, name: str, agent: str | None) -> Template:
        try:
            return self.env.get_template(name)
        except TemplateNotFound as exc:
            if exc.name != name:
                raise WorkflowError(f"template {exc.name!r} (used by {name}) not found") from None
            raise self.checker.not_found(name, agent) from None
        except TemplateSyntaxError as exc:
            raise WorkflowError(
                f"template syntax error: {exc.message}", location=Location(exc.filename or name, exc.lineno)
            ) from None

    def _mentions_context(self, template: Template) -> bool:
        name = template.name or ""
        found = self.loader.locate(name)
        if found is not None:
            self.checker.check_template(name, None, frozenset(), ())  # analysed once, then cached
        return self.checker.template_uses(name, "context")

    def _render(
        self, render: Callable[..., str], context: dict[str, Any], what: str, *, stage_id: str | None = None
    ) -> str:
        try:
            return render(context)
        except SecurityError as exc:
            raise WorkflowError(
                f"{what} tried something the template sandbox forbids: {exc}",
                location=self._error_location(sys.exc_info()[2], stage_id),
                hint="templates may read the variables they are given, not Python internals",
            ) from None
        except UndefinedError as exc:
            raise WorkflowError(
                f"{what}: {exc.message}",
                location=self._error_location(sys.exc_info()[2], stage_id),
                hint="check the spelling against the documented template variables",
            ) from None
        except TemplateNotFound as exc:
            raise WorkflowError(
                f"{what}: template {exc.name!r} not found",
                location=self._error_location(sys.exc_info()[2], stage_id),
            ) from None
        except TemplateSyntaxError as exc:
            raise WorkflowError(
                f"template syntax error: {exc.message}", location=Location(exc.filename or what, exc.lineno)
            ) from None
        except (TemplateError, ArithmeticError, TypeError, ValueError, AttributeError, LookupError) as exc:
            raise WorkflowError(
                f"{what} failed to render: {exc}", location=self._error_location(sys.exc_info()[2], stage_id)
            ) from None
        except RecursionError:
            raise WorkflowError(f"{what} recurses without end (an include or macro calling itself?)") from None

    def _error_location(self, tb: TracebackType | None, stage_id: str | None) -> Location | None:
        """The template file and line of the innermost template frame of a traceback.

        Jinja rewrites tracebacks so template frames carry the template's file name and line.
        """
        found: Location | None = None
        while tb is not None:
            filename = tb.tb_frame.f_code.co_filename
            if filename == "<template>" and stage_id is not None:
                found = prompt_location(self.plan, stage_id, tb.tb_lineno)
            elif filename.startswith((INSTRUCTIONS_DIR, BUILTIN_PREFIX)):
                found = Location(filename, tb.tb_lineno)
            tb = tb.tb_next
        return found
