"""Figures written as PNG with matplotlib's Agg backend (no display needed): the confusion
matrix of an understanding evaluation and the expert-query attention maps (paper Fig. 9)."""

from __future__ import annotations

from pathlib import Path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | Path) -> None:
    from uniemo.io import atomic_path

    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
    _pyplot().close(fig)


def confusion_matrix_png(confusion, class_names, path: str | Path, title: str = "") -> None:
    """Row-normalised confusion matrix (rows = true class) with the counts in each cell."""
    import numpy as np

    plt = _pyplot()
    counts = np.asarray(confusion, dtype=float)
    rates = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    n = len(class_names)
    fig, ax = plt.subplots(figsize=(1.0 + 0.7 * n, 0.8 + 0.7 * n))
    ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(n), class_names, rotation=45, ha="right")
    ax.set_yticks(range(n), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(n):
        for j in range(n):
            ax.text(j, i, int(counts[i, j]), ha="center", va="center", fontsize=8,
                    color="white" if rates[i, j] > 0.5 else "black")
    ax.set_title(title)
    _save(fig, path)


def attention_png(image, maps: dict, path: str | Path, title: str = "") -> None:
    """The image, then each attention map (grid x grid) upsampled and overlaid on it."""
    import numpy as np

    plt = _pyplot()
    image = np.asarray(image)
    fig, axes = plt.subplots(1, 1 + len(maps), figsize=(3.2 * (1 + len(maps)), 3.4))
    axes[0].imshow(image)
    axes[0].set_title(title)
    for ax, (name, grid) in zip(axes[1:], maps.items()):
        grid = np.asarray(grid, dtype=float)
        ax.imshow(image)
        ax.imshow(grid, cmap="jet", alpha=0.5, interpolation="bilinear",
                  extent=(0, image.shape[1], image.shape[0], 0))
        ax.set_title(f"{name} query attention")
    for ax in axes:
        ax.axis("off")
    _save(fig, path)
