"""OpenAI's strict mode as a transform of JSON schemas."""

from __future__ import annotations

from chatstream.core.json_schema import close_objects


def test_close_objects_walks_schemas_only_and_leaves_combined_objects_open() -> None:
    data = {"properties": {"not": "a schema"}}
    schema = {
        "type": "object",
        "properties": {"p": {"properties": {}}, "q": {"enum": [data], "default": data}},
        "$defs": {"d": {"properties": {"a": {}}}},
        "anyOf": [{"properties": {"b": {}}}],
        "items": [{"properties": {}}],
    }
    closed = close_objects(schema)
    assert closed["properties"]["p"]["additionalProperties"] is False
    assert closed["$defs"]["d"]["additionalProperties"] is False
    assert closed["anyOf"][0]["additionalProperties"] is False
    assert closed["items"][0]["additionalProperties"] is False
    # Combined with anyOf: its branches add properties, so it stays open.
    assert "additionalProperties" not in closed
    # Data is never rewritten, and the input is not modified.
    assert closed["properties"]["q"] == {"enum": [data], "default": data}
    assert "additionalProperties" not in schema["properties"]["p"]  # type: ignore[index]
    # An object without properties stays any object; an explicit choice is kept.
    assert close_objects({"type": "object"}) == {"type": "object"}
    kept = {"properties": {}, "additionalProperties": {"type": "integer"}}
    assert close_objects(kept) == kept
    # Boolean schemas are schemas too.
    assert close_objects({"items": True, "not": False}) == {"items": True, "not": False}
