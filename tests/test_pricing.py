"""The price table: built-in data, user files merged on top, strict model resolution."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from sdk import _health
from sdk._pricing import ModelPrice, PriceTable


@pytest.fixture(autouse=True)
def _fresh_health() -> Iterator[None]:
    _health._reset_for_tests()
    yield
    _health._reset_for_tests()


@pytest.fixture(scope="module")
def prices() -> PriceTable:
    return PriceTable.load()


REQUIRED = [
    "gpt-4o", "gpt-4o-mini", "gpt-4.1", "gpt-4.1-mini", "gpt-4.1-nano", "o1", "o3", "o3-mini", "o4-mini",
    "gpt-5", "gpt-5-mini", "gpt-5-nano", "gpt-3.5-turbo", "text-embedding-3-small",
    "text-embedding-3-large", "text-embedding-ada-002", "ft:gpt-4o", "ft:gpt-4o-mini",
]  # fmt: skip


@pytest.mark.parametrize("model", REQUIRED)
def test_builtin_table_covers_current_models(prices: PriceTable, model: str) -> None:
    price = prices.resolve(model)
    assert price is not None
    assert price.input > 0 and price.output >= 0 and 0 <= price.cached_input <= price.input


def test_cost_per_million_tokens(prices: PriceTable) -> None:
    # gpt-4o-mini: $0.15 in, $0.60 out per 1M tokens
    assert prices.cost("gpt-4o-mini", 1_000_000, 0) == pytest.approx(0.15)
    assert prices.cost("gpt-4o-mini", 1000, 500) == pytest.approx((1000 * 0.15 + 500 * 0.60) / 1e6)


def test_cached_tokens_are_part_of_prompt_and_billed_at_cached_price(prices: PriceTable) -> None:
    # gpt-4o: input 2.50, cached 1.25, output 10.00
    cost = prices.cost("gpt-4o", prompt_tokens=1000, completion_tokens=100, cached_tokens=600)
    assert cost == pytest.approx((400 * 2.50 + 600 * 1.25 + 100 * 10.00) / 1e6)
    # more cached than prompt (a provider bug) never gives a negative part
    assert prices.cost("gpt-4o", 10, 0, cached_tokens=50) == pytest.approx(10 * 1.25 / 1e6)


def test_dated_snapshot_resolves_to_its_family(prices: PriceTable) -> None:
    assert prices.resolve("gpt-4o-2024-08-06") == prices.resolve("gpt-4o")
    assert prices.resolve("o3-mini-2025-01-31") == prices.resolve("o3-mini")
    # an explicitly listed snapshot wins over its family
    assert prices.resolve("gpt-4o-2024-05-13") == ModelPrice(input=5.0, cached_input=5.0, output=15.0)
    # only -YYYY-MM-DD is a snapshot suffix: other suffixes are different models
    assert prices.resolve("gpt-4o-mini-tts") is None
    assert prices.resolve("gpt-3.5-turbo-0301") is None


def test_fine_tuned_models_use_the_ft_entry_of_their_base(prices: PriceTable) -> None:
    assert prices.resolve("ft:gpt-4o-mini-2024-07-18:acme::9xYz12") == prices.resolve("ft:gpt-4o-mini")
    assert prices.resolve("ft:gpt-4o-2024-08-06:acme:support:AbC") == prices.resolve("ft:gpt-4o")
    assert prices.resolve("ft:gpt-4o-mini") != prices.resolve("gpt-4o-mini")
    assert prices.resolve("ft:some-open-model:acme::1") is None  # never the base model's price


@pytest.mark.parametrize(
    "model", ["llama3", "llama3:8b", "my-azure-deployment", "gpt-7", "openai/gpt-4o", ""]
)
def test_unknown_models_cost_nothing_rather_than_a_guess(prices: PriceTable, model: str) -> None:
    assert prices.cost(model, 100, 100) is None
    assert model not in prices


def test_no_token_counts_no_cost(prices: PriceTable) -> None:
    assert prices.cost("gpt-4o", None, None) is None
    assert prices.cost(None, 10, 10) is None
    assert prices.cost("text-embedding-3-small", 1_000_000, None) == pytest.approx(0.02)


def test_user_file_overrides_and_adds(tmp_path: Path) -> None:
    user = tmp_path / "prices.toml"
    user.write_text(
        """
[models]
"gpt-4o" = { input = 2.0, output = 8.0 }
"llama3" = { input = 0.0, output = 0.0 }
"my-azure-deployment" = { input = 1, cached_input = 0.5, output = 4 }
""",
        encoding="utf-8",
    )
    table = PriceTable.load([user])
    assert table.resolve("gpt-4o") == ModelPrice(2.0, 2.0, 8.0)  # whole entry replaced
    assert table.resolve("gpt-4o-2024-11-20") == ModelPrice(2.0, 2.0, 8.0)
    assert table.cost("llama3", 100, 100) == 0.0
    assert table.cost("my-azure-deployment", 2_000_000, 0, cached_tokens=1_000_000) == pytest.approx(1.5)
    assert table.resolve("gpt-4.1") is not None  # built-ins stay


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("[models\n", "not valid TOML"),
        ('title = "no models"\n', "no [models] table"),
        ('[models]\n"x" = 3\n', 'models."x" must be a table'),
        ('[models]\n"x" = { input = 1 }\n', 'models."x" is missing "output"'),
        ('[models]\n"x" = { input = -1, output = 1 }\n', "non-negative number"),
        ('[models]\n"x" = { input = "1.0", output = 1 }\n', "non-negative number"),
        ('[models]\n"x" = { input = 1, output = 1, cache = 1 }\n', "unknown field(s) cache"),
    ],
)
def test_bad_user_file_is_skipped_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, content: str, problem: str
) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(content + '"gpt-4o" = { input = 99, output = 99 }\n' if "[models]" in content else content)
    good = tmp_path / "good.toml"
    good.write_text('[models]\n"llama3" = { input = 0.1, output = 0.2 }\n')
    with caplog.at_level(logging.WARNING, logger="flywheel.sdk"):
        table = PriceTable.load([bad, good])
    assert table.resolve("gpt-4o") == PriceTable.load().resolve("gpt-4o")  # nothing from the bad file
    assert table.resolve("llama3") is not None  # later files still apply
    (record,) = [r for r in caplog.records if r.name == "flywheel.sdk"]
    assert str(bad) in record.getMessage() and problem in record.getMessage()
    assert _health.snapshot()["price_file_errors"] == 1


def test_missing_or_undecodable_user_file(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    binary = tmp_path / "binary.toml"
    binary.write_bytes(b"\xff\xfe\x00")
    with caplog.at_level(logging.WARNING, logger="flywheel.sdk"):
        table = PriceTable.load([tmp_path / "missing.toml", binary, tmp_path])
    assert table.resolve("gpt-4o") is not None
    messages = "\n".join(r.getMessage() for r in caplog.records)
    assert "missing.toml: file not found" in messages
    assert "binary.toml" in messages
    assert _health.snapshot()["price_file_errors"] == 3


def test_price_files_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from sdk import _config

    user = tmp_path / "p.toml"
    user.write_text('[models]\n"llama3" = { input = 1, output = 1 }\n')
    monkeypatch.setenv("FLYWHEEL_PRICES", str(user))
    assert PriceTable.load(_config.price_files()).cost("llama3", 1_000_000, 0) == pytest.approx(1.0)
