"""What each model accepts (models.py), the request bodies built from it, and the schema reduction for
structured outputs. The fake API holds these bodies to the same facts in test_contract.py."""

from __future__ import annotations

from typing import Any

import pytest

from orchestrator.api_request import api_schema, request_body
from orchestrator.audit import verdict_schema
from orchestrator.models import EFFORTS, facts_for, known_models, setting_problems, thinking_field
from orchestrator.runners import StageRequest


def request(model: str, **more: Any) -> StageRequest:
    return StageRequest("s", "a", model, "system text", "do it", 1024, "t", **more)


def test_current_models_think_adaptively_and_refuse_what_the_docs_say() -> None:
    opus = facts_for("claude-opus-5-5")
    assert opus.always_thinks and opus.default_effort == "medium"
    assert not (opus.forced_tool_choice or opus.sampling or opus.prefill)
    sonnet = facts_for("claude-sonnet-5-5")
    assert sonnet.thinking_default == "adaptive" and sonnet.thinking_off == "between_tools"
    assert sonnet.efforts == EFFORTS and sonnet.cache_min_tokens == 512
    haiku = facts_for("claude-haiku-5-5")
    assert haiku.forced_tool_choice and haiku.thinking_off == "disabled" and haiku.off_max_effort == "high"
    assert facts_for("claude-sonnet-4-6").sampling and "xhigh" not in facts_for("claude-sonnet-4-6").efforts
    # Pre-4.6 models answer to dated ids and their aliases alike.
    assert facts_for("claude-haiku-4-5") is facts_for("claude-haiku-4-5-20251001")


def test_an_unknown_model_gets_the_most_conservative_shape_and_a_retired_one_is_refused() -> None:
    unknown = facts_for("claude-sonnet-9")
    assert not unknown.known and not unknown.structured_outputs and not unknown.forced_tool_choice
    body = request_body(request("claude-sonnet-9", output_schema=verdict_schema(), verdict=True), [])
    assert "output_config" not in body and "thinking" not in body and "tool_choice" not in body
    assert setting_problems("claude-sonnet-9", effort="max") == []  # not second-guessed: sent as the user asked
    [(setting, problem, hint)] = setting_problems("claude-sonnet-4-5")
    assert setting == "model" and "retired" in problem and "claude-sonnet-5-5" in hint


@pytest.mark.parametrize(
    ("model", "settings", "problem"),
    [
        ("claude-opus-5-5", {"thinking": "off"}, "always thinks"),
        ("claude-sonnet-4-6", {"effort": "xhigh"}, "takes effort low, medium, high, max, not 'xhigh'"),
        ("claude-haiku-4-5", {"effort": "low"}, "has no effort setting"),
        ("claude-sonnet-5-5", {"thinking": "off", "effort": "max"}, "effort high or below while thinking is off"),
        ("claude-haiku-4-5", {"thinking": "adaptive"}, "has no adaptive thinking"),
        ("claude-sonnet-5-5", {"max_tokens": 200_000}, "more than Claude Sonnet 5.5 writes in one reply (128000)"),
    ],
)
def test_settings_a_model_refuses_are_named(model: str, settings: dict[str, Any], problem: str) -> None:
    assert any(problem in text for _, text, _ in setting_problems(model, **settings))


def test_thinking_off_is_sent_the_way_each_model_takes_it() -> None:
    assert thinking_field(facts_for("claude-sonnet-5-5"), "off") == {"type": "between_tools"}
    assert thinking_field(facts_for("claude-haiku-5-5"), "off") == {"type": "disabled"}
    assert thinking_field(facts_for("claude-opus-4-8"), "off") is None  # off is its default
    assert thinking_field(facts_for("claude-opus-4-8"), "adaptive") == {"type": "adaptive"}
    assert thinking_field(facts_for("claude-sonnet-5-5"), "adaptive") is None  # its default


@pytest.mark.parametrize("facts", known_models(), ids=lambda f: f.id)
def test_no_body_for_a_known_model_carries_a_shape_it_refuses(facts: Any) -> None:
    tools = [{"name": "read", "description": "Read a file.", "input_schema": {"type": "object", "properties": {}}}]
    for verdict in (False, True):
        for with_tools in ([], tools):
            body = request_body(
                request(facts.id, output_schema=verdict_schema() if verdict else None, verdict=verdict), with_tools
            )
            assert "tool_choice" not in body
            assert not {"temperature", "top_p", "top_k"} & set(body)
            assert body["messages"][-1]["role"] == "user"
            if verdict:
                assert ("format" in body.get("output_config", {})) == facts.structured_outputs
            marked = [b for b in [*body["system"], *with_tools] if "cache_control" in b]
            assert len(marked) + (1 if "cache_control" in body else 0) <= 4


def test_the_body_carries_the_brief_first_and_caches_a_tool_loop_turn_to_turn() -> None:
    body = request_body(request("claude-sonnet-5-5", brief="shared", effort="low"), [{"name": "read"}])
    assert [b["text"] for b in body["system"]] == ["shared", "system text"]
    assert all(b["cache_control"] == {"type": "ephemeral"} for b in body["system"])
    assert body["cache_control"] == {"type": "ephemeral"}  # automatic caching of the growing conversation
    assert body["output_config"] == {"effort": "low"}
    single = request_body(request("claude-sonnet-5-5"), [])
    assert "cache_control" not in single  # one turn: nothing after the system prompt is worth writing


def test_schemas_are_reduced_to_what_structured_outputs_compile() -> None:
    schema = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object",
        "properties": {
            "count": {"type": "integer", "minimum": 1, "maximum": 9},
            "tags": {"type": "array", "items": {"type": "string", "maxLength": 20}, "minItems": 2},
            "kind": {"oneOf": [{"const": "a"}, {"const": "b"}]},
        },
        "required": ["count"],
    }
    reduced = api_schema(schema)
    assert reduced is not None
    assert reduced["additionalProperties"] is False and "$schema" not in reduced
    assert reduced["properties"]["count"] == {"type": "integer", "description": "{minimum: 1, maximum: 9}"}
    assert reduced["properties"]["tags"]["description"] == "{minItems: 2}"
    assert reduced["properties"]["tags"]["items"]["description"] == "{maxLength: 20}"
    assert "anyOf" in reduced["properties"]["kind"] and "oneOf" not in reduced["properties"]["kind"]
    assert schema["properties"]["count"]["minimum"] == 1  # the stage's own schema is left whole
    # Open maps and recursive schemas can't be compiled: those replies are asked for in the text instead.
    assert api_schema({"type": "object", "additionalProperties": {"type": "string"}}) is None
    tree = {"$defs": {"node": {"type": "object", "properties": {"kids": {"items": {"$ref": "#/$defs/node"}}}}}}
    assert api_schema({**tree, "$ref": "#/$defs/node"}) is None
    verdict = api_schema(verdict_schema())
    assert verdict is not None and verdict["additionalProperties"] is False
    assert all(d["additionalProperties"] is False for d in verdict["$defs"].values())
