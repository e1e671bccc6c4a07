"""``flywheel eval report NAME``: a run's numbers, computed from what the store holds.

Nothing in a report is stored: metrics are computed from the run's outputs and the export's
references each time (so a fixed scorer or normalization applies to old runs too), the judge's
numbers from ``eval_judgments``, cost and latency from the run's recorded calls (tag
``flywheel_eval=<run id>``, one candidate each by ``flywheel_candidate``). The object's shape is the
public contract in DESIGN.md ("Evaluation contract") and docs/evaluation.md.

Cost: every recorded attempt of a candidate's calls is paid for, so ``cost_per_1k_usd`` is their
total cost over the examples answered, times 1,000; ``null`` when any call's model is missing from
the price table (a partial sum would flatter it). Latency: answered calls only (p50/p95, linear
interpolation). Break-even: a fine-tuned candidate's training cost (the job's billed tokens at the
training price, else its estimate) over what each request saves against the model it would
replace (the pipeline's current model when that ran, else the first plain candidate).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, overload

import orjson
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from sdk import _config
from sdk._pricing import PriceTable
from sdk.schema import call_tags, calls, eval_runs, fine_tune_jobs

from ..datasets import EVAL_TAG
from ..errors import UsageError
from ..query import connect
from ..stats import percentile
from ..train.config import Pipeline
from .asking import TAG_CANDIDATE, stored_outputs
from .candidates import Candidate
from .examples import Example, examples_of, export_by_id
from .judge import Judgment, judge_summaries, judgments_of
from .metrics import METRIC_GROUPS, ExampleScores, aggregate, message_text, per_example_score, score_example
from .promote import current_model
from .scorers import load_scorers, score_with

__all__ = ["WORST_SHOWN", "eval_report", "find_run"]

WORST_SHOWN = 10
TEXT_SHOWN = 600
SMALL_SPLIT = 30
"""Below this many examples, the report warns that the intervals are wide."""


def find_run(conn: Connection, pipeline: str, run_id: str | None = None) -> sa.Row[Any]:
    """The run ``run_id`` of ``pipeline``, or its newest; ``UsageError`` when there is none."""
    r = eval_runs.c
    query = sa.select(eval_runs).where(r.pipeline == pipeline)
    if run_id is not None:
        query = query.where(r.id == run_id)
    row = conn.execute(query.order_by(r.created_at.desc(), r.id).limit(1)).one_or_none()
    if row is None:
        if run_id is not None:
            raise UsageError(f"no eval run {run_id!r} for pipeline {pipeline!r}", "--run")
        raise UsageError(
            f"pipeline {pipeline!r} has no eval run yet (run `flywheel eval {pipeline} --models ...`)",
            pipeline,
        )
    return row


def eval_report(database_url: str, pipeline: Pipeline, *, run_id: str | None = None) -> dict[str, Any]:
    """The report object of ``pipeline``'s newest eval run (or ``run_id``)."""
    scorers = load_scorers(pipeline.eval.scorers, where=f"pipelines.{pipeline.name}.eval.scorers")
    with connect(database_url) as conn:
        run = find_run(conn, pipeline.name, run_id)
        split = export_by_id(conn, run.export_id)
        examples = list(examples_of(conn, split))
        candidates = [Candidate.from_dict(item) for item in orjson.loads(run.candidates)]
        outputs = _outputs(conn, run.id)
        spend = _spend(conn, run.id)
        judged = judgments_of(conn, run.id)
        jobs = _jobs(conn, [c.model for c in candidates if c.fine_tuned])
        replaced = current_model(conn, pipeline)
    warnings: list[str] = []
    scored: dict[str, dict[str, ExampleScores]] = {}
    models = []
    for candidate in candidates:
        answers = outputs.get(candidate.name, {})
        per_example = {
            example.call_id: _scores(answers[example.call_id], example, scorers)
            for example in examples
            if example.call_id in answers
        }
        scored[candidate.name] = per_example
        summary = aggregate(list(per_example.values()))
        errors = sum(1 for output in answers.values() if output is None)
        models.append(
            {
                "model": candidate.name,
                "base_model": candidate.model,
                "few_shot": candidate.few_shot,
                "fine_tuned": candidate.fine_tuned,
                "n": len(per_example),
                "errors": errors,
                **summary.as_dict(),
                **spend.get(candidate.name, _Spend()).as_dict(len(per_example) - errors),
            }
        )
        if len(per_example) < len(examples):
            warnings.append(f"{candidate.name}: {len(examples) - len(per_example)} examples not answered yet")
        if errors:
            warnings.append(f"{candidate.name}: {errors} requests rejected by the API (scored as wrong)")
    _add_judge(models, judged, run.seed, warnings)
    _add_training(models, candidates, jobs, replaced)
    if len(examples) < SMALL_SPLIT:
        warnings.append(f"only {len(examples)} test examples: the intervals are wide")
    if run.status != "finished":
        warnings.append(f"the run is {run.status}: run `flywheel eval` again to finish it")
    return {
        "pipeline": pipeline.name,
        "run_id": run.id,
        "status": run.status,
        "created_at": run.created_at.isoformat(),
        "dataset": split.dataset,
        "dataset_version": split.dataset_version,
        "examples": len(examples),
        "seed": run.seed,
        "judge": _judge_header(run, judged),
        "models": models,
        "metric_groups": {group: list(names) for group, names in METRIC_GROUPS.items()},
        "worst": _worst(examples, outputs, scored),
        "warnings": warnings,
    }


# --- reading ----------------------------------------------------------------------------------


def _outputs(conn: Connection, run_id: str) -> dict[str, dict[str, dict[str, Any] | None]]:
    """candidate -> example call id -> its stored answer."""
    found: dict[str, dict[str, dict[str, Any] | None]] = {}
    for (candidate, call_id), output in stored_outputs(conn, run_id).items():
        found.setdefault(candidate, {})[call_id] = output
    return found


def _scores(output: dict[str, Any] | None, example: Example, scorers: Sequence[Any]) -> ExampleScores:
    scores = score_example(output, example.reference)
    if scorers:
        scores = scores.with_metrics(score_with(scorers, output, example.reference, example.as_dict()))
    return scores


@dataclass(slots=True)
class _Spend:
    """A candidate's recorded calls: cost, tokens and the latencies of the answered ones."""

    cost: float = 0.0
    unpriced: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latencies: list[float] | None = None

    def as_dict(self, answered: int) -> dict[str, Any]:
        latencies = sorted(self.latencies or [])
        per_1k = 1000 / answered if answered else None
        return {
            "cost_per_1k_usd": _round(self.cost * per_1k) if per_1k and not self.unpriced else None,
            "prompt_tokens_per_1k": _round(self.prompt_tokens * per_1k) if per_1k else None,
            "completion_tokens_per_1k": _round(self.completion_tokens * per_1k) if per_1k else None,
            "latency_p50_ms": _round(percentile(latencies, 0.5)),
            "latency_p95_ms": _round(percentile(latencies, 0.95)),
            "latencies_ms": [_round(value) for value in latencies],
        }


def _spend(conn: Connection, run_id: str) -> dict[str, _Spend]:
    run_tag, candidate_tag, c = call_tags.alias("r"), call_tags.alias("c"), calls.c
    rows = conn.execute(
        sa.select(candidate_tag.c.value, c.status_code, c.cost_usd, c.prompt_tokens, c.completion_tokens,
                  c.latency_ms)
        .select_from(
            run_tag.join(candidate_tag, candidate_tag.c.call_id == run_tag.c.call_id).join(
                calls, c.id == run_tag.c.call_id
            )
        )
        .where(run_tag.c.key == EVAL_TAG, run_tag.c.value == run_id, candidate_tag.c.key == TAG_CANDIDATE)
    )  # fmt: skip
    spent: dict[str, _Spend] = {}
    for candidate, status, cost, prompt, completion, latency in rows:
        entry = spent.setdefault(candidate, _Spend(latencies=[]))
        if cost is None:
            entry.unpriced += status is not None
        else:
            entry.cost += cost
        entry.prompt_tokens += prompt or 0
        entry.completion_tokens += completion or 0
        if status is not None and 200 <= status < 300 and latency is not None and entry.latencies is not None:
            entry.latencies.append(float(latency))
    return spent


def _jobs(conn: Connection, models: Sequence[str]) -> dict[str, sa.Row[Any]]:
    if not models:
        return {}
    j = fine_tune_jobs.c
    rows = conn.execute(
        sa.select(fine_tune_jobs).where(j.fine_tuned_model.in_(list(models))).order_by(j.id)
    ).all()
    return {row.fine_tuned_model: row for row in rows}


# --- assembling ---------------------------------------------------------------------------------


def _judge_header(run: sa.Row[Any], judged: Sequence[Judgment]) -> dict[str, Any] | None:
    if run.judge is None:
        return None
    opponents = sorted({row.opponent for row in judged})
    both = {row.call_id for row in judged if row.shown_first == "opponent"} & {
        row.call_id for row in judged if row.shown_first == "candidate"
    }
    return {"model": run.judge, "opponent": ", ".join(opponents) or None, "bias_sample": len(both)}


def _add_judge(
    models: list[dict[str, Any]], judged: Sequence[Judgment], seed: int, warnings: list[str]
) -> None:
    summaries = judge_summaries(judged, seed)
    for model in models:
        for (candidate, _opponent), summary in summaries.items():
            if candidate == model["model"]:
                model["judge"] = summary.as_dict()
                if summary.warning:
                    warnings.append(summary.warning)


def _add_training(
    models: list[dict[str, Any]],
    candidates: Sequence[Candidate],
    jobs: Mapping[str, Any],
    replaced: str | None,
) -> None:
    by_name = {model["model"]: model for model in models}
    prices = PriceTable.load(_config.price_files())
    for candidate in candidates:
        job = jobs.get(candidate.model)
        model = by_name[candidate.name]
        model["training"] = None
        if not candidate.fine_tuned or job is None:
            continue
        price = prices.training_price(job.base_model)
        training_cost = (
            job.trained_tokens * price / 1_000_000
            if job.trained_tokens is not None and price is not None
            else job.estimated_cost_usd
        )
        plain = (by_name[c.name] for c in candidates if not c.fine_tuned and not c.few_shot)
        compared = by_name.get(replaced or "") if replaced != candidate.name else None
        compared = compared or next(plain, None)
        saving = None
        if (
            compared is not None
            and compared["cost_per_1k_usd"] is not None
            and model["cost_per_1k_usd"] is not None
        ):
            saving = _round(compared["cost_per_1k_usd"] - model["cost_per_1k_usd"])
        break_even = None
        if saving is not None and saving > 0 and training_cost is not None:
            break_even = math.ceil(training_cost / (saving / 1000))
        model["training"] = {
            "job_id": job.id,
            "training_cost_usd": None if training_cost is None else _round(training_cost),
            "compared_with": None if compared is None else compared["model"],
            "saving_per_1k_usd": saving,
            "break_even_requests": break_even,
        }


def _worst(
    examples: Sequence[Example],
    outputs: Mapping[str, Mapping[str, dict[str, Any] | None]],
    scored: Mapping[str, Mapping[str, ExampleScores]],
) -> list[dict[str, Any]]:
    """The examples the candidates did worst on (lowest mean score; only those someone got wrong)."""
    ranked = []
    for index, example in enumerate(examples):
        scores = {
            name: per_example_score(s[example.call_id]) for name, s in scored.items() if example.call_id in s
        }
        if scores and min(scores.values()) < 1:
            ranked.append((sum(scores.values()) / len(scores), index, example, scores))
    ranked.sort(key=lambda item: (item[0], item[1]))
    return [
        {
            "call_id": example.call_id,
            "input": _clip(_last_user_text(example)),
            "reference": _clip(message_text(example.reference)),
            "outputs": {
                name: _clip(message_text(found[example.call_id]))
                for name, found in outputs.items()
                if example.call_id in found
            },
            "scores": {name: _round(value) for name, value in scores.items()},
        }
        for _, _, example, scores in ranked[:WORST_SHOWN]
    ]


def _last_user_text(example: Example) -> str:
    for message in reversed(example.messages):
        if message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, str):
                return content
            if isinstance(content, list):
                return " ".join(str(part.get("text", "")) for part in content if isinstance(part, Mapping))
    return ""


def _clip(text: str) -> str:
    return text if len(text) <= TEXT_SHOWN else text[: TEXT_SHOWN - 1] + "…"


@overload
def _round(value: float) -> float: ...
@overload
def _round(value: None) -> None: ...
def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 6)
