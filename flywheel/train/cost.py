"""What a training job will cost, before it is launched: tokens x epochs x the training price.

The training price per 1M tokens comes from the same price table as call costs (``sdk/prices.toml``
plus ``FLYWHEEL_PRICES`` files: the ``training`` field of the base model's ``ft:`` entry). Tokens are
the training file's, counted by the export's validator. With ``n_epochs = "auto"`` the epochs are
the ones OpenAI picks for a file of that size (3, raised for small files and lowered for large
ones so that about 100 to 25,000 examples are seen), so the estimate is the one its dashboard shows.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sdk import _config
from sdk._pricing import PriceTable

from .providers.base import export_sides

__all__ = [
    "CostEstimate",
    "auto_epochs",
    "estimate_cost",
    "estimate_export",
    "format_usd",
    "over_budget",
]

_TARGET_EPOCHS = 3
_MIN_TARGET_EXAMPLES = 100
_MAX_TARGET_EXAMPLES = 25_000
_MIN_DEFAULT_EPOCHS = 1
_MAX_DEFAULT_EPOCHS = 25


@dataclass(frozen=True, slots=True)
class CostEstimate:
    """The estimate and how it was made; ``usd`` is ``None`` when the model has no training price."""

    training_tokens: int
    epochs: int
    price_per_million: float | None

    @property
    def usd(self) -> float | None:
        if self.price_per_million is None:
            return None
        return self.training_tokens * self.epochs * self.price_per_million / 1_000_000

    def as_dict(self) -> dict[str, Any]:
        return {
            "training_tokens": self.training_tokens,
            "epochs": self.epochs,
            "price_per_million_usd": self.price_per_million,
            "estimated_cost_usd": self.usd,
        }


def auto_epochs(examples: int) -> int:
    """The epochs OpenAI chooses for ``n_epochs = "auto"`` and a file of ``examples`` examples."""
    if examples <= 0:
        return _TARGET_EPOCHS
    if examples * _TARGET_EPOCHS < _MIN_TARGET_EXAMPLES:
        return min(_MAX_DEFAULT_EPOCHS, _MIN_TARGET_EXAMPLES // examples)
    if examples * _TARGET_EPOCHS > _MAX_TARGET_EXAMPLES:
        return max(_MIN_DEFAULT_EPOCHS, _MAX_TARGET_EXAMPLES // examples)
    return _TARGET_EPOCHS


def estimate_cost(
    base_model: str,
    training_tokens: int,
    examples: int,
    hyperparameters: Mapping[str, Any],
    prices: PriceTable | None = None,
) -> CostEstimate:
    """The training cost of ``training_tokens`` (one epoch of ``examples`` examples) on ``base_model``."""
    table = prices if prices is not None else PriceTable.load(_config.price_files())
    epochs = hyperparameters.get("n_epochs", "auto")
    return CostEstimate(
        training_tokens=training_tokens,
        epochs=auto_epochs(examples) if epochs == "auto" else int(epochs),
        price_per_million=table.training_price(base_model),
    )


def estimate_export(
    base_model: str, method: str, hyperparameters: Mapping[str, Any], manifest: Mapping[str, Any]
) -> CostEstimate:
    """The cost of training on what an export wrote (its manifest's counts and token totals)."""
    side = export_sides(method)[0]
    tokens = int(manifest.get("validation", {}).get(side, {}).get("total_tokens", 0))
    return estimate_cost(base_model, tokens, int(manifest["counts"][side]), hyperparameters)


def format_usd(value: float | None, missing: str = "-") -> str:
    """A cost for people: cents above $1, four decimals above a cent, six below (a small job or a
    single request costs fractions of a cent, which two decimals would show as $0.00)."""
    if value is None:
        return missing
    if value == 0:
        return "$0"
    size = abs(value)
    return f"${value:,.2f}" if size >= 1 else f"${value:.4f}" if size >= 0.01 else f"${value:.6f}"


def over_budget(
    max_cost_usd: float | None, base_model: str, usd: float | None, training_tokens: int | None
) -> str | None:
    """Why a job estimated at ``usd`` may not launch under ``max_cost_usd``; ``None`` when it may.
    A job whose cost cannot be estimated (no training price) is refused when there is a cap."""
    if max_cost_usd is None:
        return None
    if usd is None:
        return (
            f"no training price for {base_model} in the price table, so the cost cannot be checked "
            f"against max_cost_usd = {max_cost_usd}; add a `training` price to a FLYWHEEL_PRICES "
            "file or remove max_cost_usd"
        )
    if usd > max_cost_usd:
        return (
            f"estimated cost ${usd:,.2f} ({training_tokens or 0:,} tokens) is above "
            f"max_cost_usd = {max_cost_usd}; not launched"
        )
    return None
