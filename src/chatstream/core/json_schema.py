"""OpenAI's strict mode for JSON schemas, as a pure transform of the schema.

JSON Schema lets an object that lists its ``properties`` carry any other key; OpenAI's strict
mode does not. Shared by the grammar engine (``response_format`` with ``strict``) and the
tool calls of the HTTP layer (a function with ``"strict": true``); written here because it is
a rule of OpenAI's, not of JSON Schema libraries.
"""

from __future__ import annotations

from typing import Any, Final

__all__ = ["close_objects"]

# Where a JSON schema holds other schemas (everything else is data or a constraint value:
# ``enum``, ``const``, ``default`` and ``examples`` are never walked).
_SCHEMA_MAPS: Final = (
    "properties",
    "patternProperties",
    "$defs",
    "definitions",
    "dependentSchemas",
)
_SCHEMA_LISTS: Final = ("anyOf", "allOf", "oneOf", "prefixItems")
_SCHEMA_VALUES: Final = (
    "items",
    "additionalItems",
    "additionalProperties",
    "unevaluatedItems",
    "unevaluatedProperties",
    "contains",
    "propertyNames",
    "not",
    "if",
    "then",
    "else",
)
# Keywords that combine a schema with others: closing it there would forbid the
# properties the other branches add.
_COMBINERS: Final = ("anyOf", "allOf", "oneOf", "$ref")
_OPEN_KEYWORDS: Final = ("additionalProperties", "patternProperties", "unevaluatedProperties")


def close_objects(schema: Any) -> Any:
    """OpenAI's strict semantics: a copy of ``schema`` where every object schema that lists
    its ``properties`` and says nothing about other keys gets
    ``"additionalProperties": false``.

    Left open: an object without ``properties`` (``{"type": "object"}`` stays any object),
    one that sets ``additionalProperties``, ``patternProperties`` or
    ``unevaluatedProperties`` itself, and one combined with ``anyOf``, ``allOf``,
    ``oneOf`` or ``$ref`` (its branches may add properties). Unlike OpenAI, optional
    properties stay optional: ``required`` is kept as written.
    """
    if not isinstance(schema, dict):
        return schema
    closed = dict(schema)
    for keyword in _SCHEMA_MAPS:
        if isinstance(closed.get(keyword), dict):
            closed[keyword] = {name: close_objects(s) for name, s in closed[keyword].items()}
    for keyword in _SCHEMA_LISTS:
        if isinstance(closed.get(keyword), list):
            closed[keyword] = [close_objects(s) for s in closed[keyword]]
    for keyword in _SCHEMA_VALUES:
        if keyword in closed:
            value = closed[keyword]
            # ``items`` was a list of schemas before draft 2020-12.
            closed[keyword] = (
                [close_objects(s) for s in value]
                if isinstance(value, list)
                else close_objects(value)
            )
    if (
        isinstance(closed.get("properties"), dict)
        and not any(keyword in closed for keyword in _OPEN_KEYWORDS)
        and not any(keyword in closed for keyword in _COMBINERS)
    ):
        closed["additionalProperties"] = False
    return closed
