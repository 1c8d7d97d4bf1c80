"""Evaluation metrics of paper §IV-A (SPEC §5), following EmoGen's protocol with its bugs fixed.

Understanding: top-1 accuracy, per-class accuracy, confusion matrix and the 2-class figure.
Generation: FID (per emotion and pooled), LPIPS and Sem-D over random pairs drawn within each
emotion, Emo-A (accuracy of an independent evaluator), Sem-C (semantic clarity).
Every pretrained network comes from a local file; each reported number names its network.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from uniemo.vocab import to_binary


# ----------------------------------------------------------------------------- accuracy


def _as_labels(x) -> torch.Tensor:
    """Predicted labels from labels or from (N, C) logits / probabilities."""
    x = torch.as_tensor(x)
    return x.argmax(dim=-1) if x.dim() == 2 else x.long()


def top1_accuracy(preds, labels) -> float:
    """Fraction of predictions equal to the label; ``preds`` are labels or (N, C) scores."""
    preds, labels = _as_labels(preds), torch.as_tensor(labels).long()
    if labels.numel() == 0:
        return float("nan")
    return (preds == labels).float().mean().item()


def confusion_matrix(preds, labels, num_classes: int) -> torch.Tensor:
    """(C, C) counts; row = true class, column = predicted class."""
    preds, labels = _as_labels(preds), torch.as_tensor(labels).long()
    flat = labels * num_classes + preds
    return torch.bincount(flat, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def per_class_accuracy(preds, labels, num_classes: int) -> list[float | None]:
    """Recall of every class (None for a class with no samples)."""
    cm = confusion_matrix(preds, labels, num_classes)
    support = cm.sum(dim=1)
    return [cm[c, c].item() / support[c].item() if support[c] > 0 else None for c in range(num_classes)]


def binary_accuracy(preds, labels) -> float:
    """Accuracy after the 8 -> 2 positive/negative map (SPEC §0)."""
    preds, labels = _as_labels(preds), torch.as_tensor(labels).long()
    to2 = torch.tensor([to_binary(e) for e in range(8)])
    return top1_accuracy(to2[preds], to2[labels])


def accuracy_report(preds, labels, class_names: Sequence[str]) -> dict:
    """Everything an understanding evaluation reports, as JSON-ready values."""
    n = len(class_names)
    report = {
        "top1": top1_accuracy(preds, labels),
        "per_class": dict(zip(class_names, per_class_accuracy(preds, labels, n))),
        "confusion": confusion_matrix(preds, labels, n).tolist(),
        "num_samples": int(torch.as_tensor(labels).numel()),
    }
    if n == 8:
        report["binary"] = binary_accuracy(preds, labels)
    return report
