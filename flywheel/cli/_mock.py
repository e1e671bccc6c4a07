"""``flywheel mock-server``."""

from __future__ import annotations

import sys

import click

from ._base import (
    cli,
)


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
def mock_server_command(host: str, port: int, latency_ms: float, error_rate: float) -> None:
    """Serve an OpenAI-compatible API for offline demos and tests (Ctrl+C stops it).

    Chat completions (streamed or not, tools, structured outputs), Responses, Completions,
    embeddings, models, files and fine-tuning jobs, with deterministic answers. Requests can ask
    for faults with x-mock-* headers (x-mock-status, x-mock-latency-ms, x-mock-fail-attempts).
    """
    from ..mock_server import serve  # starlette and uvicorn are only needed here

    shown_host = f"[{host}]" if ":" in host else host
    base_url = f"http://{shown_host}:{port}/v1"
    click.echo(f"Mock OpenAI API on {base_url}")
    click.echo(f"Point a client at it:  OPENAI_BASE_URL={base_url} OPENAI_API_KEY=mock python app.py")
    sys.stdout.flush()
    serve(host=host, port=port, latency_ms=latency_ms, error_rate=error_rate)
