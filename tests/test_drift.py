"""``flywheel drift``: the pure statistics by hand, then real recorded traffic (through ``sdk.OpenAI``
and the mock server) against a real export, on SQLite and PostgreSQL: the same distribution is not
flagged; a new topic with longer inputs is; so is a change of the model and tag mix."""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
import sqlalchemy as sa
from click.testing import CliRunner

import sdk
from flywheel.cli import cli
from flywheel.datasets import create_dataset
from flywheel.dedup import dedup_dataset
from flywheel.errors import UsageError
from flywheel.evaluate.drift import DriftReport, drift_report
from flywheel.evaluate.drift.shifts import mix_shift, novelty_shift, words_of
from flywheel.evaluate.drift.stats import (
    jensen_shannon,
    kolmogorov_survival,
    ks_two_sample,
    permutation_test,
    total_variation,
)
from flywheel.export import export_dataset
from flywheel.query import CallFilter
from flywheel.train.config import Pipeline, load_config
from sdk._migrate import upgrade
from sdk.schema import eval_runs, exports, promotions

# --- the pure statistics, by hand ------------------------------------------------------------------


def test_ks_statistic_and_p_value_by_hand() -> None:
    # CDFs of [1,2,3,4] and [3,4,5,6] differ most at 2 (0.5 vs 0) and at 4 (1 vs 0.5).
    statistic, p_value = ks_two_sample([1, 2, 3, 4], [3, 4, 5, 6])
    assert statistic == 0.5
    root = math.sqrt(4 * 4 / 8)
    scaled = (root + 0.12 + 0.11 / root) * 0.5  # 0.8060
    expected = 2 * sum((-1) ** (j - 1) * math.exp(-2 * j * j * scaled * scaled) for j in range(1, 50))
    assert p_value == pytest.approx(expected, rel=1e-9)
    # 2 * (exp(-1.2992) - exp(-5.1968) + exp(-11.69)) = 2 * (0.27275 - 0.00554 + 0.00001)
    assert p_value == pytest.approx(0.5344, abs=1e-4)
    # Disjoint samples: D = 1; same sample: D = 0, p = 1.
    assert ks_two_sample([1, 2, 3], [4, 5, 6])[0] == 1.0
    assert ks_two_sample([1, 2, 3], [4, 5, 6])[1] == pytest.approx(2 * math.exp(-2 * 1.4345**2), abs=1e-3)
    assert ks_two_sample([5, 1, 3], [3, 1, 5]) == (0.0, 1.0)
    # Kolmogorov's distribution: P(K > 1.36) is the textbook 5 % point.
    assert kolmogorov_survival(1.358) == pytest.approx(0.05, abs=1e-3)
    with pytest.raises(ValueError):
        ks_two_sample([], [1.0])


def test_jensen_shannon_and_total_variation_by_hand() -> None:
    same = np.array([3, 1, 0])
    assert jensen_shannon(same, same * 5) == 0.0
    assert jensen_shannon(np.array([2, 0]), np.array([0, 7])) == 1.0
    # p = (1/2, 1/2), q = (1, 0): m = (3/4, 1/4); JSD = ½(½log2(⅔) + ½log2(2)) + ½ log2(4/3).
    half = 0.5 * (0.5 * math.log2(0.5 / 0.75) + 0.5 * math.log2(0.5 / 0.25)) + 0.5 * math.log2(1 / 0.75)
    assert jensen_shannon(np.array([1, 1]), np.array([1, 0])) == pytest.approx(half)
    assert half == pytest.approx(0.3113, abs=1e-4)
    assert total_variation(np.array([1, 1]), np.array([1, 0])) == pytest.approx(0.5)
    assert total_variation(np.array([6, 3, 1]), np.array([2, 4, 4])) == pytest.approx(0.4)
    assert total_variation(same, same) == 0.0


def test_permutation_test_separates_real_from_chance_differences() -> None:
    rng = random.Random(5)
    a = [rng.choice("xyz") for _ in range(300)]
    b = [rng.choice("xyz") for _ in range(200)]
    codes = np.array(["xyz".index(v) for v in a + b])
    labels = np.arange(500) >= 300
    owners = np.arange(500)
    alike = permutation_test(codes, owners, labels, total_variation)
    assert alike.p_value > 0.05 and abs(alike.excess) < 0.05
    shifted = np.where(labels & (codes == 0), 1, codes)  # recent never says "x"
    different = permutation_test(shifted, owners, labels, total_variation)
    assert different.p_value == 0.01 and different.excess > 0.25
    # A value unique to every call (a request id) is far apart by chance alone: no excess, no flag.
    ids = mix_shift("tag request", [f"t{i}" for i in range(100)], [f"r{i}" for i in range(100)])
    assert ids.distance.statistic == pytest.approx(1.0) and ids.distance.excess == pytest.approx(0.0)
    assert not ids.flagged


def test_novelty_needs_a_real_margin_over_its_baseline() -> None:
    assert not novelty_shift(12, 100, threshold=0.5, baseline_novel=10, baseline_count=100).flagged
    assert novelty_shift(45, 100, threshold=0.5, baseline_novel=10, baseline_count=100).flagged
    # Above the baseline by more than the margin, but on so few inputs that it may be chance.
    assert not novelty_shift(4, 10, threshold=0.5, baseline_novel=1, baseline_count=10).flagged
    # Without a baseline: significantly above half.
    assert novelty_shift(80, 100, threshold=0.5).flagged
    assert not novelty_shift(55, 100, threshold=0.5).flagged
    assert words_of("Ticket 42: my Invoice_PDF won't load") == [
        "ticket",
        "my",
        "invoice",
        "pdf",
        "won",
        "t",
        "load",
    ]


# --- real traffic ----------------------------------------------------------------------------------

PRODUCTS = ["invoice", "password", "export", "dashboard", "refund", "teammate", "login", "billing"]
ISSUES = ["broken", "slow", "missing", "frozen"]
PLACES = ["phone", "browser", "tablet", "desktop"]
WHEN = ["today", "tomorrow", "soon", "now"]
SHIPPING = [
    *("parcel", "courier", "pallet", "customs", "warehouse", "freight", "tracking", "container"),
    *("dispatch", "consignment", "harbour", "vessel", "manifest", "crate", "forklift", "lorry"),
    *("dockyard", "shipment", "quay", "tariff", "bonded", "cargo", "depot", "airway", "waybill"),
    *("loading", "unloading", "transit", "invoiceless"),
]
SYSTEM = "You sort support tickets into one of eight queues. Answer with the queue name only."


def ticket(rng: random.Random) -> str:
    """The training distribution: a template with four one-word slots."""
    return (
        f"Hi team, the {rng.choice(PRODUCTS)} page is {rng.choice(ISSUES)} on my {rng.choice(PLACES)} "
        f"and I need it fixed {rng.choice(WHEN)}."
    )


def shipment(rng: random.Random) -> str:
    """The shift: another topic, its own words, three times as long."""
    return "Dear logistics desk, " + " ".join(rng.choice(SHIPPING) for _ in range(42)) + "."


@dataclass(frozen=True)
class Call:
    text: str
    model: str = "gpt-4o-mini"
    locale: str = "en"


def send(db_url: str, base_url: str, batch: list[Call]) -> tuple[datetime, datetime]:
    """Record ``batch`` through ``sdk.OpenAI``; the window ``[start, end)`` that holds exactly it."""
    start = datetime.now(UTC)
    time.sleep(0.01)
    client = sdk.OpenAI(api_key="sk-app", base_url=base_url, database_url=db_url)
    with client:
        for call in batch:
            client.chat.completions.create(
                model=call.model,
                messages=[{"role": "system", "content": SYSTEM}, {"role": "user", "content": call.text}],
                extra_headers={
                    "x-mock-words": "2",
                    **sdk.tag_headers(prompt_id="triage", locale=call.locale),
                },
            )
    assert sdk.flush(timeout=30)
    time.sleep(0.01)
    return start, datetime.now(UTC)


PIPELINE = Pipeline.model_validate(
    {"name": "triage", "dataset": "triage", "filter": {"tags": {"prompt_id": "triage"}, "status": "ok"}}
)


@pytest.fixture
def trained(db_url: str, mock_server: Any, tmp_path: Path) -> str:
    """A store holding 200 ticket calls, made a dataset and exported (80/20), as training would."""
    upgrade(db_url)
    rng = random.Random(1)
    send(db_url, mock_server.base_url, [Call(ticket(rng)) for _ in range(200)])
    create_dataset(db_url, "triage", PIPELINE.filter)
    export_dataset(db_url, "triage", tmp_path / "export", test_fraction=0.2)
    return db_url


def report_for(db_url: str, window: tuple[datetime, datetime], **options: Any) -> DriftReport:
    return drift_report(db_url, PIPELINE, since=window[0], now=window[1], **options)


def test_same_distribution_is_not_flagged(trained: str, mock_server: Any) -> None:
    rng = random.Random(2)
    window = send(trained, mock_server.base_url, [Call(ticket(rng)) for _ in range(80)])
    report = report_for(trained, window)
    data = report.as_dict()
    assert data["training_source"] == "export" and data["export_id"] is not None
    assert (
        140 <= data["training"]["calls"] <= 180 and data["training"]["sampled"] == data["training"]["calls"]
    )
    assert data["recent"] == {"calls": 80, "sampled": 80}
    assert data["flagged"] == [], data
    assert not report.retrain_due
    stats = data["statistics"]
    assert stats["length"]["ks_statistic"] < 0.2
    assert stats["words"]["excess_bits"] < 0.02
    assert stats["novelty"]["baseline_share"] is not None
    assert stats["novelty"]["share"] < 0.2
    assert set(stats["tag_mix"]) == {"locale", "prompt_id"}
    # No promotion and no eval yet: the configured model (none here) has no finished eval.
    assert report.eval_due and "no finished eval" in report.eval_reasons[0]


def test_new_topic_with_longer_inputs_is_flagged(trained: str, mock_server: Any) -> None:
    rng = random.Random(3)
    batch = [Call(shipment(rng)) for _ in range(60)] + [Call(ticket(rng)) for _ in range(20)]
    rng.shuffle(batch)
    report = report_for(trained, send(trained, mock_server.base_url, batch))
    data = report.as_dict()
    assert data["flagged"] == ["length", "words", "novelty"], data
    stats = data["statistics"]
    assert stats["length"]["recent"]["median"] > 1.5 * stats["length"]["training"]["median"]
    assert stats["length"]["p_value"] < 0.001
    assert set(stats["words"]["rising_words"]) <= set(SHIPPING) | {"dear", "logistics", "desk"}
    assert 0.65 <= stats["novelty"]["share"] <= 0.85 and stats["novelty"]["baseline_share"] < 0.2
    assert report.retrain_due and len(report.retrain_reasons) == 3
    assert report.eval_reasons[-1].startswith("drift is flagged (length, words, novelty)")


def test_model_and_tag_mix_shift_is_detected(trained: str, mock_server: Any) -> None:
    rng = random.Random(4)
    batch = [
        Call(ticket(rng), model="gpt-4o" if n % 2 else "gpt-4o-mini", locale="de" if n % 5 < 3 else "en")
        for n in range(80)
    ]
    report = report_for(trained, send(trained, mock_server.base_url, batch))
    data = report.as_dict()
    assert data["flagged"] == ["model_mix", "tag:locale"], data
    mix = data["statistics"]["model_mix"]
    assert mix["total_variation"] == pytest.approx(0.5) and mix["recent"] == {
        "gpt-4o": 0.5,
        "gpt-4o-mini": 0.5,
    }
    assert data["statistics"]["tag_mix"]["locale"]["total_variation"] == pytest.approx(0.6)
    assert not data["statistics"]["tag_mix"]["prompt_id"]["flagged"]
    assert not report.retrain_due  # the inputs did not change
    assert "drift is flagged (model_mix, tag:locale)" in report.eval_reasons[-1]


def test_quiet_window_judges_nothing_and_evaluated_model_needs_no_eval(
    trained: str, mock_server: Any
) -> None:
    rng = random.Random(6)
    window = send(trained, mock_server.base_url, [Call(shipment(rng)) for _ in range(12)])
    engine = sa.create_engine(trained)
    with engine.begin() as conn:
        export = conn.execute(sa.select(exports.c.id, exports.c.version, exports.c.dataset_id)).one()
        moment = datetime.now(UTC)
        conn.execute(
            sa.insert(promotions).values(
                pipeline="triage", model="ft:triage-1", action="promote", created_at=moment
            )
        )
        conn.execute(
            sa.insert(eval_runs).values(
                id="a" * 32,
                pipeline="triage",
                dataset_id=export.dataset_id,
                dataset_version=export.version,
                export_id=export.id,
                status="finished",
                candidates=orjson.dumps(
                    [{"name": "ft:triage-1", "model": "ft:triage-1", "few_shot": 0}]
                ).decode(),
                seed=1,
                settings="{}",
                examples=40,
                created_at=moment,
                updated_at=moment,
            )
        )
    engine.dispose()
    report = report_for(trained, window)
    data = report.as_dict()
    assert data["recent"]["calls"] == 12 and not data["enough_traffic"]
    assert data["statistics"]["length"] is None and data["flagged"] == []
    assert not report.retrain_due and "not enough recent traffic: 12 calls" in report.retrain_reasons[0]
    assert data["current_model"] == "ft:triage-1"
    assert not report.eval_due, report.eval_reasons
    # With a lower bar the same 12 shipments are judged, and the novelty shows.
    judged = report_for(trained, window, min_recent=10)
    assert "novelty" in judged.flagged and judged.eval_due


def test_without_export_the_dataset_is_the_training_data(db_url: str, mock_server: Any) -> None:
    upgrade(db_url)
    with pytest.raises(UsageError, match="no training data yet: its dataset 'triage' does not exist"):
        drift_report(db_url, PIPELINE)
    rng = random.Random(7)
    send(db_url, mock_server.base_url, [Call(ticket(rng)) for _ in range(60)])
    create_dataset(db_url, "triage", PIPELINE.filter)
    window = send(db_url, mock_server.base_url, [Call(ticket(rng)) for _ in range(50)])
    report = report_for(db_url, window)
    assert report.training_source == "dataset" and report.training_calls == 60
    assert report.recent_calls == 50 and report.flagged == []
    assert "has no export yet" in report.eval_reasons[0]
    # A sample smaller than the data is said to be one, and stays the same calls on every run.
    sampled = report_for(db_url, window, sample_limit=30, min_recent=20)
    assert sampled.training_sampled == 30 and sampled.recent_sampled == 30
    assert any("deterministic sample of 30 of 60" in note for note in sampled.notes)
    assert report_for(db_url, window, sample_limit=30, min_recent=20).as_dict() == sampled.as_dict()
    # Near-deduplicated training inputs have no near neighbours among themselves: no baseline then,
    # and recent inputs like them still find their neighbours.
    assert dedup_dataset(db_url, "triage").removed > 0
    deduplicated = report_for(db_url, window)
    assert deduplicated.training_calls < 60 and deduplicated.flagged == []
    assert deduplicated.novelty is not None and deduplicated.novelty.baseline_share is None
    assert deduplicated.novelty.share < 0.5 and not deduplicated.novelty.flagged
    assert any("judged without a baseline" in note for note in deduplicated.notes)


def test_cli_json_table_and_errors(trained: str, mock_server: Any, tmp_path: Path) -> None:
    rng = random.Random(8)
    send(trained, mock_server.base_url, [Call(shipment(rng)) for _ in range(60)])
    config = tmp_path / "flywheel.toml"
    config.write_text('[pipelines.triage]\nfilter = { tags = { prompt_id = "triage" }, status = "ok" }\n')
    assert load_config(config).pipeline("triage").filter == CallFilter(
        tags={"prompt_id": "triage"}, status="ok"
    )
    runner = CliRunner()
    base = ["--config", str(config), "--db", trained]
    out = runner.invoke(cli, ["drift", "triage", "--since", "1h", "--json", *base])
    assert out.exit_code == 0, out.output
    data = orjson.loads(out.output)
    assert data["pipeline"] == "triage" and data["recent"]["calls"] == 60
    assert data["flagged"] == ["length", "words", "novelty"] and data["retrain_due"] is True
    table = runner.invoke(cli, ["drift", "triage", *base])
    assert table.exit_code == 0, table.output
    assert "input length" in table.output and "DRIFT" in table.output
    assert "retrain due: yes" in table.output and "eval due: yes" in table.output
    # An hour from now there is no recent traffic at all (and a window that ends before it starts).
    future = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    quiet = runner.invoke(cli, ["drift", "triage", "--since", future, *base])
    assert quiet.exit_code == 2 and "the window is empty" in quiet.output
    unknown = runner.invoke(cli, ["drift", "triag", *base])
    assert unknown.exit_code == 2
    assert "no pipeline named 'triag' (did you mean 'triage'?)" in unknown.output
