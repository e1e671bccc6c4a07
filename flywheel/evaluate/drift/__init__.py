"""Drift: is a pipeline's recent traffic still like the data its model was trained on?

When the inputs the app sends drift away from the training data (longer inputs, new words, kinds
of input training never saw, another mix of models or tag values), the fine-tuned model is being
asked things it was not trained on: a retrain, or at least a fresh eval, is due. ``flywheel drift
NAME`` (``drift_report``) answers that from the store, read-only and deterministically.

The modules, in the order the work flows:

- ``sides``: the two samples read from the store, the training side (the newest export's train
  split, else the dataset's entries) and the recent side (the app's calls in the window that no
  export holds), each sampled deterministically by the random part of the call id;
- ``stats``: the raw statistics (Kolmogorov-Smirnov, Jensen-Shannon, total variation, the
  permutation test, z-tests on shares), pure and without thresholds;
- ``shifts``: each comparison (length, words, mix, novelty) held to its documented thresholds,
  with its verdict and the sentence saying why;
- ``report``: ``drift_report`` and ``DriftReport``, the verdict (retrain due, eval due) and the
  JSON that ``flywheel drift NAME --json`` prints.
"""

from __future__ import annotations

from .report import DEFAULT_WINDOW, MAX_TAG_KEYS, MIN_RECENT, SAMPLE_LIMIT, DriftReport, drift_report

__all__ = ["DEFAULT_WINDOW", "MAX_TAG_KEYS", "MIN_RECENT", "SAMPLE_LIMIT", "DriftReport", "drift_report"]
