"""json_validate: every error with its JSON path; bad schemas rejected at submit; no hangs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest

import tierfleet.config
from tierfleet import rules
from tierfleet.config import FleetConfig, LimitsConfig, load_config
from tierfleet.errors import JobRejected
from tierfleet.jobs import Kind
from tierfleet.rules import RuleFailed

CONFIG = load_config(Path(tierfleet.config.__file__).with_name("defaults.toml"))
FAST = CONFIG.model_copy(update={"limits": LimitsConfig(regex_timeout_s=0.2)})

TICKET = {
    "type": "object",
    "required": ["id", "category", "tags"],
    "additionalProperties": False,
    "properties": {
        "id": {"type": "integer", "minimum": 1},
        "category": {"enum": ["vpn", "email", "hardware"]},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 8}},
        "owner": {"$ref": "#/$defs/email"},
        "odd key": {"type": "string"},
    },
    "$defs": {"email": {"type": "string", "pattern": "^[^@\\s]+@[^@\\s]+$"}},
}


def check(document: Any, schema: Any = TICKET, config: FleetConfig = CONFIG, **kw: Any) -> dict:
    out = rules.execute(Kind.JSON_VALIDATE, {"document": document, "schema": schema, **kw}, config)
    json.dumps(out)
    return out


def test_valid_model_answer_as_json_text() -> None:
    answer = '{"id": 7, "category": "vpn", "tags": ["urgent"], "owner": "ana@example.org"}'
    out = check(answer)
    assert out == {"valid": True, "errors": [], "count": 0, "truncated": False,
                   "dialect": "https://json-schema.org/draft/2020-12/schema"}


def test_every_error_with_its_path() -> None:
    doc = {"id": 0, "category": "printer", "tags": ["ok", 5, "much-too-long"],
           "owner": "not an email", "odd key": 1, "extra": True}
    out = check(doc)
    assert out["valid"] is False
    got = {(e["path"], e["keyword"]) for e in out["errors"]}
    assert got == {
        ("$.id", "minimum"),
        ("$.category", "enum"),
        ("$.tags[1]", "type"),
        ("$.tags[2]", "maxLength"),
        ("$.owner", "pattern"),
        ("$['odd key']", "type"),
        ("$", "additionalProperties"),
    }
    assert out["count"] == 7
    by_path = {e["path"]: e for e in out["errors"]}
    assert by_path["$.tags[1]"]["schema_path"] == "/properties/tags/items/type"
    assert "5 is not of type 'string'" in by_path["$.tags[1]"]["message"]


def test_string_that_is_not_json_is_invalid_not_a_crash() -> None:
    out = check("Sure! Here is the JSON: {id: 7}")
    assert out["valid"] is False and out["count"] == 1
    assert out["errors"][0]["path"] == "$" and out["errors"][0]["keyword"] == "parse"
    assert "not valid JSON" in out["errors"][0]["message"]


def test_parse_false_validates_the_string_itself() -> None:
    assert check("hello", {"type": "string", "minLength": 3}, parse=False)["valid"] is True
    assert check("hello", {"type": "string"})["valid"] is False  # parsed: not JSON


def test_dollar_schema_is_honoured() -> None:
    # Draft 4: exclusiveMaximum is a boolean modifier of maximum.
    d4 = {"$schema": "http://json-schema.org/draft-04/schema#", "maximum": 5,
          "exclusiveMaximum": True}
    out = check(5, d4)
    assert out["valid"] is False and out["dialect"].startswith("http://json-schema.org/draft-04")
    d7 = {"$schema": "http://json-schema.org/draft-07/schema#",
          "definitions": {"n": {"type": "integer"}}, "items": {"$ref": "#/definitions/n"}}
    assert check([1, "x"], d7)["errors"][0]["path"] == "$[1]"


def test_formats_asserted_only_when_asked() -> None:
    schema = {"type": "string", "format": "ipv4"}
    assert check("999.1.1.1", schema, parse=False)["valid"] is True
    assert check("999.1.1.1", schema, parse=False, formats=True)["valid"] is False


def test_max_errors_truncates() -> None:
    out = check(list(range(50)), {"items": {"type": "string"}}, max_errors=10)
    assert out["count"] == 10 and out["truncated"] is True


def test_boolean_schemas() -> None:
    assert check({"a": 1}, True)["valid"] is True
    assert check({"a": 1}, False)["valid"] is False


def test_remote_reference_is_not_fetched() -> None:
    # Refused at submit, naming the reference; a hand-enqueued one fails the same way.
    schema = {"$ref": "https://schemas.example.invalid/ticket.json"}
    with pytest.raises(JobRejected) as info:
        rules.validate(Kind.JSON_VALIDATE, {"document": 1, "schema": schema}, CONFIG.limits)
    assert info.value.field == "input.schema.$ref"
    with pytest.raises(RuleFailed, match="remote references are not fetched"):
        check(1, schema)


def test_hostile_schema_pattern_times_out_cleanly() -> None:
    schema = {"properties": {"a": {"type": "string", "pattern": "^(a|aa)+$"}}}
    with pytest.raises(RuleFailed, match=r"schema pattern timed out after 0\.2s"):
        check({"a": "a" * 60 + "!"}, schema, FAST)


def test_hostile_pattern_properties_time_out_cleanly() -> None:
    # additionalProperties tests every key against the patternProperties regexes.
    schema = {"patternProperties": {"^(a|aa)+$": {}}, "additionalProperties": False}
    with pytest.raises(RuleFailed, match="timed out"):
        check({"a" * 60 + "!": 1}, schema, FAST)


def test_jsonschema_outside_a_job_is_unchanged() -> None:
    check({"a": "b"}, {"properties": {"a": {"pattern": "^b$"}}})  # installs the guard
    jsonschema.validate("abc", {"pattern": "^a"})
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate("xbc", {"pattern": "^a"})


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"schema": {}}, "input.document"),
        ({"document": 1}, "input.schema"),
        ({"document": 1, "schema": "{}"}, "input.schema"),
        ({"document": 1, "schema": {"type": "strng"}}, "input.schema.type"),
        ({"document": 1, "schema": {"properties": {"a": {"minimum": "3"}}}},
         "input.schema.properties.a.minimum"),
        ({"document": 1, "schema": {"$schema": "https://example.org/my-dialect"}},
         "input.schema.$schema"),
        ({"document": 1, "schema": {"items": {"$ref": "#/$defs/missing"}}},
         "input.schema.items.$ref"),
        ({"document": 1, "schema": {"$ref": "#/a/x", "a": [1]}}, "input.schema.$ref"),
        ({"document": 1, "schema": {"$ref": "#/a/0/b", "a": [1]}}, "input.schema.$ref"),
        ({"document": 1, "schema": {"properties": {"a": {"pattern": "(unclosed"}}}},
         "input.schema.properties.a.pattern"),
        ({"document": 1, "schema": {"properties": {"a": {"pattern": "^(a+)+$"}}}},
         "input.schema.properties.a.pattern"),
        ({"document": 1, "schema": {"patternProperties": {"(x*)*": {}}}},
         "input.schema.patternProperties"),
        ({"document": 1, "schema": {}, "max_errors": 0}, "input.max_errors"),
        ({"document": 1, "schema": {}, "strict": True}, "input.strict"),
    ],
)
def test_rejections_name_the_field(payload: dict, field: str) -> None:
    with pytest.raises(JobRejected) as info:
        rules.validate(Kind.JSON_VALIDATE, payload, CONFIG.limits)
    assert info.value.field == field, str(info.value)


def test_deep_nesting_is_rejected_not_a_recursion_crash() -> None:
    doc: Any = 1
    for _ in range(300):
        doc = [doc]
    with pytest.raises(JobRejected) as info:
        rules.validate(Kind.JSON_VALIDATE, {"document": doc, "schema": {}}, CONFIG.limits)
    assert info.value.field == "input.document"
    deep_text = "[" * 5000 + "]" * 5000
    with pytest.raises(RuleFailed, match="nested"):
        check(deep_text, {})


def test_data_keywords_are_not_read_as_schema() -> None:
    # A "$ref" or "pattern" inside const/enum/default is data.
    schema = {"const": {"$ref": "#/nowhere", "pattern": "(a+)+"}}
    assert check({"$ref": "#/nowhere", "pattern": "(a+)+"}, schema)["valid"] is True
