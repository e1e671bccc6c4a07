"""The body of ``POST /v1/fine_tuning/jobs``, checked like upstream, and the training file's checks.

Everything here is pure: a request body becomes a ``FineTuneRequest`` or a ``MockAPIError`` (400)
with upstream's wording where it is known; file bytes become a problem message or ``None``. What
``"auto"`` hyperparameters resolve to follows OpenAI's documented rules of thumb, so a client sees
numbers of the right kind once the job runs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from ..train.cost import auto_epochs
from ._http import MockAPIError, require

METHODS = ("supervised", "dpo")
MAX_METADATA_PAIRS = 16
MAX_METADATA_KEY = 64
MAX_METADATA_VALUE = 512
MAX_SUFFIX = 64

# name -> (integer?, low, high, low is exclusive?)
_HYPERPARAMETERS: dict[str, tuple[bool, float, float, bool]] = {
    "batch_size": (True, 1, 256, False),
    "learning_rate_multiplier": (False, 0, 10, True),
    "n_epochs": (True, 1, 50, False),
    "beta": (False, 0, 2, True),
}
_METHOD_HYPERPARAMETERS = {
    "supervised": ("batch_size", "learning_rate_multiplier", "n_epochs"),
    "dpo": ("batch_size", "beta", "learning_rate_multiplier", "n_epochs"),
}


@dataclass(frozen=True, slots=True)
class FineTuneRequest:
    model: str
    training_file: str
    validation_file: str | None
    method: str
    hyperparameters: dict[str, Any]
    """Every hyperparameter of the method, ``"auto"`` where none was given."""
    suffix: str | None
    seed: int | None
    metadata: dict[str, str] | None


def parse_fine_tune_request(body: Mapping[str, Any]) -> FineTuneRequest:
    """The create request, or the 400 upstream answers for it."""
    model = require(body, "model", str)
    training_file = require(body, "training_file", str)
    validation_file = body.get("validation_file")
    if validation_file is not None and not isinstance(validation_file, str):
        raise _invalid_type("validation_file", "a string", validation_file)
    method, method_hyperparameters = _method(body.get("method"))
    legacy = body.get("hyperparameters")
    if legacy is not None and not isinstance(legacy, Mapping):
        raise _invalid_type("hyperparameters", "an object", legacy)
    hyperparameters: dict[str, Any] = dict.fromkeys(_METHOD_HYPERPARAMETERS[method], "auto")
    # The top-level ``hyperparameters`` is upstream's deprecated spelling of the supervised ones;
    # the method's own win where both name one.
    for path, given in (
        ("hyperparameters", legacy or {}),
        (f"method.{method}.hyperparameters", method_hyperparameters),
    ):
        for name, value in given.items():
            if name not in hyperparameters:
                raise MockAPIError(
                    400,
                    f"Unknown parameter: '{path}.{name}'.",
                    param=f"{path}.{name}",
                    code="unknown_parameter",
                )
            hyperparameters[name] = _hyperparameter(f"{path}.{name}", name, value)
    suffix = body.get("suffix")
    if suffix is not None:
        if not isinstance(suffix, str):
            raise _invalid_type("suffix", "a string", suffix)
        if len(suffix) > MAX_SUFFIX:
            raise MockAPIError(
                400,
                f"Invalid 'suffix': string too long. Expected a string with maximum length {MAX_SUFFIX}, "
                f"but got a string with length {len(suffix)} instead.",
                param="suffix",
                code="string_above_max_length",
            )
    seed = body.get("seed")
    if seed is not None and (
        not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed <= 2**31 - 1
    ):
        raise MockAPIError(
            400,
            "Invalid 'seed': expected an integer from 0 to 2147483647.",
            param="seed",
            code="invalid_value",
        )
    return FineTuneRequest(
        model=model,
        training_file=training_file,
        validation_file=validation_file,
        method=method,
        hyperparameters=hyperparameters,
        suffix=suffix or None,
        seed=seed,
        metadata=parse_metadata(body.get("metadata")),
    )


def parse_metadata(value: Any) -> dict[str, str] | None:
    """Upstream's metadata rules: at most 16 pairs, keys up to 64 and values up to 512 characters."""
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise _invalid_type("metadata", "an object", value)
    if len(value) > MAX_METADATA_PAIRS:
        raise MockAPIError(
            400,
            f"Invalid 'metadata': too many properties. Expected an object with at most {MAX_METADATA_PAIRS} "
            f"properties, but got an object with {len(value)} properties instead.",
            param="metadata",
            code="object_above_max_properties",
        )
    for key, item in value.items():
        if len(key) > MAX_METADATA_KEY:
            raise MockAPIError(
                400,
                f"Invalid 'metadata': string too long. Expected a key with maximum length "
                f"{MAX_METADATA_KEY}, but got a key with length {len(key)} instead.",
                param="metadata",
                code="string_above_max_length",
            )
        if not isinstance(item, str):
            raise _invalid_type(f"metadata.{key}", "a string", item)
        if len(item) > MAX_METADATA_VALUE:
            raise MockAPIError(
                400,
                f"Invalid 'metadata.{key}': string too long. Expected a string with maximum length "
                f"{MAX_METADATA_VALUE}, but got a string with length {len(item)} instead.",
                param=f"metadata.{key}",
                code="string_above_max_length",
            )
    return dict(value)


def resolve_hyperparameters(requested: Mapping[str, Any], n_examples: int) -> dict[str, Any]:
    """``"auto"`` replaced by what OpenAI documents it picks for a file of ``n_examples``."""
    n = max(1, n_examples)
    auto: dict[str, Any] = {
        # The same rule the flywheel prices a job by (flywheel.train.cost).
        "n_epochs": auto_epochs(n),
        "batch_size": max(1, min(256, round(n * 0.002))),
        "learning_rate_multiplier": 1.8,
        "beta": 0.1,
    }
    return {name: auto[name] if value == "auto" else value for name, value in requested.items()}


def training_file_problem(data: bytes, method: str = "supervised") -> str | None:
    """Why ``data`` is not valid fine-tuning JSONL for ``method``, or ``None`` if it is.

    Supervised lines need a ``messages`` array with an assistant message; DPO lines need an
    ``input`` with ``messages`` and ``preferred_output``/``non_preferred_output`` arrays.
    """
    lines = [line for line in data.splitlines() if line.strip()]
    if not lines:
        return "The training file is empty."
    for number, line in enumerate(lines, start=1):
        try:
            example = orjson.loads(line)
        except orjson.JSONDecodeError:
            return f"Line {number} is not valid JSON."
        if not isinstance(example, dict):
            return f"Line {number} is not a JSON object."
        problem = _dpo_line_problem(example) if method == "dpo" else _supervised_line_problem(example)
        if problem is not None:
            return f"Line {number} {problem}."
    return None


def count_examples(data: bytes) -> int:
    return sum(1 for line in data.splitlines() if line.strip())


def _supervised_line_problem(example: Mapping[str, Any]) -> str | None:
    messages = example.get("messages")
    if not isinstance(messages, list):
        return "has no 'messages' array"
    if not any(isinstance(m, Mapping) and m.get("role") == "assistant" for m in messages):
        return "has no assistant message to learn from"
    return None


def _dpo_line_problem(example: Mapping[str, Any]) -> str | None:
    source = example.get("input")
    if not isinstance(source, Mapping) or not isinstance(source.get("messages"), list):
        return "has no 'input' object with a 'messages' array"
    for side in ("preferred_output", "non_preferred_output"):
        output = example.get(side)
        if not isinstance(output, list) or not output:
            return f"has no '{side}' array of assistant messages"
    return None


def _method(value: Any) -> tuple[str, Mapping[str, Any]]:
    if value is None:
        return "supervised", {}
    if not isinstance(value, Mapping):
        raise _invalid_type("method", "an object", value)
    kind = value.get("type")
    if kind == "reinforcement":
        raise MockAPIError(
            400,
            "The mock server supports the 'supervised' and 'dpo' methods, not 'reinforcement'.",
            param="method.type",
        )
    if kind not in METHODS:
        raise MockAPIError(
            400,
            f"Invalid value for 'method.type': expected one of 'supervised', 'dpo' or "
            f"'reinforcement', got {kind!r}.",
            param="method.type",
            code="invalid_value",
        )
    settings = value.get(kind) or {}
    if not isinstance(settings, Mapping):
        raise _invalid_type(f"method.{kind}", "an object", settings)
    hyperparameters = settings.get("hyperparameters") or {}
    if not isinstance(hyperparameters, Mapping):
        raise _invalid_type(f"method.{kind}.hyperparameters", "an object", hyperparameters)
    return kind, hyperparameters


def _hyperparameter(path: str, name: str, value: Any) -> Any:
    if value == "auto":
        return value
    integer, low, high, exclusive = _HYPERPARAMETERS[name]
    kinds = (int,) if integer else (int, float)
    number_ok = isinstance(value, kinds) and not isinstance(value, bool)
    if not number_ok or not (low < value if exclusive else low <= value) or value > high:
        kind = "an integer" if integer else "a number"
        bounds = f"above {low:g}" if exclusive else f"from {low:g}"
        raise MockAPIError(
            400,
            f"Invalid '{path}': expected \"auto\" or {kind} {bounds} up to {high:g}, got {value!r}.",
            param=path,
            code="invalid_value",
        )
    return value


def _invalid_type(name: str, expected: str, value: Any) -> MockAPIError:
    return MockAPIError(
        400,
        f"Invalid type for '{name}': expected {expected}, but got {_json_type(value)} instead.",
        param=name,
        code="invalid_type",
    )


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a decimal"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, Mapping):
        return "an object"
    return "null"
