"""The pairwise LLM judge (``flywheel eval --judge MODEL``): ``protocol`` is what the judge is shown
and how its verdicts count (pure), ``judging`` makes the calls and stores the verdicts."""

from __future__ import annotations

from .judging import JudgeError, JudgePair, JudgeTally, judge_pairs, judge_run_async, judgments_of
from .protocol import JudgeSummary, Judgment, judge_summaries, judge_summary

__all__ = [
    "JudgeError",
    "JudgePair",
    "JudgeSummary",
    "JudgeTally",
    "Judgment",
    "judge_pairs",
    "judge_run_async",
    "judge_summaries",
    "judge_summary",
    "judgments_of",
]
