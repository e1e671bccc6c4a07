"""The evaluation tables of a pipeline: ``[pipelines.NAME.eval]`` and ``[pipelines.NAME.promote]``.

``eval`` sets how ``flywheel eval`` runs (its options win); ``promote`` lets ``flywheel watch``
evaluate every succeeded job against the pipeline's current model and promote it when it wins by
the margin. Both are read by ``flywheel.evaluate``; they live beside the other tables so that one
file and one validation cover a pipeline.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, Field, field_validator

from .config_steps import MODEL_CONFIG

__all__ = ["EvalSettings", "PromoteSettings"]


class EvalSettings(BaseModel):
    """``[pipelines.NAME.eval]``: how its models are evaluated (``flywheel eval``).

    Parameters:
        scorers: user metrics, each ``"module:function"``; the function gets
            ``(output, reference, example)`` and returns a bool, a number 0-1, or None (does not
            apply).
        base_url: the OpenAI-compatible API the candidates (and the judge) answer on; default
            ``OPENAI_BASE_URL``, else OpenAI.
        api_key_env: the environment variable its API key is read from (never the key).
        concurrency: requests in flight at once.
        judge: a model that compares answers pairwise; none by default.
        judge_against: what the judge compares each candidate with: ``"reference"`` (the test
            example's reference answer) or another candidate's name.
        few_shot: also run each base model with this many training examples as prior turns.
        few_shot_select: how those examples are picked: ``"random"``, or the most ``"similar"``
            inputs (by the dedup step's MinHash sketches).
        bias_sample: the share (0-1) of judged items judged again in the other order.
        max_retries: attempts after the first for rate limits, server errors and timeouts.
        timeout: seconds per request attempt.
    """

    model_config = MODEL_CONFIG

    scorers: tuple[Annotated[str, Field(pattern=r"^[\w.]+:[\w.]+$")], ...] = Field(default=(), strict=False)
    base_url: str | None = Field(default=None, min_length=1)
    api_key_env: str = Field(default="OPENAI_API_KEY", min_length=1)
    concurrency: int = Field(default=8, ge=1)
    judge: str | None = Field(default=None, min_length=1)
    judge_against: str = Field(default="reference", min_length=1)
    few_shot: int = Field(default=0, ge=0, le=64)
    few_shot_select: Literal["random", "similar"] = "random"
    bias_sample: float = Field(default=0.2, ge=0, le=1)
    max_retries: int = Field(default=5, ge=0)
    timeout: float = Field(default=120.0, gt=0)


class PromoteSettings(BaseModel):
    """``[pipelines.NAME.promote]``: ``flywheel watch`` evaluates each succeeded job and promotes it
    when it beats the pipeline's current model.

    Parameters:
        metric: the metric compared: a built-in one (``exact_match``, ``field_accuracy``, ...), a
            user scorer's name, or ``judge`` (the judge's win rate against the current model
            minus its loss rate; needs ``eval.judge``).
        margin: how much higher (0-1) the job's model must score than the current model.
        min_examples: evaluate only when the test split has at least this many examples.
    """

    model_config = MODEL_CONFIG

    metric: str = Field(default="exact_match", min_length=1)
    margin: float = Field(default=0.0, ge=0, le=1)
    min_examples: int = Field(default=20, ge=1)

    @field_validator("metric")
    @classmethod
    def _metric_name(cls, value: str) -> str:
        if not value.replace("_", "").replace(".", "").isalnum():
            raise ValueError(f"invalid metric name {value!r}")
        return value
