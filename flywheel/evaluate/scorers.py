"""User scorers: metrics of the user's own, named in ``[pipelines.NAME.eval] scorers``.

A scorer is ``"module:function"`` (the attribute may be dotted, ``"module:Class.method"``). The
function is called once per example as ``function(output, reference, example)``:

- ``output``: the candidate's assistant message (``{"role", "content", "tool_calls"?}``), or
  ``None`` when it gave no answer;
- ``reference``: the reference assistant message;
- ``example``: ``{"call_id", "messages", "request"}``, the recorded call the example comes from
  (``messages`` is the input the candidate saw).

It returns ``True``/``False``, a number in [0, 1], or ``None`` for "does not apply to this
example" (left out of that metric's ``n``). Its metric is named by the function's ``scorer_name``
attribute when set, else its ``__name__``; built-in metric names are reserved. A scorer gets deep
copies, so it cannot change what other metrics see.

Errors: a spec that cannot be loaded is a ``UsageError`` naming the config place (``where``). A
scorer that raises or returns anything else is a ``ScorerError`` naming the spec and the example's
call id: a broken metric stops the scoring instead of silently reporting a wrong number.
"""

from __future__ import annotations

import copy
import importlib
import math
import numbers
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import FlywheelError, UsageError
from .metrics import METRIC_NAMES

__all__ = ["Scorer", "ScorerError", "load_scorer", "load_scorers", "score_with"]


class ScorerError(FlywheelError):
    """A user scorer raised or returned something other than a bool, a number 0-1 or None."""


@dataclass(frozen=True, slots=True)
class Scorer:
    """A loaded user scorer: ``name`` is its metric's name, ``spec`` the ``"module:function"`` it
    came from, ``where`` the config place that named it."""

    name: str
    spec: str
    function: Callable[..., object]
    where: str

    def __call__(
        self, output: Mapping[str, Any] | None, reference: Mapping[str, Any], example: Mapping[str, Any]
    ) -> float | None:
        """The scorer's value for one example (``bool`` as 1.0/0.0), or ``None`` if it does not
        apply. Raises ``ScorerError`` when the function raises or returns anything else."""
        call_id = example.get("call_id")
        try:
            result = self.function(
                copy.deepcopy(dict(output)) if output is not None else None,
                copy.deepcopy(dict(reference)),
                copy.deepcopy(dict(example)),
            )
        except Exception as exc:
            raise ScorerError(
                f"scorer {self.spec} raised {type(exc).__name__}: {exc} on call {call_id}", self.where
            ) from exc
        if result is None:
            return None
        if isinstance(result, bool):
            return float(result)
        if isinstance(result, numbers.Real) and math.isfinite(value := float(result)) and 0 <= value <= 1:
            return value
        raise ScorerError(
            f"scorer {self.spec} returned {result!r} on call {call_id}; expected a bool, a number "
            "between 0 and 1, or None",
            self.where,
        )


def load_scorer(spec: str, *, where: str) -> Scorer:
    """Import the scorer ``spec`` (``"module:function"``). Raises ``UsageError`` naming ``where``
    when the spec is malformed, the module does not import, the attribute is missing or not
    callable, or its name is a built-in metric's."""
    module_name, colon, attribute = spec.partition(":")
    module_name, attribute = module_name.strip(), attribute.strip()
    if not colon or not module_name or not attribute:
        raise UsageError(f"scorer {spec!r} is not 'module:function'", where)
    try:
        target: Any = importlib.import_module(module_name)
    except Exception as exc:  # the user's module: a missing import, a syntax error, its own raise
        raise UsageError(
            f"scorer {spec}: cannot import module {module_name!r}: {type(exc).__name__}: {exc}", where
        ) from exc
    for part in attribute.split("."):
        if not hasattr(target, part):
            raise UsageError(f"scorer {spec}: {module_name!r} has no attribute {attribute!r}", where)
        target = getattr(target, part)
    if not callable(target):
        raise UsageError(f"scorer {spec}: {attribute!r} is a {type(target).__name__}, not callable", where)
    name = getattr(target, "scorer_name", None)
    if name is None:
        name = getattr(target, "__name__", attribute.rpartition(".")[2])
    if not isinstance(name, str) or not name.strip():
        raise UsageError(f"scorer {spec}: its scorer_name must be a non-empty string, got {name!r}", where)
    if name in METRIC_NAMES:
        raise UsageError(
            f"scorer {spec} is named {name!r}, a built-in metric's name; set a scorer_name attribute "
            "on the function to rename it",
            where,
        )
    return Scorer(name=name, spec=spec, function=target, where=where)


def load_scorers(specs: Sequence[str], *, where: str) -> list[Scorer]:
    """``load_scorer`` for each spec; two scorers with one name are a ``UsageError``."""
    scorers: list[Scorer] = []
    for spec in specs:
        scorer = load_scorer(spec, where=where)
        clash = next((other for other in scorers if other.name == scorer.name), None)
        if clash is not None:
            raise UsageError(
                f"scorers {clash.spec} and {scorer.spec} are both named {scorer.name!r}; set a "
                "scorer_name attribute on one of them",
                where,
            )
        scorers.append(scorer)
    return scorers


def score_with(
    scorers: Sequence[Scorer],
    output: Mapping[str, Any] | None,
    reference: Mapping[str, Any],
    example: Mapping[str, Any],
) -> dict[str, float]:
    """Each scorer's value for one example, by name; scorers that return ``None`` are left out
    (merge into the built-in scores with ``ExampleScores.with_metrics``)."""
    values: dict[str, float] = {}
    for scorer in scorers:
        value = scorer(output, reference, example)
        if value is not None:
            values[scorer.name] = value
    return values
