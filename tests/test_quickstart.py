"""`flywheel quickstart` runs offline end to end and reports what landed."""

from __future__ import annotations

from click.testing import CliRunner

from flywheel.cli import cli
from flywheel.query import CallFilter
from flywheel.stats import call_stats


def test_quickstart_records_every_call(db_url: str) -> None:
    result = CliRunner().invoke(cli, ["quickstart", "--db", db_url])
    assert result.exit_code == 0, result.output
    assert "rows in `calls`: 0 -> " in result.output
    assert "flywheel logs" in result.output
    stats = {row["model"]: row for row in call_stats(db_url, CallFilter(), ("model",))}
    assert set(stats) == {"gpt-4o-mini", "gpt-4o", "gpt-4.1-mini"}
    assert stats["gpt-4o-mini"]["errors"] == 3  # two failed attempts before a retry succeeded, one 400
    assert stats["gpt-4o-mini"]["cost_usd"] > 0
    # running it again adds the same number of rows
    again = CliRunner().invoke(cli, ["quickstart", "--db", db_url])
    assert again.exit_code == 0, again.output
    total = sum(row["calls"] for row in call_stats(db_url, CallFilter(), ()))
    assert total == 2 * sum(row["calls"] for row in stats.values())
