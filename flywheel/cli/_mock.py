"""``flywheel mock-server``."""

from __future__ import annotations

import sys

import click

from ._base import (
    cli,
)


def _phase_seconds(ctx: click.Context, param: click.Parameter, value: str) -> tuple[float, float, float]:
    """``VALIDATING,QUEUED,RUNNING`` as three non-negative numbers of seconds."""
    parts = value.split(",")
    try:
        seconds = tuple(float(part) for part in parts)
    except ValueError:
        seconds = ()
    if len(seconds) != 3 or not all(0 <= s < float("inf") for s in seconds):
        raise click.BadParameter(f"expected three numbers of seconds >= 0 like 1,1,3, got {value!r}")
    return seconds[0], seconds[1], seconds[2]


@cli.command("mock-server")
@click.option(
    "--host", default="127.0.0.1", show_default=True, metavar="HOST", help="Interface to listen on."
)
@click.option(
    "--port",
    type=click.IntRange(1, 65535),
    default=8000,
    show_default=True,
    metavar="PORT",
    help="Port to listen on.",
)
@click.option(
    "--latency-ms",
    type=click.FloatRange(min=0),
    default=0,
    show_default=True,
    metavar="N",
    help="Wait N milliseconds before every answer.",
)
@click.option(
    "--error-rate",
    type=click.FloatRange(0.0, 1.0),
    default=0.0,
    show_default=True,
    metavar="F",
    help="Fraction of requests answered with a 500 error (0 to 1).",
)
@click.option(
    "--fine-tune-seconds",
    default="1,1,3",
    show_default=True,
    metavar="V,Q,R",
    callback=_phase_seconds,
    help="Seconds a fine-tuning job spends validating files, queued and running.",
)
@click.option(
    "--fine-tune-create-delay",
    type=click.FloatRange(min=0),
    default=0.0,
    show_default=True,
    metavar="SEC",
    help="Hold the answer to a job create SEC seconds after the job exists (for crash tests).",
)
@click.option(
    "--fine-tune-create-hold",
    type=click.FloatRange(min=0),
    default=0.0,
    show_default=True,
    metavar="SEC",
    help="Hold a job create SEC seconds before making the job; a client gone by then makes none.",
)
def mock_server_command(
    host: str,
    port: int,
    latency_ms: float,
    error_rate: float,
    fine_tune_seconds: tuple[float, float, float],
    fine_tune_create_delay: float,
    fine_tune_create_hold: float,
) -> None:
    """Serve an OpenAI-compatible API for offline demos and tests (Ctrl+C stops it).

    Chat completions (streamed or not, tools, structured outputs), Responses, Completions,
    embeddings, models, files and fine-tuning jobs, with deterministic answers. Requests can ask
    for faults with x-mock-* headers (x-mock-status, x-mock-latency-ms, x-mock-fail-attempts).

    Fine-tuning jobs go through OpenAI's states on the clock (no training happens); the model a
    job produces answers with the reply of its most similar training example.
    """
    from ..mock_server import FineTuneTiming, serve  # starlette and uvicorn are only needed here

    validating, queued, running = fine_tune_seconds
    timing = FineTuneTiming(
        validating,
        queued,
        running,
        create_answer_delay_s=fine_tune_create_delay,
        create_hold_s=fine_tune_create_hold,
    )
    shown_host = f"[{host}]" if ":" in host else host
    base_url = f"http://{shown_host}:{port}/v1"
    click.echo(f"Mock OpenAI API on {base_url}")
    click.echo(f"Point a client at it:  OPENAI_BASE_URL={base_url} OPENAI_API_KEY=mock python app.py")
    sys.stdout.flush()
    serve(host=host, port=port, latency_ms=latency_ms, error_rate=error_rate, fine_tune=timing)
