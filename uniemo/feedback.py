"""Explicit feedback, paper §III-C and Algorithm 1 (SPEC §3): generate m images per emotion with
a stage-2 run, score each by Emo-A (the evaluator's probability of the target emotion) and Sem-C
(semantic clarity), keep the images whose rank lies in [η%, δ%) for every chosen criterion, mix
them into the real training set so they form a proportion p of it, and train the understanding
model again (stage 3).

Ranks are taken within each emotion (every emotion keeps the same share of its images, so the
mixed set stays balanced); rank 0 is the highest score and ties keep generation order.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch

from uniemo.errors import UniEmoError

CRITERIA = ("emo-a", "sem-c")


def check_window(eta: float, delta: float) -> None:
    if not 0 <= eta < delta <= 100:
        raise UniEmoError(f"rank window [{eta:g}%, {delta:g}%) is invalid: use 0 <= eta < delta <= 100")


def descending_ranks(scores: Sequence[float]) -> torch.Tensor:
    """Rank of every score, 0 = highest; ties are broken by position (stable)."""
    scores = torch.as_tensor(scores, dtype=torch.float64)
    order = torch.sort(-scores, stable=True).indices
    ranks = torch.empty_like(order)
    ranks[order] = torch.arange(len(order))
    return ranks


def window_bounds(n: int, eta: float, delta: float) -> tuple[int, int]:
    """Rank range [lo, hi) of the top η% to δ% of n items: Algorithm 1's ``R[η% : δ%]``."""
    # The small tolerance absorbs float error in n * percent / 100 (e.g. 10 * 70 / 100).
    return math.floor(n * eta / 100 + 1e-9), math.floor(n * delta / 100 + 1e-9)


def rank_window(scores: Sequence[float], eta: float = 20.0, delta: float = 80.0) -> torch.Tensor:
    """Boolean mask of the scores whose descending rank lies in [η%, δ%)."""
    check_window(eta, delta)
    ranks = descending_ranks(scores)
    lo, hi = window_bounds(len(ranks), eta, delta)
    return (ranks >= lo) & (ranks < hi)


def filter_images(score_table: Mapping[str, Sequence[float]], criteria: Sequence[str], eta: float = 20.0,
                  delta: float = 80.0, groups: Sequence[int] | None = None) -> torch.Tensor:
    """Algorithm 1: keep the images inside the rank window for EVERY chosen criterion; with
    ``groups`` (e.g. the target emotion) ranks are taken within each group."""
    if not criteria:
        raise UniEmoError("no filter criteria: choose one or more of " + ", ".join(CRITERIA))
    missing = [c for c in criteria if c not in score_table]
    if missing:
        raise UniEmoError(f"no {missing[0]!r} scores to filter by: choose from {', '.join(score_table)}")
    n = len(next(iter(score_table.values())))
    groups = torch.zeros(n, dtype=torch.long) if groups is None else torch.as_tensor(groups)
    keep = torch.ones(n, dtype=torch.bool)
    for criterion in criteria:
        scores = torch.as_tensor(score_table[criterion], dtype=torch.float64)
        for g in groups.unique():
            members = (groups == g).nonzero().flatten()
            keep[members] &= rank_window(scores[members], eta, delta)
    return keep


def mix_count(n_real: int, proportion: float) -> int:
    """How many generated images make up ``proportion`` of the mixed set:
    n_gen / (n_real + n_gen) = p  =>  n_gen = p · n_real / (1 - p), rounded."""
    if not 0 <= proportion < 1:
        raise UniEmoError(f"proportion {proportion:g} is invalid: use 0 <= p < 1 (the paper uses 0.2)")
    return round(proportion * n_real / (1 - proportion))


def mix_plan(n_real: int, n_kept: int, proportion: float) -> tuple[int, float]:
    """(generated images to use, the proportion they actually form): all kept ones when fewer
    were kept than the proportion asks for."""
    n_gen = min(mix_count(n_real, proportion), n_kept)
    return n_gen, n_gen / (n_real + n_gen) if n_real + n_gen else 0.0
