"""The workflow JSON Schema editors use: documented everywhere, valid, and in step with the loader."""

from __future__ import annotations

import json
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from jsonschema.exceptions import best_match

from orchestrator.errors import WorkflowError
from orchestrator.loader import load_mapping, parse_workflow
from orchestrator.workflow import json_schema

from .conftest import FEATURE, REPO, CliRunner, TempProject

SCHEMA = json_schema()
REPO_WORKFLOWS = sorted(
    p for pattern in ("workflows/*.y*ml", "examples/*/workflows/*.y*ml") for p in REPO.glob(pattern)
)
# Keywords whose value maps names to subschemas, and ones whose value is one subschema or a list of them.
NAMED_SUBSCHEMAS = ("properties", "patternProperties", "$defs", "dependentSchemas")
SUBSCHEMAS = ("items", "additionalProperties", "propertyNames", "not", "if", "then", "else", "contains")
SUBSCHEMA_LISTS = ("anyOf", "oneOf", "allOf", "prefixItems")
# What editors on Draft 7 (yaml-language-server) understand, plus $defs, which they reach by JSON pointer.
DRAFT7_KEYWORDS = {
    "$schema", "$ref", "$defs", "title", "description", "default", "examples", "type", "enum", "const",
    "properties", "patternProperties", "additionalProperties", "propertyNames", "required", "items",
    "minItems", "maxItems", "minLength", "maxLength", "pattern", "minimum", "maximum", "exclusiveMinimum",
    "exclusiveMaximum", "anyOf", "oneOf", "allOf", "not", "if", "then", "else",
}  # fmt: skip


def resolve(ref: str) -> dict[str, Any]:
    assert ref.startswith("#/$defs/"), ref
    definition: dict[str, Any] = SCHEMA["$defs"][ref.removeprefix("#/$defs/")]
    return definition


def reachable() -> Iterator[tuple[str, dict[str, Any]]]:
    """Every subschema reachable from the top, following $ref into $defs, each once, with a readable path."""
    seen: set[str] = set()
    todo: list[tuple[str, dict[str, Any]]] = [("(top)", SCHEMA)]
    while todo:
        path, node = todo.pop()
        yield path, node
        ref = node.get("$ref")
        if isinstance(ref, str) and ref not in seen:
            seen.add(ref)
            todo.append((ref.removeprefix("#/$defs/"), resolve(ref)))
        for keyword in NAMED_SUBSCHEMAS:
            if keyword != "$defs":  # definitions count only where something refers to them
                todo.extend((f"{path}.{name}", sub) for name, sub in node.get(keyword, {}).items())
        for keyword in SUBSCHEMAS:
            if isinstance(node.get(keyword), dict):
                todo.append((f"{path}[{keyword}]", node[keyword]))
        for keyword in SUBSCHEMA_LISTS:
            todo.extend((f"{path}[{keyword}]", sub) for sub in node.get(keyword, ()))


def described_properties() -> Iterator[tuple[str, str, dict[str, Any], bool]]:
    """(owner path, property name, property schema, required) for every property of the schema."""
    for path, node in reachable():
        required = set(node.get("required", ()))
        for name, sub in node.get("properties", {}).items():
            yield path, name, sub, name in required


def test_every_property_anywhere_has_a_description() -> None:
    properties = list(described_properties())
    assert len(properties) > 100  # the walk reached the nested models, not just the top level
    owners = {path.split(".")[0] for path, *_ in properties}
    assert {"Workflow", "GroupedWorkflow", "StageSpec", "PipelineStage", "PipelineGroup", "AgentSpec"} <= owners
    assert {"Defaults", "ParamSpec", "Permissions", "Budget", "AuditPolicy", "Price"} <= owners
    assert {"OpenCodeOptions", "OpenCodePermission", "ClaudeOptions"} <= owners
    missing = sorted({f"{path}.{name}" for path, name, sub, _ in properties if not sub.get("description", "").strip()})
    assert missing == [], f"properties without a description: {', '.join(missing)}"


def test_every_optional_property_says_its_default() -> None:
    silent = sorted(
        {
            f"{path}.{name}"
            for path, name, sub, required in described_properties()
            if not required and "default" not in sub.get("description", "").lower()
        }
    )
    assert silent == [], f"optional properties whose description doesn't give the default: {', '.join(silent)}"


def test_every_definition_is_described_and_the_top_is_titled() -> None:
    assert SCHEMA["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert SCHEMA["title"] == "orchestrate workflow"
    assert SCHEMA["description"].strip()
    assert "$id" not in SCHEMA  # so a copy saved anywhere resolves its own $refs
    undescribed = sorted(name for name, definition in SCHEMA["$defs"].items() if not definition.get("description"))
    assert undescribed == []


def test_the_schema_is_valid_draft_2020_12() -> None:
    jsonschema.Draft202012Validator.check_schema(SCHEMA)


def test_the_schema_uses_only_keywords_draft_7_editors_understand() -> None:
    used = {keyword for _, node in reachable() for keyword in node}
    assert used <= DRAFT7_KEYWORDS, sorted(used - DRAFT7_KEYWORDS)


@pytest.mark.parametrize("path", REPO_WORKFLOWS, ids=lambda p: p.relative_to(REPO).as_posix())
def test_every_workflow_of_the_repo_validates(path: Path) -> None:
    # Read as the loader reads it (YAML 1.2 core schema, like yaml-language-server), and as a Draft 7 editor would.
    data = load_mapping(path)
    for validator in (jsonschema.Draft202012Validator(SCHEMA), jsonschema.Draft7Validator(SCHEMA)):
        problems = [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(data)]
        assert problems == [], path


def test_the_repo_has_workflows_in_both_places() -> None:
    shown = {p.relative_to(REPO).parts[0] for p in REPO_WORKFLOWS}
    assert shown == {"workflows", "examples"}


def errors_of(text: str, tmp_path: Path) -> list[jsonschema.ValidationError]:
    """The schema's complaints about a workflow, its YAML read as the loader reads it."""
    path = tmp_path / "wf.yaml"
    path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return list(jsonschema.Draft202012Validator(SCHEMA).iter_errors(load_mapping(path)))


# Files the loader accepts, each in a form the schema must know about too.
ACCEPTED = {
    "canonical, name from the file name, stage ids from agents": """
        stages:
          - agent: plan
          - {agent: build, needs: [plan]}
        """,
    "grouped form with a parallel group": """
        name: grouped
        pipeline:
          - {stage: plan, agent: plan, output: plan.md}
          - stage: implement
            parallel:
              - {agent: backend, needs: [plan]}
              - {agent: frontend}
          - {agent: auditor}
        """,
    "if under its field name": """
        name: x
        params: {with_ui: {type: boolean, default: false}}
        stages:
          - {agent: plan}
          - {agent: frontend, needs: [plan], condition: params.with_ui}
        """,
    "gates, commands and fan-out": """
        name: x
        stages:
          - {id: plan, agent: plan, output_schema: {type: object, properties: {tasks: {type: array}}}}
          - {id: ok, type: approval, needs: [plan], approval: Check the plan}
          - {id: work, agent: build, needs: [ok], foreach: "{{ stages.plan.output.tasks }}", foreach_key: name}
          - {id: test, run: pytest -q, needs: [work], env: {CI: "1"}, cwd: src, if: "params.x"}
          - {id: review, agent: auditor, needs: [test], output_schema: schemas/review.json, approval: true}
        """,
    "agents with tool settings, pricing, budget and permissions": """
        name: x
        defaults: {model: claude-sonnet-5-5, max_parallel: 1, timeout: 60.5}
        pricing: {sonnet: {input: 3, output: 15}, claude-opus-5-5: {input: 5, output: 25, cache_read: 0.5}}
        budget: {usd: 2.5}
        audit: {max_rounds: 2}
        permissions: {bash: [pytest, "git diff"], shell: true}
        agents:
          plan:
            model:
            opencode: {permission: {edit: deny, bash: {"git *": allow, "*": ask}}, color: "#ff8800", hidden: true}
            claude: {tools: [Read, Grep], model: opus}
          build: {tools: [read, edit, bash], runner: claude-code, opencode: {permission: ask, tools: {write: false}}}
        stages: [{agent: plan}, {agent: build, needs: [plan], retries: 2, budget: {usd: 1}}]
        """,
}


@pytest.mark.parametrize("text", ACCEPTED.values(), ids=ACCEPTED.keys())
def test_what_the_loader_accepts_the_schema_accepts(text: str, tmp_path: Path) -> None:
    parse_workflow(textwrap.dedent(text).lstrip("\n"), source="wf.yaml", default_name="wf")
    assert [e.message for e in errors_of(text, tmp_path)] == []


# Mistakes the loader refuses, and the key an editor must underline for each.
REFUSED = {
    "unknown key in a stage": ("stages:\n  - {agent: plan, neds: [x]}\n", ["stages", 0], "'neds' was unexpected"),
    "unknown top-level key": ("agnts: {}\nstages: [{agent: plan}]\n", [], "'agnts' was unexpected"),
    "wrong type": ("defaults: {max_parallel: four}\nstages: [{agent: plan}]\n", ["defaults", "max_parallel"], "four"),
    "out of range": ("defaults: {max_parallel: 0}\nstages: [{agent: plan}]\n", ["defaults", "max_parallel"], "0"),
    "unknown key deep down": (
        "agents: {plan: {opencode: {temprature: 1}}}\nstages: [{agent: plan}]\n",
        ["agents", "plan", "opencode"],
        "'temprature' was unexpected",
    ),
    "bad permission level": (
        "agents: {plan: {opencode: {permission: {bash: {'git *': yes}}}}}\nstages: [{agent: plan}]\n",
        ["agents", "plan", "opencode", "permission", "bash", "git *"],
        "'yes' is not one of",
    ),
    "bad agent name": ("agents: {Plan: {}}\nstages: [{agent: plan}]\n", ["agents"], "'Plan' does not match"),
    "bad stage id": ("stages: [{id: Plan, agent: plan}]\n", ["stages", 0, "id"], "'Plan' does not match"),
    "unknown key in a grouped stage": (
        "pipeline:\n  - stage: g\n    parallel: [{agent: plan, neds: 1}]\n",
        ["pipeline", 0, "parallel", 0],
        "'neds' was unexpected",
    ),
    "both forms": ("stages: [{agent: plan}]\npipeline: [{agent: plan}]\n", [], "'stages' was unexpected"),
    "if given twice": ("stages: [{agent: plan, if: a, condition: b}]\n", ["stages", 0], "should not be valid"),
    "no stages": ("name: x\n", [], "'stages' is a required property"),
}


@pytest.mark.parametrize(("text", "where", "says"), REFUSED.values(), ids=REFUSED.keys())
def test_what_the_loader_refuses_the_schema_refuses_at_that_key(
    text: str, where: list[Any], says: str, tmp_path: Path
) -> None:
    with pytest.raises(WorkflowError):
        parse_workflow(text, source="wf.yaml", default_name="wf")
    errors = errors_of(text, tmp_path)
    assert errors, "the schema accepts it"
    error = best_match(errors)
    assert list(error.absolute_path) == where, error.message
    assert says in error.message


def test_schema_prints_the_schema_as_json(cli: CliRunner) -> None:
    result = cli("schema")
    assert result.code == 0
    assert json.loads(result.out) == SCHEMA
    assert result.err == ""


def test_schema_output_writes_the_file_and_says_where(project: TempProject, cli: CliRunner) -> None:
    result = cli("schema", "--output", "workflows/workflow.schema.json", cwd=project.root)
    assert result.code == 0, result.err
    assert result.out == "Wrote the workflow schema to workflows/workflow.schema.json\n"
    written = project.root / "workflows/workflow.schema.json"
    assert json.loads(written.read_text(encoding="utf-8")) == SCHEMA
    assert sorted(p.name for p in written.parent.iterdir()) == ["workflow.schema.json"]  # no temp file left
    # A schema file beside the workflows is not mistaken for a workflow.
    project.workflow(FEATURE)
    assert cli("compile", "--check", cwd=project.root).out.count("is not up to date with") == 1


def test_schema_output_to_an_unwritable_place_is_a_clear_error(project: TempProject, cli: CliRunner) -> None:
    project.write("blocker", "a file where a folder should be\n")
    result = cli("schema", "--output", "blocker/workflow.schema.json", cwd=project.root)
    assert result.code == 2
    assert result.err.startswith("Error: can't write blocker/workflow.schema.json")
    assert "Traceback" not in result.err


def test_a_workflow_pointing_editors_at_the_schema_still_loads(project: TempProject, cli: CliRunner) -> None:
    project.workflow("# yaml-language-server: $schema=workflow.schema.json\n" + textwrap.dedent(FEATURE).lstrip())
    assert cli("schema", "-o", "workflows/workflow.schema.json", cwd=project.root).code == 0
    result = cli("validate", "workflows/feature.yaml", cwd=project.root)
    assert result.code == 0, result.err
    schema = json.loads((project.root / "workflows/workflow.schema.json").read_text(encoding="utf-8"))
    assert errors_of((project.root / "workflows/feature.yaml").read_text(encoding="utf-8"), project.root) == []
    assert schema == SCHEMA
