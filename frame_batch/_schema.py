"""Output schemas: what the user asks for -> the spec a vendor wants + the column types.

Accepted forms of ``output_schema``:
- ``None``: the vendor's default output (Parallel: text) -> one ``output`` column.
- a string: a plain description of a text output -> one ``output`` column.
- a JSON-schema dict whose root is ``{"type": "object", "properties": ...}``, or one already
  wrapped as ``{"type": "json", "json_schema": ...}`` / ``{"type": "text", ...}``.
- a pydantic model class (when pydantic is installed): its ``model_json_schema()``, with
  ``$ref`` definitions inlined (vendors do not resolve references).

Column types come from the schema: ``integer``, ``number``, ``boolean``, ``string`` (with
``"format": "date"`` -> ``date``, ``"date-time"`` -> ``datetime``); nested objects give
``parent.child`` columns, the join's flattening rule. An optional field (``anyOf`` with
``null``) has the type of its non-null branch.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .errors import ConfigError

OUTPUT = "output"  # the column of a text output


@dataclass(frozen=True, slots=True)
class OutputSchema:
    """The vendor-facing ``output_schema`` (None: vendor default) and the typed columns."""

    spec: dict[str, Any] | None
    types: Mapping[str, str]

    @property
    def is_json(self) -> bool:
        return self.spec is not None and self.spec.get("type") == "json"


def parse_output_schema(value: object) -> OutputSchema:
    if value is None:
        return OutputSchema(None, {OUTPUT: "string"})
    if isinstance(value, str):
        if not value.strip():
            raise ConfigError("output_schema is an empty string; describe the output you want, or omit it")
        return OutputSchema({"type": "text", "description": value}, {OUTPUT: "string"})
    if isinstance(value, type):
        return _from_json_schema(_pydantic_schema(value))
    if isinstance(value, Mapping):
        schema = dict(value)
        if schema.get("type") == "text":
            return OutputSchema(schema, {OUTPUT: "string"})
        if schema.get("type") == "json" and "json_schema" in schema:
            return _from_json_schema(schema["json_schema"])
        return _from_json_schema(schema)
    raise ConfigError(
        f"output_schema must be a JSON-schema dict, a pydantic model class or a text description, "
        f"not {type(value).__name__}"
    )


def _from_json_schema(schema: object) -> OutputSchema:
    if not isinstance(schema, Mapping) or schema.get("type") != "object":
        raise ConfigError(
            'output_schema must describe an object: {"type": "object", "properties": {...}}; '
            "for a plain text answer pass a string description instead"
        )
    properties = schema.get("properties")
    if not isinstance(properties, Mapping) or not properties:
        raise ConfigError('output_schema needs at least one field under "properties"')
    types: dict[str, str] = {}
    _collect(properties, "", types)
    return OutputSchema({"type": "json", "json_schema": dict(schema)}, types)


def _collect(properties: Mapping[str, Any], prefix: str, types: dict[str, str]) -> None:
    for name, prop in properties.items():
        column = f"{prefix}{name}"
        prop = _non_null(prop) if isinstance(prop, Mapping) else {}
        kind = prop.get("type")
        if kind == "object" and isinstance(prop.get("properties"), Mapping):
            _collect(prop["properties"], f"{column}.", types)
        elif kind in ("integer", "number", "boolean"):
            types[column] = str(kind)
        elif kind == "string":
            types[column] = {"date": "date", "date-time": "datetime"}.get(str(prop.get("format")), "string")


def _non_null(prop: Mapping[str, Any]) -> Mapping[str, Any]:
    """``{"anyOf": [X, {"type": "null"}]}`` -> X; ``{"type": ["integer", "null"]}`` -> integer."""
    kind = prop.get("type")
    if isinstance(kind, list):
        rest = [k for k in kind if k != "null"]
        return {**prop, "type": rest[0]} if len(rest) == 1 else prop
    for combinator in ("anyOf", "oneOf"):
        options = prop.get(combinator)
        if isinstance(options, list):
            rest = [o for o in options if not (isinstance(o, Mapping) and o.get("type") == "null")]
            if len(rest) == 1 and isinstance(rest[0], Mapping):
                return {**{k: v for k, v in prop.items() if k != combinator}, **rest[0]}
    return prop


def _pydantic_schema(model: type) -> dict[str, Any]:
    builder = getattr(model, "model_json_schema", None)
    if builder is None:
        raise ConfigError(
            f"output_schema class {model.__name__} is not a pydantic model; pass a pydantic "
            "BaseModel subclass, a JSON-schema dict or a text description"
        )
    schema: dict[str, Any] = builder()
    definitions = schema.pop("$defs", {})
    inlined: dict[str, Any] = _inline(schema, definitions, depth=0)
    return inlined


def _inline(node: Any, definitions: Mapping[str, Any], depth: int) -> Any:
    """Replace ``{"$ref": "#/$defs/X"}`` by X, recursively (vendors do not follow refs)."""
    if depth > 20:
        raise ConfigError("output_schema refers to itself (a recursive model); vendors need a finite schema")
    if isinstance(node, list):
        return [_inline(item, definitions, depth) for item in node]
    if not isinstance(node, Mapping):
        return node
    ref = node.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/$defs/"):
        target = definitions.get(ref.removeprefix("#/$defs/"))
        if target is None:
            raise ConfigError(f"output_schema has a dangling reference {ref!r}")
        merged = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
        return _inline(merged, definitions, depth + 1)
    return {k: _inline(v, definitions, depth) for k, v in node.items()}
