"""The quickstart's last part: the eval, a promotion, and an app call through ``flywheel:NAME``.

After the training loop, on the same mock server and store, printed as it happens with the
``flywheel`` command each step equals: the pipeline's base model and the fine-tuned model answer
every example of the test split the export held out (``flywheel eval``); the report shows format
correctness and answer correctness with 95 % intervals, and cost and latency, side by side, and is
written as HTML too (``flywheel eval report --html``); the fine-tuned model is promoted when it
beats the base model on exact match (``flywheel promote``); and an app that names the pipeline
(``model="flywheel:triage"``) reaches the new model within the routes' refresh interval, waited
for honestly: the app keeps calling until its answer comes from the new model.

The numbers mean something because of the mock server's category rule (docs/mock-server.md): the
base model (a small one) reads only the category names and keeps the JSON format less well, while
the fine-tuned stand-in answers with the teacher's reply for the closest training ticket.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from openai.types.chat import ChatCompletion

import sdk
from sdk import _routing

from .errors import UsageError
from .evaluate.auto_promote import score_of
from .evaluate.promote import current_model, promote
from .evaluate.report import eval_report
from .evaluate.report_html import render_html
from .evaluate.report_text import render_text
from .evaluate.run import run_eval
from .logs import recent_calls
from .query import CallFilter, connect
from .quickstart_training import KEY_ENV, PIPELINE, temporary_env
from .train.config import Pipeline, load_config

__all__ = ["EvalTour", "run_eval_tour"]

EVAL_SEED = 10
ROUTE_REFRESH_S = 0.5
"""``FLYWHEEL_ROUTE_REFRESH`` for the tour (unless set): the switch shows within a second."""
ROUTE_POLL_S = 0.1
ROUTE_DEADLINE_S = 15.0
"""Longest wait for the switch (a route table this process made earlier may refresh every 5 s)."""
METRIC = "exact_match"
APP_TICKET = "Good evening, I never receive the reset link for our staging workspace."


@dataclass(frozen=True)
class EvalTour:
    """What the last part did."""

    run_id: str
    report: dict[str, Any]
    """The ``flywheel eval report --json`` object of the run."""
    html_path: Path
    promoted: bool
    """Whether this tour promoted the model (``False``: it already was the current one, or lost)."""
    routed_models: tuple[str, str]
    """The ``model`` of the app's ``flywheel:triage`` answers before and after the promotion."""
    routed_call: dict[str, Any] | None
    """The stored call of the app's last routed answer (``flywheel.logs.recent_calls`` shape)."""


def run_eval_tour(
    url: str,
    base_url: str,
    config_path: Path,
    fine_tuned_model: str,
    system: str,
    echo: Callable[[str], Any],
) -> EvalTour:
    """Evaluate, report, promote and route on ``url``'s store, the mock server at ``base_url``
    answering; ``system`` is the app's system prompt (its routed call asks a ticket with it)."""
    pipeline = load_config(config_path).pipeline(PIPELINE)
    if pipeline.train is None:
        raise UsageError(f"pipeline {PIPELINE!r} has no train table", str(config_path))
    base_model = pipeline.train.base_model
    run_id, report, html_path = _evaluate(url, pipeline, config_path, [base_model, fine_tuned_model], echo)
    by_name = {model["model"]: model for model in report["models"]}
    scores = score_of(by_name[fine_tuned_model], METRIC), score_of(by_name[base_model], METRIC)
    flag = f"--config {config_path}"
    with (
        _routing_settings(config_path, url),
        sdk.OpenAI(api_key="sk-quickstart", base_url=base_url, database_url=url) as client,
    ):
        echo("")
        echo(f'The app names the pipeline instead of a model: create(model="flywheel:{PIPELINE}", ...)')
        before = _ask_routed(client, system)
        echo(f"  {APP_TICKET!r} -> {before.model}: {_content(before)}")
        echo(f"$ flywheel promote {PIPELINE} {fine_tuned_model} {flag}")
        promoted = _promote(url, pipeline, fine_tuned_model, scores, base_model, run_id, echo)
        after = before
        if promoted or before.model == fine_tuned_model:
            after, calls, waited = _until_routed(client, system, fine_tuned_model)
            refresh = _routing.route_table(url).refresh_interval
            reached = "reach" if after.model == fine_tuned_model else "still do not reach"
            echo(
                f"  the running app's calls {reached} {fine_tuned_model} {waited:.1f} s later ({calls} "
                f"calls; the routes refresh every {refresh:g} s): {_content(after)}"
            )
    sdk.flush(timeout=60)
    stored = recent_calls(url, CallFilter(tags=((_routing.ROUTE_TAG, PIPELINE),)), limit=1)
    routed_call = stored[0] if stored else None
    if routed_call is not None:
        tag = _routing.ROUTE_TAG
        echo(
            f"  stored: call {routed_call['id']}, model {routed_call['model']}, "
            f"tag {tag}={routed_call['tags'].get(tag)}"
        )
    return EvalTour(run_id, report, html_path, promoted, (before.model, after.model), routed_call)


def _evaluate(
    url: str, pipeline: Pipeline, config_path: Path, models: list[str], echo: Callable[[str], Any]
) -> tuple[str, dict[str, Any], Path]:
    """``flywheel eval`` and ``flywheel eval report --html``: the run id, its report, the HTML file."""
    flag = f"--config {config_path}"
    echo("")
    echo("The eval: the base model against the fine-tuned one, on the test split the export held out")
    echo(f"$ flywheel eval {PIPELINE} --models {','.join(models)} --seed {EVAL_SEED} {flag}")
    with temporary_env(KEY_ENV, "sk-quickstart"):
        result = run_eval(url, pipeline, models, seed=EVAL_SEED)
    echo(
        f"  eval run {result.run_id}: {result.examples} test examples x {len(result.candidates)} models, "
        f"{result.answered} answered, {result.failed} to retry"
    )
    html_path = config_path.parent / "eval.html"
    echo(f"$ flywheel eval report {PIPELINE} --html {html_path} {flag}")
    report = eval_report(url, pipeline, run_id=result.run_id)
    html_path.write_text(render_html(report), encoding="utf-8")
    for line in render_text(report).splitlines():
        echo(f"  {line}".rstrip())
    echo(f"  HTML report: {html_path}")
    echo(
        f"  (on the mock server, {models[0]} reads only the category names and keeps the JSON format "
        "less well; the fine-tuned stand-in answers as the teacher did for the closest training ticket)"
    )
    return result.run_id, report, html_path


def _promote(
    url: str,
    pipeline: Pipeline,
    model: str,
    scores: tuple[float | None, float | None],
    base_model: str,
    run_id: str,
    echo: Callable[[str], Any],
) -> bool:
    """Promote ``model`` if it beat the base model on ``METRIC`` (``scores``: its, the base
    model's); whether it was promoted."""
    with connect(url) as conn:
        current = current_model(conn, pipeline)
    if current == model:
        echo(f"  {model} already is the current model of {pipeline.name}")
        return False
    score, base_score = scores
    if score is None or base_score is None or score <= base_score:
        echo(f"  not promoting: {METRIC} {_percent(score)} is no better than {_percent(base_score)}")
        return False
    reason = f"{METRIC} {_percent(score)} vs {_percent(base_score)} for {base_model}"
    done = promote(url, pipeline, model, reason=reason, eval_run_id=run_id)
    echo(f"  {pipeline.name}: {done.previous_model} -> {done.model} ({reason})")
    return True


@contextlib.contextmanager
def _routing_settings(config_path: Path, url: str) -> Iterator[None]:
    """The config the routes read base models from, a short refresh, and the refresher stopped after.

    The refresher thread is the SDK's, started by the first ``flywheel:`` call on store ``url``;
    stopping it is what the app's exit would do, and keeps the tour from leaving a thread behind
    that reads the store.
    """
    refresh = os.environ.get("FLYWHEEL_ROUTE_REFRESH") or str(ROUTE_REFRESH_S)
    with temporary_env("FLYWHEEL_CONFIG", str(config_path)), temporary_env("FLYWHEEL_ROUTE_REFRESH", refresh):
        try:
            yield
        finally:
            _routing.route_table(url).close(timeout=10)


def _ask_routed(client: sdk.OpenAI, system: str) -> ChatCompletion:
    reply: ChatCompletion = client.chat.completions.create(
        model=f"flywheel:{PIPELINE}",
        messages=[{"role": "system", "content": system}, {"role": "user", "content": APP_TICKET}],
        tags={"prompt_id": "quickstart-route"},  # type: ignore[call-overload]  # not a training call
    )
    return reply


def _until_routed(client: sdk.OpenAI, system: str, model: str) -> tuple[ChatCompletion, int, float]:
    """Call as a running app would until ``model`` answers (or the deadline): the last answer,
    the calls made, the seconds waited."""
    start = time.monotonic()
    calls = 0
    while True:
        reply = _ask_routed(client, system)
        calls += 1
        waited = time.monotonic() - start
        if reply.model == model or waited > ROUTE_DEADLINE_S:
            return reply, calls, waited
        time.sleep(ROUTE_POLL_S)


def _content(reply: ChatCompletion) -> str:
    return repr(reply.choices[0].message.content or "")


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.1f}%"
