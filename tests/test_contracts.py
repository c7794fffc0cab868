"""Output contracts: output schemas, structured replies, and the files a stage promised to leave."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from orchestrator.contracts import output_problems, parse_structured, schema_problems, validate_data

TASKS: dict[str, Any] = {
    "type": "object",
    "required": ["tasks", "owner"],
    "properties": {
        "owner": {"type": "string"},
        "tasks": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["title"],
                "properties": {"title": {"type": "string"}, "size": {"enum": ["S", "M", "L"]}},
            },
        },
    },
    "additionalProperties": False,
}


def test_a_valid_schema_has_no_problems() -> None:
    assert schema_problems(TASKS) == []
    with_defs = {"type": "object", "properties": {"a": {"$ref": "#/$defs/name"}}, "$defs": {"name": {"type": "string"}}}
    assert schema_problems(with_defs) == []


def test_an_invalid_type_keyword_is_reported_where_it_is() -> None:
    schema = {"type": "object", "properties": {"tasks": {"type": "lst"}}}
    assert schema_problems(schema) == ["properties.tasks.type: 'lst' is not valid under any of the given schemas"]


def test_a_bad_regex_and_a_dangling_ref_are_caught_when_loading() -> None:
    assert schema_problems({"type": "object", "properties": {"id": {"type": "string", "pattern": "("}}}) == [
        "properties.id.pattern: '(' is not a 'regex'"
    ]
    [problem] = schema_problems({"type": "object", "properties": {"a": {"$ref": "#/$defs/nope"}}})
    assert problem.startswith("properties.a.$ref: '#/$defs/nope' does not resolve")


def test_a_top_level_that_is_not_an_object_is_refused_with_the_wrapping_suggestion() -> None:
    [problem] = schema_problems({"type": "array", "items": {"type": "string"}})
    assert "'array'" in problem and "must be an object" in problem
    assert "{type: object, properties: {items: {type: array, ...}}, required: [items]}" in problem
    [missing] = schema_problems({"properties": {"a": {"type": "string"}}})
    assert "no top-level type" in missing


def test_a_schema_that_is_not_a_mapping_is_refused() -> None:
    assert schema_problems(["type", "object"]) == ["output_schema must be a mapping (a JSON Schema), not list"]


def test_valid_data_has_no_problems() -> None:
    assert validate_data({"owner": "ana", "tasks": [{"title": "write docs", "size": "S"}]}, TASKS) == []


def test_a_missing_required_key_is_reported_at_the_root() -> None:
    assert validate_data({"tasks": []}, TASKS) == ["(root): 'owner' is a required property"]


def test_a_wrong_type_deep_in_a_list_names_its_path() -> None:
    data = {"owner": "ana", "tasks": [{"title": "ok"}, {"title": 5}]}
    assert validate_data(data, TASKS) == ["tasks[1].title: 5 is not of type 'string'"]


def test_several_problems_come_sorted_by_path() -> None:
    data = {"tasks": [{"size": "XL"}, {"title": 1}], "extra": True}
    assert validate_data(data, TASKS) == [
        "(root): 'owner' is a required property",
        "(root): Additional properties are not allowed ('extra' was unexpected)",
        "tasks[0]: 'title' is a required property",
        "tasks[0].size: 'XL' is not one of ['S', 'M', 'L']",
        "tasks[1].title: 1 is not of type 'string'",
    ]


def test_many_problems_are_capped_at_ten_in_index_order() -> None:
    data = {"owner": "ana", "tasks": [{"title": i} for i in range(14)]}
    problems = validate_data(data, TASKS)
    assert problems[:3] == [
        "tasks[0].title: 0 is not of type 'string'",
        "tasks[1].title: 1 is not of type 'string'",
        "tasks[2].title: 2 is not of type 'string'",
    ]
    assert problems[9] == "tasks[9].title: 9 is not of type 'string'"
    assert problems[10:] == ["... and 4 more"]


def test_a_plain_json_reply_parses() -> None:
    assert parse_structured('  {"owner": "ana", "tasks": []}\n') == {"owner": "ana", "tasks": []}


def test_the_last_fenced_json_block_after_prose_is_taken() -> None:
    reply = (
        'Here is a first draft:\n```json\n{"draft": true}\n```\n'
        'On reflection, this is better:\n\n```json\n{"owner": "ana", "tasks": [{"title": "x"}]}\n```\nDone.'
    )
    assert parse_structured(reply) == {"owner": "ana", "tasks": [{"title": "x"}]}


def test_garbage_is_refused_with_a_readable_message() -> None:
    with pytest.raises(ValueError, match=r"^the reply is not JSON: Expecting value: line 1 column 1$"):
        parse_structured("Sure! I updated the files.")
    with pytest.raises(ValueError, match="the last ```json block of the reply is not JSON"):
        parse_structured("Result:\n```json\n{owner: ana}\n```")


def write(path: Path, text: str = "content\n") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.fixture
def root(tmp_path: Path) -> Path:
    workspace = tmp_path / "workspace"
    workspace.mkdir()
    return workspace


def test_present_outputs_have_no_problems(root: Path) -> None:
    write(root / "report.md")
    write(root / "backend/api.py")
    write(root / "dist/js/app.js")
    assert output_problems(root, ["report.md", "backend/api.py", "dist", "dist/", "dist/**/*.js", "*.md"]) == []


def test_a_missing_file_is_named(root: Path) -> None:
    assert output_problems(root, ["backend/api.py"]) == ["backend/api.py does not exist"]


def test_an_empty_file_is_named(root: Path) -> None:
    write(root / "report.md", "")
    assert output_problems(root, ["report.md"]) == ["report.md is empty"]


def test_an_empty_folder_is_refused(root: Path) -> None:
    (root / "dist").mkdir()
    assert output_problems(root, ["dist/"]) == ["dist/ is an empty folder"]
    write(root / "dist/a.js", "")
    assert output_problems(root, ["dist"]) == ["dist/ holds only empty files"]


def test_a_glob_that_matches_nothing_is_refused(root: Path) -> None:
    write(root / "dist/app.css")
    assert output_problems(root, ["dist/**/*.js"]) == ["no file matches 'dist/**/*.js'"]
    assert output_problems(root, ["build/*.js"]) == ["no file matches 'build/*.js'"]


def test_a_glob_names_the_empty_file_among_its_matches(root: Path) -> None:
    write(root / "dist/app.js", "console.log(1)\n")
    write(root / "dist/vendor/empty.js", "")
    assert output_problems(root, ["dist/**/*.js"]) == ["dist/vendor/empty.js is empty (matches 'dist/**/*.js')"]


def test_a_star_stays_within_one_folder(root: Path) -> None:
    write(root / "docs/guide.md")
    assert output_problems(root, ["*.md"]) == ["no file matches '*.md'"]
    assert output_problems(root, ["docs/*.md", "**/*.md"]) == []


def test_a_symlink_pointing_outside_the_workspace_is_refused(root: Path) -> None:
    secret = write(root.parent / "elsewhere/secret.md", "not yours\n")
    (root / "out.md").symlink_to(secret)
    (root / "dist").mkdir()
    (root / "dist/leak").symlink_to(secret.parent, target_is_directory=True)
    write(root / "dist/app.js")
    assert output_problems(root, ["out.md"]) == ["out.md points outside the workspace"]
    assert output_problems(root, ["*.md"]) == ["out.md points outside the workspace"]
    assert output_problems(root, ["dist"]) == ["dist/leak points outside the workspace"]
    assert output_problems(root, ["../elsewhere/secret.md"]) == ["../elsewhere/secret.md points outside the workspace"]


def test_a_symlink_inside_the_workspace_is_followed(root: Path) -> None:
    write(root / "build/report.md")
    (root / "report.md").symlink_to(root / "build/report.md")
    assert output_problems(root, ["report.md", "*.md"]) == []
    (root / "gone.md").symlink_to(root / "missing.md")
    assert output_problems(root, ["gone.md"]) == ["gone.md is a broken link"]
