"""Evaluation: prove the fine-tuned model is better, switch to it safely, keep watching.

The modules, in the order the work flows (docs/evaluation.md explains each):

- ``examples``: the test split the pipeline's newest export held out, with reference answers;
- ``candidates``, ``fewshot``: who answers (models, and ``MODEL+Kshot`` prompted baselines) and
  what each is sent;
- ``run``: ``flywheel eval``, every candidate on every example through the SDK, resumable;
- ``metrics``, ``intervals``, ``scorers``: scoring against the reference, 95 % intervals, user
  scorers; ``judge/``: the pairwise LLM judge (its protocol, and the calls);
- ``report``, ``report_text``, ``report_html`` (with ``svg_charts``): ``flywheel eval report``;
- ``drift`` (a subpackage: ``sides``, ``stats``, ``shifts``, ``report``): ``flywheel drift``,
  recent traffic against the training data;
- ``promote``, ``auto_promote``: a pipeline's current model (what ``model="flywheel:NAME"``
  reaches), set by hand or by ``watch`` when a job's model wins.
"""

from __future__ import annotations

from .auto_promote import PromotionDecision, promote_if_better
from .drift import DriftReport, drift_report
from .judge import JudgeError
from .promote import Promotion, current_model, promote, promotion_history, rollback
from .report import eval_report
from .report_html import render_html
from .report_text import render_text
from .run import EvalError, EvalProgress, EvalResult, run_eval, run_eval_async
from .scorers import ScorerError

__all__ = [
    "DriftReport",
    "EvalError",
    "EvalProgress",
    "EvalResult",
    "JudgeError",
    "Promotion",
    "PromotionDecision",
    "ScorerError",
    "current_model",
    "drift_report",
    "eval_report",
    "promote",
    "promote_if_better",
    "promotion_history",
    "render_html",
    "render_text",
    "rollback",
    "run_eval",
    "run_eval_async",
]
