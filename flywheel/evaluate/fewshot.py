"""Which training examples a few-shot candidate is shown: ``random`` or the most ``similar``.

``random``: K examples of the train split, drawn per test example from a generator seeded by the
run's seed and the example's call id, so a resumed run shows the same shots. ``similar``: the K
training inputs most alike the test input, by the MinHash sketches the dedup step compares inputs
with (estimated Jaccard similarity of their shingles), ties broken by call id.

Either way a test example is never its own shot (the export keeps them apart, and a near-duplicate
never straddles the split).
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence
from typing import Literal

import numpy as np
from numpy.typing import NDArray

from ..near_duplicates import input_text, learn_boilerplate, sketch_texts
from .examples import Example

__all__ = ["Selection", "ShotPicker"]

Selection = Literal["random", "similar"]


class ShotPicker:
    """Picks ``k`` shots from ``pool`` (the train split's examples) for each test example."""

    def __init__(self, pool: Sequence[Example], k: int, selection: Selection, seed: int) -> None:
        self.pool, self.k, self.selection, self.seed = list(pool), k, selection, seed
        self._signatures: NDArray[np.uint8] | None = None
        if selection == "similar" and self.pool:
            texts = [_text(example) for example in self.pool]
            self._boilerplate = learn_boilerplate(texts)
            self._signatures = sketch_texts(texts, boilerplate=self._boilerplate)

    def shots(self, example: Example) -> list[Example]:
        if self.k <= 0 or not self.pool:
            return []
        if self._signatures is None:
            digest = hashlib.blake2b(f"{self.seed}\x1f{example.call_id}".encode(), digest_size=8).digest()
            rng = random.Random(int.from_bytes(digest, "big"))
            return rng.sample(self.pool, min(self.k, len(self.pool)))
        mine = sketch_texts([_text(example)], boilerplate=self._boilerplate)[0]
        similarity = (self._signatures == mine).mean(axis=1)
        order = sorted(range(len(self.pool)), key=lambda i: (-float(similarity[i]), self.pool[i].call_id))
        return [self.pool[i] for i in order[: self.k]]


def _text(example: Example) -> str:
    return input_text(example.messages, example.request.get("tools"))
