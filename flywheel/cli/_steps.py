"""``flywheel dedup``, ``relabel``, ``review export|import`` and ``export``: the steps from a dataset
to training files."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import click
import orjson

from ..dedup import dedup_dataset
from ..errors import UsageError
from ..export import export_dataset
from ..finetune_format import TrainOn
from ..near_duplicates import DEFAULT_THRESHOLD
from ..relabel import (
    DEFAULT_CONCURRENCY,
    DEFAULT_MAX_RETRIES,
    DEFAULT_TIMEOUT_S,
    RelabelProgress,
    relabel_dataset,
)
from ..review import ReviewFileError, ReviewSelection, export_review, import_review
from ..validate import MIN_EXAMPLES
from ._base import (
    FlywheelGroup,
    _cut,
    _db,
    _print_json_lines,
    _progress_bar,
    _usd,
    cli,
    db_option,
    json_option,
    workers_option,
)


@cli.command("dedup")
@click.argument("name")
@db_option
@click.option(
    "--threshold",
    type=click.FloatRange(0.0, 1.0, min_open=True),
    default=DEFAULT_THRESHOLD,
    show_default=True,
    metavar="J",
    help="Similarity (estimated Jaccard of word pairs, shared boilerplate left out) from which two "
    "inputs are near-duplicates; the default takes templated prompts a word or two apart as copies.",
)
@click.option("--exact", is_flag=True, help="Only exact duplicates (the same input hash).")
@click.option("--dry-run", is_flag=True, help="Show the clusters; change nothing.")
@click.option(
    "--show", type=click.IntRange(min=0), default=10, show_default=True, metavar="N", help="Clusters to list."
)
@workers_option("sketch the inputs")
@json_option
def dedup_command(
    db_url: str | None,
    name: str,
    threshold: float,
    exact: bool,
    dry_run: bool,
    show: int,
    workers: int,
    as_json: bool,
) -> None:
    """Keep one entry per cluster of (near-)duplicate inputs in dataset NAME; list the clusters.

    The kept entry is the first exported one, else the oldest; the others are taken out of the
    dataset (never deleted; entries already exported always stay). Stable as data grows: a later
    near-copy never replaces an entry that was exported.
    """
    with _progress_bar("reading entries", quiet=as_json) as progress:
        result = dedup_dataset(
            _db(db_url),
            name,
            threshold=threshold,
            exact=exact,
            dry_run=dry_run,
            show=show,
            workers=workers,
            progress=progress,
        )
    if as_json:
        _print_json_lines([result.as_dict()])
        return
    kind = "exact duplicates" if exact else f"near-duplicates (threshold {threshold})"
    verb = "Would take out" if dry_run else "Took out"
    click.echo(
        f"{name}: {result.entries:,} entries, {result.clusters:,} clusters of {kind}. {verb} "
        f"{result.removed:,} ({result.duplicates:,} exact, {result.near_duplicates:,} near)"
        + ("" if dry_run or result.version is None else f"; version {result.version}")
        + "."
    )
    for cluster in result.shown:
        size = 1 + len(cluster.removed) + len(cluster.also_kept)
        click.echo(f"  {size:>5} entries, keep {cluster.kept}: {_cut(cluster.preview, 80)}")


@cli.command("relabel")
@click.argument("name")
@click.option("--model", required=True, metavar="TEACHER", help="The teacher model that answers again.")
@click.option(
    "--base-url",
    metavar="URL",
    help="The teacher's OpenAI-compatible API (default: $OPENAI_BASE_URL, else OpenAI's).",
)
@db_option
@click.option(
    "--concurrency",
    type=click.IntRange(min=1),
    default=DEFAULT_CONCURRENCY,
    show_default=True,
    metavar="N",
    help="Requests in flight at once.",
)
@click.option(
    "--max-retries",
    type=click.IntRange(min=0),
    default=DEFAULT_MAX_RETRIES,
    show_default=True,
    metavar="N",
    help="Retries per entry on 429, 5xx and connection errors (with backoff).",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=DEFAULT_TIMEOUT_S,
    show_default=True,
    metavar="S",
    help="Seconds per request.",
)
@click.option("--limit", type=click.IntRange(min=1), metavar="N", help="Relabel at most N entries this run.")
@click.option("--temperature", type=float, metavar="T", help="Sampling temperature for the teacher.")
@click.option(
    "--param",
    "params",
    multiple=True,
    metavar="KEY=JSON",
    help="Set a request field for the teacher (JSON value; null removes it), e.g. max_tokens=512.",
)
@json_option
def relabel_command(
    db_url: str | None,
    name: str,
    model: str,
    base_url: str | None,
    concurrency: int,
    max_retries: int,
    timeout: float,
    limit: int | None,
    temperature: float | None,
    params: tuple[str, ...],
    as_json: bool,
) -> None:
    """Ask a teacher model to answer each entry of dataset NAME again; the answers become its outputs.

    The API key is $OPENAI_API_KEY. Every teacher call is recorded (tagged flywheel_relabel=NAME).
    Resumable: after a crash or Ctrl-C, the same command continues where it stopped; entries the
    teacher already answered, and entries a person edited, are not asked again.
    """

    def report(done: RelabelProgress) -> None:
        if not as_json:
            click.echo(f"relabeled {done.relabeled:,}/{done.total:,}, failed {done.failed:,}", err=True)

    try:
        result = relabel_dataset(
            _db(db_url),
            name,
            model=model,
            base_url=base_url,
            concurrency=concurrency,
            max_retries=max_retries,
            timeout=timeout,
            limit=limit,
            temperature=temperature,
            params=_json_params(params),
            progress=report,
        )
    except KeyboardInterrupt:
        click.echo("flywheel: interrupted; run the same command again to continue", err=True)
        sys.exit(130)
    if as_json:
        _print_json_lines([result.as_dict()])
        return
    version = "no new version" if result.version is None else f"version {result.version}"
    click.echo(
        f"Relabeled {result.relabeled:,} entries of {name} with {model} ({version}); "
        f"{result.skipped:,} already done, {result.kept_human:,} edited by a person kept, "
        f"{result.failed:,} failed; {result.teacher_calls:,} teacher calls, cost {_usd(result.cost_usd)}"
    )
    for failure in result.failures[:20]:
        click.echo(f"  entry {failure.entry_id} (call {failure.call_id}): {failure.reason}")
    if result.failed:
        click.echo("Run the same command again to retry the failed entries.")


def _json_params(params: Sequence[str]) -> dict[str, Any]:
    parsed: dict[str, Any] = {}
    for text in params:
        key, sep, value = text.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"invalid parameter {text!r}: expected KEY=JSON, e.g. max_tokens=512", "--param")
        try:
            parsed[key.strip()] = orjson.loads(value)
        except orjson.JSONDecodeError:
            raise UsageError(f"the value of {key!r} is not JSON: {value!r}", "--param") from None
    return parsed


@cli.group("review", cls=FlywheelGroup)
def review_group() -> None:
    """Review and edit a dataset's outputs by hand: export a JSONL file, edit it, import it back."""


@review_group.command("export")
@click.argument("name")
@click.option(
    "--out", "out_path", required=True, type=click.Path(dir_okay=False), metavar="FILE", help="File to write."
)
@click.option(
    "--only",
    type=click.Choice(["all", "original", "relabeled", "human", "unreviewed"]),
    default="all",
    show_default=True,
    help="Which entries: by where their output comes from, or those no person has edited yet.",
)
@click.option("--limit", type=click.IntRange(min=1), metavar="N", help="At most N entries.")
@db_option
@json_option
def review_export_command(
    db_url: str | None, name: str, out_path: str, only: ReviewSelection, limit: int | None, as_json: bool
) -> None:
    """Write dataset NAME's entries to FILE, one JSON object per line, for a person to edit.

    On each line, edit "output" (the assistant message), set "drop": true to take the entry out,
    or add a "note"; everything else is context. Then run 'flywheel review import NAME FILE'.
    """
    result = export_review(_db(db_url), name, out_path, only=only, limit=limit)
    if as_json:
        _print_json_lines([result.as_dict()])
        return
    sources = ", ".join(f"{count:,} {source}" for source, count in result.by_source.items())
    click.echo(
        f"Wrote {result.entries:,} entries of {name} (version {result.version}) to {result.path}"
        + (f": {sources}" if sources else "")
    )


@review_group.command("import")
@click.argument("name")
@click.argument("path", metavar="FILE", type=click.Path(exists=True, dir_okay=False))
@click.option("--dry-run", is_flag=True, help="Check the file and count the changes; import nothing.")
@db_option
@json_option
def review_import_command(db_url: str | None, name: str, path: str, dry_run: bool, as_json: bool) -> None:
    """Import the edits in FILE (from 'flywheel review export') into dataset NAME, all or nothing.

    Every line is checked first; if one is wrong, nothing is imported and each problem is named by
    line and field. Edits become the entries' outputs (kept with their provenance), drops take
    entries out; both make one new dataset version.
    """
    try:
        result = import_review(_db(db_url), name, path, dry_run=dry_run)
    except ReviewFileError as error:
        if as_json:
            _print_json_lines([issue.as_dict() for issue in error.issues])
        raise
    if as_json:
        _print_json_lines([result.as_dict()])
        return
    counts = (
        f"{result.edited:,} edited, {result.dropped:,} dropped, {result.untouched:,} untouched, "
        f"{result.unchanged:,} already current"
    )
    if dry_run:
        click.echo(f"Would import into {name}: {counts}")
    elif result.version is None:
        click.echo(f"Nothing to import into {name}: {counts}")
    else:
        click.echo(f"Dataset {name} version {result.version}: {counts}")


@cli.command("export")
@click.argument("name")
@click.option(
    "--out",
    "out_dir",
    required=True,
    type=click.Path(file_okay=False),
    metavar="DIR",
    help="Directory to write.",
)
@db_option
@click.option(
    "--test-fraction",
    type=click.FloatRange(0.0, 1.0),
    metavar="F",
    help="Share of entries held out for test (default: the dataset's rule, at first 0.1).",
)
@click.option("--stratify-by", metavar="TAG", help="Give each value of this tag the test fraction.")
@click.option("--salt", metavar="TEXT", help="Another salt gives another (independent) split.")
@click.option(
    "--train-on",
    type=click.Choice(["all", "last"]),
    default="all",
    show_default=True,
    help="Train on every assistant message, or only on the output (weight 0 on earlier turns).",
)
@click.option(
    "--base-model", metavar="MODEL", help="Check token counts against this model's limit per example."
)
@click.option("--token-limit", type=click.IntRange(min=1), metavar="N", help="Token limit per example.")
@click.option(
    "--min-examples",
    type=click.IntRange(min=0),
    default=MIN_EXAMPLES,
    show_default=True,
    metavar="N",
    help="Fewest training examples accepted.",
)
@click.option(
    "--skip-invalid", is_flag=True, help="Leave out entries that fail validation (listed in the manifest)."
)
@click.option(
    "--version",
    "dataset_version",
    type=click.IntRange(min=1),
    metavar="N",
    help="Export the dataset as it was at version N (rebuilds an earlier export). Default: the newest.",
)
@workers_option("convert and check entries")
@click.option("--dry-run", is_flag=True, help="Validate and count; write nothing.")
@json_option
def export_command(
    db_url: str | None,
    name: str,
    out_dir: str,
    test_fraction: float | None,
    stratify_by: str | None,
    salt: str | None,
    train_on: TrainOn,
    base_model: str | None,
    token_limit: int | None,
    min_examples: int,
    skip_invalid: bool,
    dataset_version: int | None,
    workers: int,
    dry_run: bool,
    as_json: bool,
) -> None:
    """Write dataset NAME as DIR/train.jsonl, DIR/test.jsonl and DIR/manifest.json.

    Lines are in OpenAI's chat fine-tuning format; entries with a relabeled or edited output also
    go to preference_train.jsonl / preference_test.jsonl (DPO). Every line is validated first:
    nothing is written if one fails (unless --skip-invalid). The split is stable: exporting again
    after the dataset grew keeps every entry on its side.
    """
    with _progress_bar("exporting", quiet=as_json) as progress:
        result = export_dataset(
            _db(db_url),
            name,
            out_dir,
            test_fraction=test_fraction,
            stratify_by=stratify_by,
            salt=salt,
            train_on=train_on,
            base_model=base_model,
            token_limit=token_limit,
            min_examples=min_examples,
            skip_invalid=skip_invalid,
            dry_run=dry_run,
            version=dataset_version,
            workers=workers,
            progress=progress,
        )
    if as_json:
        _print_json_lines([result.as_dict()])
        return
    counts = result.counts
    done = "Would write" if dry_run else "Wrote"
    click.echo(
        f"{done} {counts['train']:,} train and {counts['test']:,} test examples of {name} "
        f"(version {result.manifest['dataset_version']}) to {result.out_dir}"
    )
    if counts["preference_train"] or counts["preference_test"]:
        click.echo(
            f"  preference pairs: {counts['preference_train']:,} train, {counts['preference_test']:,} test"
        )
    if counts["skipped"]:
        click.echo(f"  skipped {counts['skipped']:,} entries (listed in manifest.json)")
    for note in result.manifest.get("notes", []):
        click.echo(f"  note: {note}")
