"""Static checks of templates and prompts: problems found without rendering, with file and line.

- syntax errors, unknown filters and tests;
- variables that don't exist (with a did-you-mean);
- run-time-only variables (``params``, ``task``, upstream outputs) used in instructions;
- in prompts: ``params.x`` the workflow doesn't declare, ``stages.x`` that isn't upstream;
- includes and extends that point nowhere, or outside the template folders.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from jinja2 import TemplateNotFound, TemplateSyntaxError, nodes

from ..errors import Location, WorkflowError
from ..graph import Plan
from ..project import INSTRUCTIONS_DIR
from .context import COMPILE_TIME_NAMES, COORDINATOR, PROMPT_NAMES, RUN_TIME_ONLY_NAMES
from .sandbox import BUILTIN_PREFIX, ConfinedLoader, Sandbox

__all__ = ["TemplateChecker", "as_template", "field_location", "prompt_location"]

JINJA_DOCS = "https://jinja.palletsprojects.com/en/stable/templates/"


def prompt_location(plan: Plan, stage_id: str, line: int) -> Location:
    """Where line ``line`` of a stage's prompt sits in the workflow file."""
    wf = plan.workflow
    index = next((i for i, s in enumerate(wf.stages) if s.id == stage_id), None)
    if index is None:
        return wf.locate()
    return wf.locate("stages", index, "prompt", line_offset=line - 1)


def field_location(plan: Plan, stage_id: str, field_name: str) -> Location:
    """Where a field of a stage sits in the workflow file."""
    wf = plan.workflow
    index = next((i for i, s in enumerate(wf.stages) if s.id == stage_id), None)
    return wf.locate() if index is None else wf.locate("stages", index, field_name)


def as_template(expression: str) -> str:
    """An ``if``/``foreach`` value as a template: ``params.x`` and ``{{ params.x }}`` mean the same."""
    text = expression.strip()
    return text if text.startswith("{{") and text.endswith("}}") else "{{ " + text + " }}"


@dataclass(frozen=True)
class _Analysis:
    """What a template uses, found by walking its syntax tree (no code generation: it is slow)."""

    names: tuple[tuple[str, int], ...]
    assigned: frozenset[str]
    refs: tuple[tuple[str, int], ...]
    lookups: tuple[tuple[str, str, int], ...]


# Names Jinja provides inside loops, macros and call blocks.
_IMPLICIT = frozenset({"loop", "caller", "varargs", "kwargs", "self", "super"})


class TemplateChecker:
    def __init__(self, env: Sandbox, loader: ConfinedLoader, plan: Plan) -> None:
        self.env = env
        self.loader = loader
        self.plan = plan
        self._files: dict[str, tuple[str, _Analysis] | TemplateSyntaxError] = {}
        self._stages_read: dict[str, frozenset[str]] = {}

    def analyze(self, source: str, name: str | None = None, filename: str | None = None) -> _Analysis:
        """Parse ``source`` and list what it uses; raises ``TemplateSyntaxError`` for syntax errors
        and for filters or tests that don't exist."""
        ast = self.env.parse(source, name, filename)
        for kind, found, known in (
            ("filter", ast.find_all(nodes.Filter), self.env.filters),
            ("test", ast.find_all(nodes.Test), self.env.tests),
        ):
            for use in found:
                if use.name not in known:
                    raise TemplateSyntaxError(f"No {kind} named {use.name!r}.", use.lineno, name, filename)
        names = list(ast.find_all(nodes.Name))
        assigned = {n.name for n in names if n.ctx in ("store", "param")}
        assigned.update(m.name for m in ast.find_all(nodes.Macro))
        assigned.update(i.target for i in ast.find_all(nodes.Import))
        for imp in ast.find_all(nodes.FromImport):
            assigned.update(n if isinstance(n, str) else n[1] for n in imp.names)
        first: dict[str, int] = {}
        for name_node in names:
            if name_node.ctx == "load" and name_node.name not in assigned and name_node.name not in _IMPLICIT:
                first.setdefault(name_node.name, name_node.lineno)
        refs = []
        for ref in ast.find_all((nodes.Include, nodes.Extends, nodes.Import, nodes.FromImport)):
            template = getattr(ref, "template", None)
            if isinstance(template, nodes.Const) and isinstance(template.value, str):
                refs.append((template.value, int(ref.lineno)))
        return _Analysis(
            names=tuple(sorted(first.items(), key=lambda item: item[1])),
            assigned=frozenset(assigned),
            refs=tuple(refs),
            lookups=tuple(_lookups(ast, {"params", "stages"})),
        )

    def stages_read(self, stage_id: str) -> frozenset[str]:
        """The ``stages.<id>`` a stage's prompt reads (known once ``check_all`` has run)."""
        return self._stages_read.get(stage_id, frozenset())

    def template_uses(self, name: str, var: str) -> bool:
        """Whether an (already checked) template reads ``var`` itself."""
        parsed = self._files.get(name)
        return isinstance(parsed, tuple) and any(n == var for n, _ in parsed[1].names)

    def check_all(self, *, include_builtin: bool = False) -> list[WorkflowError]:
        errors: list[WorkflowError] = []
        checked: set[str] = set()
        for agent in (*self.plan.agents, None):
            name = f"{COORDINATOR}.md" if agent is None else self.plan.workflow.agent_spec(agent).template_name(agent)
            if name in checked:
                continue
            checked.add(name)
            try:
                errors.extend(self.check_template(name, agent, frozenset(), (), include_builtin=include_builtin))
            except WorkflowError as exc:
                errors.append(exc)
        for stage_id in self.plan.order:
            errors.extend(self.check_prompt(stage_id))
        unique: dict[tuple[str, str], WorkflowError] = {}
        for error in errors:
            unique.setdefault((str(error.location), error.message), error)
        return list(unique.values())

    def check_template(
        self,
        name: str,
        agent: str | None,
        allowed: frozenset[str],
        chain: tuple[str, ...],
        *,
        include_builtin: bool = False,
    ) -> list[WorkflowError]:
        """One instructions template and everything it includes; ``allowed`` are the includer's locals."""
        try:
            found = self.loader.locate(name)
        except TemplateNotFound as exc:
            raise WorkflowError(f"template {exc.message} is refused: templates must stay inside their folder") from None
        if found is None:
            raise self.not_found(name, agent)
        if found[1].startswith(BUILTIN_PREFIX) and not allowed and not include_builtin:
            # The shipped templates are checked by orchestrate's own tests; only what a project
            # wrote (or passes into them) needs checking here, which keeps validate fast.
            return []
        parsed = self._parse_file(name, *found)
        if isinstance(parsed, TemplateSyntaxError):
            return [
                WorkflowError(
                    f"template syntax error: {parsed.message}",
                    location=Location(parsed.filename or name, parsed.lineno),
                    hint=JINJA_DOCS,
                )
            ]
        display, info = parsed
        errors: list[WorkflowError] = []
        local = allowed | info.assigned
        for var, line in info.names:
            if var not in local and var not in COMPILE_TIME_NAMES and var not in self.env.globals:
                errors.append(self.bad_name(var, Location(display, line), compile_time=True))
        for ref, line in info.refs:
            if ref == name or ref in chain:
                continue
            where = Location(display, line)
            try:
                found_ref = self.loader.locate(ref)
            except TemplateNotFound as exc:
                errors.append(
                    WorkflowError(
                        f"template {exc.message} is refused: templates must stay inside their folder", location=where
                    )
                )
                continue
            if found_ref is None:
                errors.append(
                    WorkflowError(
                        f"template {ref!r} included by {display} not found",
                        location=where,
                        hint="includes are looked up in content/instructions/, then the built-in templates",
                    )
                )
                continue
            errors.extend(self.check_template(ref, agent, local, (*chain, name), include_builtin=include_builtin))
        return errors

    def check_prompt(self, stage_id: str) -> list[WorkflowError]:
        """The stage's run-time texts: its prompt, its ``if`` and ``foreach`` expressions, its write scope."""
        stage = self.plan.stages[stage_id]
        texts: list[tuple[str, str, frozenset[str]]] = []
        item = frozenset({"item"}) if stage.foreach else frozenset()
        if stage.prompt:
            texts.append(("prompt", stage.prompt, item))
        if stage.condition:
            texts.append(("if", as_template(stage.condition), frozenset()))
        if stage.foreach:
            texts.append(("foreach", as_template(stage.foreach), frozenset()))
        for pattern in stage.writes or ():
            texts.append(("writes", pattern, item))
        for pattern in stage.outputs:
            if "{" in pattern:
                texts.append(("outputs", pattern, item))
        errors: list[WorkflowError] = []
        read: set[str] = set()
        for field_name, text, extra in texts:
            errors.extend(self._check_run_text(stage_id, field_name, text, extra, read))
        if read:
            self._stages_read[stage_id] = frozenset(read)
        return errors

    def _check_run_text(
        self, stage_id: str, field_name: str, text: str, extra: frozenset[str], read: set[str]
    ) -> list[WorkflowError]:
        stage = self.plan.stages[stage_id]
        what = "the prompt" if field_name == "prompt" else f"the {field_name} of"
        what = f"{what} of stage {stage_id!r}" if field_name == "prompt" else f"{what} stage {stage_id!r}"

        def where(line: int) -> Location:
            if field_name == "prompt":
                return prompt_location(self.plan, stage_id, line)
            return field_location(self.plan, stage_id, field_name)

        try:
            info = self.analyze(text)
        except TemplateSyntaxError as exc:
            return [WorkflowError(f"syntax error in {what}: {exc.message}", location=where(exc.lineno))]
        read.update(key for base, key, _ in info.lookups if base == "stages")
        errors: list[WorkflowError] = []
        for var, line in info.names:
            if var not in PROMPT_NAMES and var not in extra and var not in self.env.globals:
                if var == "item":
                    errors.append(
                        WorkflowError(
                            f"{what} uses item, which only a foreach stage has",
                            location=where(line),
                            hint="add foreach: to the stage, or drop item",
                        )
                    )
                    continue
                errors.append(self.bad_name(var, where(line), compile_time=False))
        params = sorted(self.plan.workflow.params)
        upstream: set[str] | None = None
        for base, key, line in info.lookups:
            at = where(line)
            if base == "params" and key not in params:
                close = difflib.get_close_matches(key, params, n=1)
                errors.append(
                    WorkflowError(
                        f"{what} uses params.{key}, which the workflow does not declare",
                        location=at,
                        hint=f"did you mean params.{close[0]}?" if close else f"declare it under params: {key}: ...",
                    )
                )
            elif base == "stages" and key not in stage.needs:
                if upstream is None:  # most prompts read direct needs; walk the graph only when not
                    upstream = self.plan.ancestors(stage_id)
                if key in upstream:
                    continue
                if key in self.plan.stages:
                    hint = f"add {key!r} to its needs"
                else:
                    hint = f"no stage is called {key!r}; upstream: " + (", ".join(sorted(upstream)) or "none")
                errors.append(
                    WorkflowError(
                        f"{what} reads stages.{key}, which is not upstream of it",
                        location=at,
                        hint=hint,
                    )
                )
        return errors

    def _parse_file(self, name: str, path: Path, display: str) -> tuple[str, _Analysis] | TemplateSyntaxError:
        """Each template file is analysed once per compile, however many templates include it."""
        if name not in self._files:
            try:
                source = path.read_bytes().decode("utf-8-sig", errors="replace").replace("\r\n", "\n")
                self._files[name] = (display, self.analyze(source, name, display))
            except OSError as exc:
                self._files[name] = TemplateSyntaxError(f"can't read the template: {exc.strerror}", 1, name, display)
            except TemplateSyntaxError as exc:
                self._files[name] = exc
        return self._files[name]

    def bad_name(self, var: str, location: Location, *, compile_time: bool) -> WorkflowError:
        if compile_time and var in RUN_TIME_ONLY_NAMES:
            return WorkflowError(
                f"{var!r} is only known at run time, but instructions are rendered at compile time",
                location=location,
                hint="use it in a stage's prompt instead; instructions can use: "
                + ", ".join(sorted(COMPILE_TIME_NAMES)),
            )
        known = sorted(COMPILE_TIME_NAMES if compile_time else PROMPT_NAMES)
        close = difflib.get_close_matches(var, known, n=1)
        if not compile_time and var in COMPILE_TIME_NAMES:
            hint = f"{var!r} exists only in instructions; prompts can use: {', '.join(known)}"
        else:
            hint = f"did you mean {close[0]!r}?" if close else "known variables: " + ", ".join(known)
        return WorkflowError(f"unknown template variable {var!r}", location=location, hint=hint)

    def not_found(self, name: str, agent: str | None) -> WorkflowError:
        wf = self.plan.workflow
        # Partials (_workflow.md, _rules.md, ...) are pieces of templates, not an agent's instructions.
        whole = [t for t in self.loader.list_templates() if not t.rsplit("/", 1)[-1].startswith("_")]
        close = difflib.get_close_matches(name, whole, n=1)
        if agent is None:
            where = wf.locate()
        elif agent in wf.agents and wf.agents[agent].template:
            where = wf.locate("agents", agent, "template")
        else:
            index = next((i for i, s in enumerate(wf.stages) if s.agent == agent), None)
            where = wf.locate("stages", index, "agent") if index is not None else wf.locate()
        owner = f"agent {agent!r}" if agent else "the coordinator"
        hint = f"did you mean {close[0]!r}? " if close else ""
        hint += f"create {INSTRUCTIONS_DIR}/{name}, or set agents.{agent or 'NAME'}.template"
        return WorkflowError(
            f"template {name!r} for {owner} not found in {INSTRUCTIONS_DIR}/ or the built-in templates",
            location=where,
            hint=hint,
        )


def _lookups(ast: nodes.Template, bases: set[str]) -> Iterator[tuple[str, str, int]]:
    """``params.x`` and ``params['x']`` look-ups on the given top-level names."""
    for node in ast.find_all(nodes.Getattr):
        target = node.node
        if isinstance(target, nodes.Name) and target.name in bases and target.ctx == "load":
            yield target.name, node.attr, node.lineno
    for item in ast.find_all(nodes.Getitem):
        target = item.node
        arg = item.arg
        if not (isinstance(target, nodes.Name) and target.name in bases and target.ctx == "load"):
            continue
        if isinstance(arg, nodes.Const) and isinstance(arg.value, str):
            yield target.name, arg.value, item.lineno
