"""flywheel dedup on a store: clusters, the kept entry as data grows, the split; SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import orjson
import pytest
from recorded_calls import T0, record_chats, scalar
from test_cli import json_lines, ok

from flywheel.datasets import create_dataset, get_dataset, update_dataset
from flywheel.dedup import dedup_dataset
from flywheel.errors import UsageError
from flywheel.export import export_dataset
from flywheel.query import CallFilter

SYSTEM = "You are the support assistant of Acme Parcel Services. Answer briefly and politely. " * 6
DISTINCT = [
    "My parcel AP1001 is stuck in customs since Monday, what documents do you need from me?",
    "Can I change the delivery address of AP2002 to my office in Lyon before it ships?",
    "The lamp inside parcel AP3003 arrived broken, I attached photos of the box and the lamp.",
    "Parcel AP4004 says delivered but nobody in my building in Porto received anything today.",
    "How much does it cost to send a 5 kg parcel from Berlin to Gdansk with express delivery?",
    "I want to return the chair from order AP6006, it is the wrong colour and still packed.",
    "Your driver left parcel AP7007 in the rain at my door and the books inside are soaked.",
    "Do you deliver on Sundays in Utrecht, and can I pick a two hour time window for it?",
    "I was charged twice for the shipment of AP9009, please refund the second payment to my card.",
    "The tracking page for AP1010 has not changed in ten days, is the parcel lost somewhere?",
    "Can you hold parcel AP1111 at the depot in Graz until I am back from holiday next week?",
    "The label on parcel AP1212 shows my old surname, will the courier still hand it to me?",
]
# A word or two changed: near-copies of the first three.
COPIES = [
    "My parcel AP1001 is stuck in customs since Tuesday, what documents do you need from me?",
    "Can I change the delivery address of AP2002 to my flat in Lyon before it ships?",
    "The vase inside parcel AP3003 arrived broken, I attached photos of the box and the vase.",
]


def make(db_url: str) -> None:
    record_chats(db_url, DISTINCT, system=SYSTEM, tags={"p": "s"})
    record_chats(
        db_url, [*COPIES, DISTINCT[3]], start=T0 + timedelta(hours=2), system=SYSTEM, tags={"p": "s"}
    )
    create_dataset(db_url, "support", CallFilter(tags={"p": "s"}))


def entry_of(db_url: str, prompt: str, *, after: bool = False) -> int:
    sql = (
        "SELECT e.id FROM dataset_entries e JOIN calls c ON c.id = e.call_id "
        "WHERE CAST(c.request AS TEXT) LIKE :p ORDER BY e.call_id "
        + ("DESC" if after else "ASC")
        + " LIMIT 1"
    )
    return int(scalar(db_url, sql, p=f"%{prompt[:40]}%"))


def test_paraphrases_cluster_and_distinct_prompts_do_not(db_url: str) -> None:
    make(db_url)
    result = dedup_dataset(db_url, "support")
    assert (result.entries, result.clusters, result.removed) == (16, 4, 4)
    assert (result.duplicates, result.near_duplicates) == (1, 3)
    assert result.version == 2
    info = get_dataset(db_url, "support")
    assert (info.entries, info.removed) == (12, 4)
    # The originals (oldest) are kept; the later copies are out, with a reason.
    kept = {entry_of(db_url, prompt) for prompt in DISTINCT[:4]}
    assert {c.kept for c in result.shown} == kept
    reasons = scalar(db_url, "SELECT count(*) FROM dataset_entries WHERE removed_reason = 'near_duplicate'")
    assert reasons == 3
    # Every member of a cluster has the kept entry's key, so they share a split side.
    assert (
        scalar(
            db_url, "SELECT count(DISTINCT cluster_key) FROM dataset_entries WHERE cluster_key IS NOT NULL"
        )
        == 4
    )


def test_an_exported_entry_is_not_replaced_by_a_later_near_copy(db_url: str, tmp_path: Path) -> None:
    record_chats(db_url, DISTINCT, system=SYSTEM, tags={"p": "s"})
    create_dataset(db_url, "support", CallFilter(tags={"p": "s"}))
    first = export_dataset(db_url, "support", tmp_path / "v1", min_examples=1)
    exported = set(first.manifest["splits"]["train"]) | set(first.manifest["splits"]["test"])
    record_chats(db_url, COPIES, start=T0 + timedelta(days=1), system=SYSTEM, tags={"p": "s"})
    update_dataset(db_url, "support")
    result = dedup_dataset(db_url, "support")
    assert result.removed == 3
    removed_calls = {
        row
        for row in [
            scalar(
                db_url,
                "SELECT c.id FROM dataset_entries e JOIN calls c ON c.id = e.call_id WHERE e.id = :e",
                e=e,
            )
            for c in result.shown
            for e in c.removed
        ]
    }
    assert removed_calls.isdisjoint(exported)  # the copies went, the exported entries stayed
    second = export_dataset(db_url, "support", tmp_path / "v2", min_examples=1)
    assert second.manifest["splits"] == first.manifest["splits"]  # nobody moved; the copies are not in


def test_exported_entries_that_turn_out_duplicates_both_stay(db_url: str, tmp_path: Path) -> None:
    record_chats(db_url, DISTINCT[:6] + COPIES[:1], system=SYSTEM, tags={"p": "s"})
    create_dataset(db_url, "support", CallFilter(tags={"p": "s"}))
    export_dataset(db_url, "support", tmp_path / "v1", min_examples=1)
    result = dedup_dataset(db_url, "support")
    assert (result.clusters, result.removed) == (1, 0)
    assert len(result.shown[0].also_kept) == 1


def test_dry_run_and_rerun(db_url: str) -> None:
    make(db_url)
    seen: list[tuple[int, int]] = []
    dry = dedup_dataset(db_url, "support", dry_run=True, progress=lambda *p: seen.append(p))
    assert dry.removed == 4 and dry.version is None and seen[-1] == (16, 16)
    assert get_dataset(db_url, "support").version == 1
    dedup_dataset(db_url, "support")
    again = dedup_dataset(db_url, "support")
    assert (again.removed, again.version) == (0, None)  # nothing left to do: no version


def test_sketching_in_worker_processes_finds_the_same_clusters(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    make(db_url)
    here = dedup_dataset(db_url, "support", dry_run=True)
    monkeypatch.setattr("flywheel.parallel.WORKERS_FROM", 0)
    monkeypatch.setattr("flywheel.near_duplicates._BATCH", 3)  # several batches in flight
    there = dedup_dataset(db_url, "support", workers=2)
    assert there.removed == here.removed == 4
    assert [cluster.as_dict() for cluster in there.shown] == [cluster.as_dict() for cluster in here.shown]


def test_threshold_and_exact_mode(db_url: str) -> None:
    make(db_url)
    exact = dedup_dataset(db_url, "support", exact=True, dry_run=True)
    assert exact.removed == 1
    assert "AP4004" in exact.shown[0].preview  # the kept entry's input, read for the clusters shown
    assert dedup_dataset(db_url, "support", threshold=0.95, dry_run=True).removed == 1
    with pytest.raises(UsageError, match="threshold"):
        dedup_dataset(db_url, "support", threshold=0)


def test_split_after_dedup_keeps_clusters_together(db_url: str, tmp_path: Path) -> None:
    make(db_url)
    dedup_dataset(db_url, "support")
    result = export_dataset(db_url, "support", tmp_path / "out", test_fraction=0.5, min_examples=1)
    assert result.counts["train"] + result.counts["test"] == 12


def test_dedup_command(db_url: str) -> None:
    make(db_url)
    shown = ok("dedup", "support", "--dry-run", "--db", db_url).stdout
    assert (
        "16 entries, 4 clusters of near-duplicates (threshold 0.5). Would take out 4 (1 exact, 3 near)."
        in shown
    )
    assert "keep" in shown and "customs" in shown
    (done,) = json_lines(ok("dedup", "support", "--json", "--db", db_url))
    assert (done["removed"], done["version"]) == (4, 2)
    assert orjson.loads(orjson.dumps(done))["largest_clusters"]


def test_an_earlier_version_is_exported_again_file_for_file(db_url: str, tmp_path: Path) -> None:
    make(db_url)
    dedup_dataset(db_url, "support")
    newest = export_dataset(db_url, "support", tmp_path / "v2", min_examples=1)
    assert newest.counts["train"] + newest.counts["test"] == 12
    first = export_dataset(db_url, "support", tmp_path / "v1", min_examples=1, version=1)
    assert first.manifest["dataset_version"] == 1
    assert first.counts["train"] + first.counts["test"] == 16  # before dedup took the copies out
    record_chats(db_url, ["a later call"], start=T0 + timedelta(days=9), system=SYSTEM, tags={"p": "s"})
    update_dataset(db_url, "support")
    for version, earlier in ((1, first), (2, newest)):
        again = export_dataset(
            db_url, "support", tmp_path / f"again{version}", min_examples=1, version=version
        )
        assert again.manifest["files"] == earlier.manifest["files"]
        assert again.manifest["splits"] == earlier.manifest["splits"]
    with pytest.raises(UsageError, match="versions 1 to 3"):
        export_dataset(db_url, "support", tmp_path / "x", version=4)
