"""``flywheel promote NAME MODEL`` / ``--rollback`` / ``--history``: a pipeline's current model."""

from __future__ import annotations

import click

from ..evaluate.promote import promote, promotion_history, rollback
from ..train.config import load_config
from ._base import _db, _print_json, cli, db_option
from ._config import config_option


@cli.command("promote")
@click.argument("name")
@click.argument("model", required=False)
@click.option("--rollback", "roll_back", is_flag=True, help="Return to the model before the current one.")
@click.option("--reason", metavar="TEXT", help="Why (kept in the history).")
@click.option("--history", is_flag=True, help="Show the pipeline's model history instead.")
@config_option
@db_option
@click.option(
    "--json", "as_json", is_flag=True, help="Print the change (with --history: the list of changes) as JSON."
)
def promote_command(
    name: str,
    model: str | None,
    roll_back: bool,
    reason: str | None,
    history: bool,
    config_path: str | None,
    db_url: str | None,
    as_json: bool,
) -> None:
    """Make MODEL the current model of pipeline NAME: what model="flywheel:NAME" calls reach.

    Running apps pick the change up within their refresh interval (FLYWHEEL_ROUTE_REFRESH), no deploy.
    """
    pipeline = load_config(config_path).pipeline(name)
    url = _db(db_url)
    if history:
        rows = [item.as_dict() for item in promotion_history(url, name)]
        if as_json:
            _print_json(rows)
            return
        for row in rows:
            click.echo(f"{row['created_at']}  {row['action']:8}  {row['previous_model']} -> {row['model']}")
        return
    if roll_back == (model is not None):
        raise click.UsageError("give MODEL, or --rollback (not both)")
    change = (
        rollback(url, pipeline, reason=reason)
        if roll_back
        else promote(url, pipeline, str(model), reason=reason)
    )
    if as_json:
        _print_json(change.as_dict())
        return
    click.echo(f"{name}: {change.previous_model or '(none)'} -> {change.model} ({change.action})")
