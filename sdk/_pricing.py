"""What a call cost, from a price table kept as data (``sdk/prices.toml`` plus users' files).

Prices are USD per 1 million tokens: ``input``, ``cached_input`` (prompt tokens served from the
prompt cache; they are counted inside ``prompt_tokens``) and ``output``; fine-tuned models' entries
may also have ``training`` (per 1M training tokens), which prices a fine-tune job before it runs.
The writer builds the table once::

    prices = PriceTable.load(_config.price_files())   # FLYWHEEL_PRICES

A user file uses the built-in format (a ``[models]`` table of inline tables); its entries replace
built-in ones of the same name. A file that cannot be read or has a bad entry is skipped as a
whole, with a warning that names the file and the problem.

Invariant: ``cost`` never guesses. A model that does not resolve (a self-hosted ``llama3``, an
Azure deployment name, a future model) costs ``None``, not a neighbour's price.
"""

from __future__ import annotations

import math
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from . import _health

__all__ = ["ModelPrice", "PriceError", "PriceTable"]

_SNAPSHOT = re.compile(r"-\d{4}-\d{2}-\d{2}$")
_CACHE_LIMIT = 1024


class PriceError(ValueError):
    """A price file is unreadable or has an invalid entry."""


@dataclass(frozen=True, slots=True)
class ModelPrice:
    """USD per 1M tokens for one model."""

    input: float
    cached_input: float
    output: float
    training: float | None = None
    """Training a fine-tune of this model, per 1M training tokens (``ft:`` entries only)."""


class PriceTable:
    """Model name -> ``ModelPrice``, with snapshot and fine-tune name resolution."""

    def __init__(self, prices: Mapping[str, ModelPrice]) -> None:
        self._prices = dict(prices)
        self._resolved: dict[str, ModelPrice | None] = {}

    @classmethod
    def load(cls, extra_files: Sequence[Path] = ()) -> PriceTable:
        """The built-in table with ``extra_files`` merged on top, in order; bad files are skipped."""
        text = resources.files("sdk").joinpath("prices.toml").read_text(encoding="utf-8")
        prices = parse_prices(text, source="sdk/prices.toml")
        for path in extra_files:
            try:
                prices.update(parse_prices(Path(path).read_text(encoding="utf-8"), source=str(path)))
            except (OSError, UnicodeDecodeError, PriceError) as exc:
                _health.count("price_file_errors")
                _health.log_problem(
                    f"price_file:{path}", "flywheel: ignoring price file %s: %s", path, _describe(exc)
                )
        return cls(prices)

    def __contains__(self, model: object) -> bool:
        return isinstance(model, str) and self.resolve(model) is not None

    def __len__(self) -> int:
        return len(self._prices)

    def resolve(self, model: str) -> ModelPrice | None:
        """The price entry for ``model``, or ``None`` when it is unknown."""
        try:
            return self._resolved[model]
        except KeyError:
            pass
        price = self._lookup(model)
        if len(self._resolved) >= _CACHE_LIMIT:
            self._resolved.clear()
        self._resolved[model] = price
        return price

    def cost(
        self,
        model: str | None,
        prompt_tokens: int | None,
        completion_tokens: int | None,
        cached_tokens: int = 0,
    ) -> float | None:
        """USD for one call, or ``None`` if the model is unknown or there are no token counts.

        ``cached_tokens`` are part of ``prompt_tokens`` and billed at ``cached_input``.
        """
        if not model or (prompt_tokens is None and completion_tokens is None):
            return None
        price = self.resolve(model)
        if price is None:
            return None
        prompt = prompt_tokens or 0
        cached = min(max(cached_tokens or 0, 0), prompt)
        return (
            (prompt - cached) * price.input
            + cached * price.cached_input
            + (completion_tokens or 0) * price.output
        ) / 1_000_000

    def training_price(self, base_model: str) -> float | None:
        """USD per 1M training tokens for fine-tuning ``base_model`` (its ``ft:`` entry's
        ``training``), or ``None`` when the table has none."""
        price = self.resolve(base_model if base_model.startswith("ft:") else f"ft:{base_model}")
        return None if price is None else price.training

    def _lookup(self, model: str) -> ModelPrice | None:
        prices = self._prices
        price = prices.get(model)
        if price is not None:
            return price
        if model.startswith("ft:"):
            # ft:<base>:<org>:<suffix>:<id>; price by the base model's fine-tune entry.
            base = model[3:].split(":", 1)[0]
            return prices.get(f"ft:{base}") or prices.get(f"ft:{_SNAPSHOT.sub('', base)}")
        stripped = _SNAPSHOT.sub("", model)
        return prices.get(stripped) if stripped != model else None


def parse_prices(text: str, *, source: str) -> dict[str, ModelPrice]:
    """Parse one price file; raise ``PriceError`` naming the first problem."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise PriceError(f"not valid TOML ({exc})") from None
    models = data.get("models")
    if not isinstance(models, dict):
        raise PriceError("no [models] table")
    return {str(name): _entry(str(name), entry) for name, entry in models.items()}


def _entry(name: str, entry: Any) -> ModelPrice:
    if not isinstance(entry, dict):
        raise PriceError(f'models."{name}" must be a table like {{ input = 2.5, output = 10.0 }}')
    unknown = set(entry) - {"input", "cached_input", "output", "training"}
    if unknown:
        raise PriceError(f'models."{name}" has unknown field(s) {", ".join(sorted(unknown))}')
    values: dict[str, float] = {}
    for field in ("input", "output", "cached_input", "training"):
        if field not in entry:
            if field == "cached_input":
                values[field] = values["input"]
                continue
            if field == "training":
                continue
            raise PriceError(f'models."{name}" is missing "{field}"')
        value = entry[field]
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or not math.isfinite(value)
            or value < 0
        ):
            raise PriceError(f'models."{name}".{field} must be a non-negative number, got {value!r}')
        values[field] = float(value)
    return ModelPrice(**values)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, FileNotFoundError):
        return "file not found"
    return str(exc) or type(exc).__name__
