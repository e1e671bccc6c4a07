"""A small, deterministic instance of a JSON Schema: tool-call arguments and structured outputs.

Covers what OpenAI tool and ``response_format`` schemas use, including what pydantic emits
(``$defs``/``$ref``, ``anyOf`` with ``null`` for optionals, ``allOf`` wrappers, enums, consts,
numeric and length bounds). Objects get their ``required`` properties (all properties when a
schema names none). Recursive schemas terminate: past a depth limit, arrays are left empty and
nullable branches are taken.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

_MAX_DEPTH = 12
_STRING = "mock"
_FORMATS = {
    "date-time": "1970-01-01T00:00:00Z",
    "date": "1970-01-01",
    "time": "00:00:00Z",
    "duration": "P1D",
    "email": "mock@example.com",
    "hostname": "example.com",
    "ipv4": "127.0.0.1",
    "ipv6": "::1",
    "uri": "https://example.com/",
    "url": "https://example.com/",
    "uuid": "00000000-0000-4000-8000-000000000000",
}

Schema = Mapping[str, Any]


def minimal_instance(schema: Schema) -> Any:
    """Return a small JSON value that validates against ``schema``."""
    return _Builder(schema).build(schema, 0)


class _Builder:
    def __init__(self, root: Schema) -> None:
        self._root = root

    def build(self, schema: Schema | bool, depth: int) -> Any:
        if not isinstance(schema, Mapping):  # `true` / `false` schemas
            return _STRING
        if "$ref" in schema:
            siblings = {k: v for k, v in schema.items() if k != "$ref"}
            return self.build({**self._resolve(schema["$ref"]), **siblings}, depth + 1)
        if "const" in schema:
            return schema["const"]
        if schema.get("enum"):
            return schema["enum"][0]
        for key in ("anyOf", "oneOf"):
            if schema.get(key):
                return self.build(self._pick_option(schema[key], depth), depth + 1)
        if schema.get("allOf"):
            return self._build_all_of(schema, depth)
        if "default" in schema and depth >= _MAX_DEPTH:
            return schema["default"]
        kind = _schema_type(schema, nullable_ok=depth >= _MAX_DEPTH)
        if kind == "object":
            return self._build_object(schema, depth)
        if kind == "array":
            return self._build_array(schema, depth)
        if kind == "string":
            return _build_string(schema)
        if kind == "integer":
            return int(_build_number(schema, integer=True))
        if kind == "number":
            return float(_build_number(schema, integer=False))
        if kind == "boolean":
            return False
        if kind == "null":
            return None
        return _STRING

    def _resolve(self, ref: str) -> Schema:
        if not ref.startswith("#"):
            raise ValueError(f"only local $ref is supported, got {ref!r}")
        node: Any = self._root
        for raw in ref[1:].split("/"):
            if raw:
                node = node[raw.replace("~1", "/").replace("~0", "~")]
        return node  # type: ignore[no-any-return]

    def _pick_option(self, options: list[Any], depth: int) -> Any:
        def is_null(option: Any) -> bool:
            return isinstance(option, Mapping) and option.get("type") == "null"

        if depth >= _MAX_DEPTH:
            for option in options:
                if is_null(option):
                    return option
        for option in options:
            if not is_null(option):
                return option
        return options[0]

    def _build_all_of(self, schema: Schema, depth: int) -> Any:
        parts = schema["allOf"]
        rest = {k: v for k, v in schema.items() if k != "allOf"}
        if len(parts) == 1:
            return self.build({**rest, **parts[0]}, depth + 1)
        values = [self.build(part, depth + 1) for part in parts]
        if all(isinstance(value, dict) for value in values):
            merged: dict[str, Any] = {}
            for value in values:
                merged.update(value)
            return merged
        return values[0]

    def _build_object(self, schema: Schema, depth: int) -> dict[str, Any]:
        properties: Mapping[str, Any] = schema.get("properties") or {}
        names = schema["required"] if "required" in schema else list(properties)
        return {name: self.build(properties.get(name, {}), depth + 1) for name in names}

    def _build_array(self, schema: Schema, depth: int) -> list[Any]:
        prefix = schema.get("prefixItems") or []
        items = schema.get("items", {})
        minimum = int(schema.get("minItems", 0))
        wanted = minimum if depth >= _MAX_DEPTH else max(1, minimum)
        if "maxItems" in schema:
            wanted = min(wanted, int(schema["maxItems"]))
        values = [self.build(item, depth + 1) for item in prefix[:wanted]]
        if items is False:
            return values
        values.extend(self.build(items, depth + 1) for _ in range(wanted - len(values)))
        return values


def _schema_type(schema: Schema, *, nullable_ok: bool) -> str | None:
    kind = schema.get("type")
    if isinstance(kind, list):
        if nullable_ok and "null" in kind:
            return "null"
        non_null = [k for k in kind if k != "null"]
        kind = non_null[0] if non_null else "null"
    if kind is None:
        if "properties" in schema or "required" in schema:
            return "object"
        if "items" in schema or "prefixItems" in schema:
            return "array"
    return kind if isinstance(kind, str) else None


def _build_string(schema: Schema) -> str:
    value = _FORMATS.get(str(schema.get("format", "")), _STRING)
    min_length = int(schema.get("minLength", 0))
    if len(value) < min_length:
        value += "x" * (min_length - len(value))
    if "maxLength" in schema:
        value = value[: int(schema["maxLength"])]
    return value


def _build_number(schema: Schema, *, integer: bool) -> float:
    step = 1.0 if integer else 0.5
    low = -math.inf
    if "minimum" in schema:
        low = float(schema["minimum"])
    exclusive_min = schema.get("exclusiveMinimum")
    if isinstance(exclusive_min, int | float) and not isinstance(exclusive_min, bool):
        low = max(low, float(exclusive_min) + step)
    high = math.inf
    if "maximum" in schema:
        high = float(schema["maximum"])
    exclusive_max = schema.get("exclusiveMaximum")
    if isinstance(exclusive_max, int | float) and not isinstance(exclusive_max, bool):
        high = min(high, float(exclusive_max) - step)
    value = min(max(0.0, low), high)
    if integer:
        value = float(math.ceil(value))
    multiple = schema.get("multipleOf")
    if isinstance(multiple, int | float) and multiple > 0 and value % multiple:
        value = math.ceil(value / multiple) * multiple
    return value
