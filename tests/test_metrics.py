"""Metrics on crafted inputs whose answers are known (SPEC §5)."""

from __future__ import annotations

import pytest
import torch

from uniemo import metrics


def test_accuracy_helpers_on_a_known_confusion():
    labels = [0, 0, 1, 1, 2, 2, 4, 7]
    preds = [0, 1, 1, 1, 2, 0, 5, 3]
    assert metrics.top1_accuracy(preds, labels) == pytest.approx(4 / 8)
    cm = metrics.confusion_matrix(preds, labels, 8)
    assert cm[0].tolist() == [1, 1, 0, 0, 0, 0, 0, 0]
    assert cm[2, 0] == 1 and cm[4, 5] == 1 and cm[7, 3] == 1 and cm.sum() == 8
    per_class = metrics.per_class_accuracy(preds, labels, 8)
    assert per_class[:3] == [0.5, 1.0, 0.5] and per_class[3] is None and per_class[4] == 0.0
    # binary: 7 -> 3 crosses negative -> positive; every other prediction stays on its side.
    assert metrics.binary_accuracy(preds, labels) == pytest.approx(7 / 8)


def test_accuracy_takes_logits():
    logits = torch.tensor([[0.1, 2.0], [3.0, -1.0], [0.0, 1.0]])
    assert metrics.top1_accuracy(logits, [1, 0, 0]) == pytest.approx(2 / 3)
    report = metrics.accuracy_report(logits, [1, 0, 0], ("a", "b"))
    assert report["per_class"] == {"a": 0.5, "b": 1.0} and "binary" not in report
