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
    """The image, then each attention map (grid x grid) overlaid on it (``attention_overlay``)."""
    cells = [[attention_overlay(image)] + [attention_overlay(image, grid) for grid in maps.values()]]
    image_table_png(cells, [title], path, col_labels=["image", *(f"{name} query attention" for name in maps)])


def attention_overlay(image, grid=None, size: int = 256):
    """A PIL image: ``image`` (H, W, 3 in [0, 1]) at ``size`` px, with one attention map (grid x
    grid) upsampled over it in the jet colour map, half transparent, if ``grid`` is given (the
    app's view of paper Fig. 9)."""
    import matplotlib
    import numpy as np
    from PIL import Image

    base = Image.fromarray((np.asarray(image) * 255).round().astype(np.uint8)).resize((size, size), Image.BILINEAR)
    if grid is None:
        return base
    grid = np.asarray(grid, dtype=np.float32)
    grid = (grid - grid.min()) / max(float(grid.max() - grid.min()), 1e-12)
    heat = Image.fromarray((grid * 255).round().astype(np.uint8)).resize((size, size), Image.BILINEAR)
    colours = matplotlib.colormaps["jet"](np.asarray(heat) / 255.0)[..., :3]
    return Image.blend(base, Image.fromarray((colours * 255).round().astype(np.uint8)), 0.5)


def image_table_png(cells: list[list], row_labels: list[str], path: str | Path, col_labels: list[str] | None = None,
                    captions: list[list[str]] | None = None, title: str = "", cell: tuple[float, float] = (1.3, 1.35)) -> None:
    """A labelled grid of images: ``cells[r][c]`` is a PIL image or None (left blank, the size of
    the first image, so that every row and column lines up); ``cell``: inches per cell."""
    from PIL import Image

    plt = _pyplot()
    rows, cols = len(cells), max(len(r) for r in cells)
    fig, axes = plt.subplots(rows, cols, figsize=(cell[0] * cols + 1.2, cell[1] * rows + 0.4), squeeze=False)
    first = next((image for row in cells for image in row if image is not None), None)
    blank = None if first is None else Image.new("RGB", first.size, "white")
    for r in range(rows):
        for c in range(cols):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
            image = cells[r][c] if c < len(cells[r]) else None
            if image is not None or blank is not None:
                ax.imshow(blank if image is None else image)
            if captions and c < len(captions[r]):
                ax.set_xlabel(captions[r][c], fontsize=6)
            if c == 0:
                ax.set_ylabel(row_labels[r], fontsize=8)
            if col_labels and r == 0:
                ax.set_title(col_labels[c], fontsize=8)
    fig.suptitle(title, fontsize=10)
    _save(fig, path)


def curves_png(series: dict[str, tuple[list[float], list[float]] | dict[str, tuple[list[float], list[float]]]],
               path: str | Path, xlabel: str, title: str = "") -> None:
    """Line plots, one panel per name: a panel is one (x, y) or {label: (x, y)}, several lines
    with a legend."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(series), figsize=(3.4 * len(series), 2.8), squeeze=False)
    for ax, (name, lines) in zip(axes[0], series.items()):
        for label, (x, y) in lines.items() if isinstance(lines, dict) else [(None, lines)]:
            ax.plot(x, y, marker="o", markersize=3, label=label)
        if isinstance(lines, dict):
            ax.legend(fontsize=7)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=10)
    _save(fig, path)
