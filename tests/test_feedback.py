"""Explicit feedback (Algorithm 1): the rank window, the two-criterion filter, the mix."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from uniemo.errors import UniEmoError
from uniemo.feedback import descending_ranks, filter_images, mix_count, mix_plan, rank_window


def test_rank_window_keeps_ranks_2_to_7_of_10():
    scores = [0.9, 0.1, 0.5, 0.7, 0.3, 0.8, 0.2, 0.6, 0.4, 0.05]
    # descending ranks:  0    8    4    2    6    1    7    3    5    9
    mask = rank_window(scores, eta=20, delta=80)
    assert descending_ranks(scores).tolist() == [0, 8, 4, 2, 6, 1, 7, 3, 5, 9]
    assert mask.nonzero().flatten().tolist() == [2, 3, 4, 6, 7, 8]  # the images of ranks 2..7


def test_filter_keeps_the_intersection_of_both_windows():
    emo_a = [0.9, 0.1, 0.5, 0.7, 0.3, 0.8, 0.2, 0.6, 0.4, 0.05]  # window: images 2, 3, 4, 6, 7, 8
    sem_c = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]  # ranks 9..0; window: images 2..7
    table = {"emo-a": emo_a, "sem-c": sem_c}
    assert filter_images(table, ["emo-a"]).nonzero().flatten().tolist() == [2, 3, 4, 6, 7, 8]
    assert filter_images(table, ["sem-c"]).nonzero().flatten().tolist() == [2, 3, 4, 5, 6, 7]
    assert filter_images(table, ["emo-a", "sem-c"]).nonzero().flatten().tolist() == [2, 3, 4, 6, 7]
    with pytest.raises(UniEmoError, match="sem-d"):
        filter_images(table, ["sem-d"])


def test_filter_ranks_within_each_emotion():
    # Emotion 1's scores are all below emotion 0's: a global ranking would drop it entirely.
    scores = [0.9, 0.8, 0.7, 0.6, 0.5, 0.04, 0.03, 0.02, 0.01, 0.0]
    groups = [0] * 5 + [1] * 5
    kept = filter_images({"emo-a": scores}, ["emo-a"], eta=20, delta=80, groups=groups)
    assert kept.nonzero().flatten().tolist() == [1, 2, 3, 6, 7, 8]  # ranks 1..3 of each group of 5


def test_mix_proportion_holds():
    for n_real, p in [(800, 0.2), (1000, 0.5), (93, 0.3), (10, 0.0)]:
        n_gen = mix_count(n_real, p)
        assert n_gen / (n_real + n_gen) == pytest.approx(p, abs=1 / (n_real + n_gen))
    assert mix_count(800, 0.2) == 200
    assert mix_plan(800, 1000, 0.2) == (200, pytest.approx(0.2))
    assert mix_plan(800, 50, 0.2) == (50, pytest.approx(50 / 850))  # too few kept: all, actual share
    for bad in (-0.1, 1.0):
        with pytest.raises(UniEmoError, match="proportion"):
            mix_count(10, bad)


def test_invalid_window_is_a_one_line_error():
    for eta, delta in [(80, 20), (-1, 50), (10, 101), (50, 50)]:
        with pytest.raises(UniEmoError, match="eta < delta"):
            rank_window([0.1, 0.2], eta, delta)


@settings(max_examples=200, deadline=None)
@given(scores=st.lists(st.floats(-1e6, 1e6, allow_nan=False), min_size=1, max_size=60),
       eta=st.integers(0, 99), width=st.integers(1, 100))
def test_rank_window_properties(scores, eta, width):
    delta = min(100, eta + width)
    n = len(scores)
    mask = rank_window(scores, eta, delta)
    assert int(mask.sum()) == (n * delta) // 100 - (n * eta) // 100  # kept count = the window size
    # Monotone: widening the window never drops an image.
    assert not (mask & ~rank_window(scores, max(0, eta - 5), delta)).any()
    assert not (mask & ~rank_window(scores, eta, min(100, delta + 5))).any()
    # Everything kept scores no higher than anything above the window, no lower than below it.
    t = torch.tensor(scores, dtype=torch.float64)
    ranks = descending_ranks(scores)
    if mask.any():
        above, below = t[ranks < (n * eta) // 100], t[ranks >= (n * delta) // 100]
        assert above.numel() == 0 or t[mask].max() <= above.min()
        assert below.numel() == 0 or t[mask].min() >= below.max()
