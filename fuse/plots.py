"""PNG plots of a run: learning curves and a confusion matrix.

Figures are drawn on matplotlib's Agg canvas directly (no pyplot), so plotting neither needs
a display nor changes the caller's matplotlib backend.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

# Above this many classes, the cells are not annotated with counts (they would be unreadable).
_ANNOTATE_MAX = 20


def learning_curves(history: list[dict], best_epoch: int | None, path) -> None:
    """Loss and top-1 against epoch, train and val, with the reported (best) epoch marked."""
    fig = Figure(figsize=(10, 4), layout="constrained")
    FigureCanvasAgg(fig)
    epochs = [row["epoch"] for row in history]
    for ax, metric, title in zip(fig.subplots(1, 2), ("loss", "top1"), ("cross-entropy loss", "top-1 accuracy")):
        ax.plot(epochs, [row[f"train_{metric}"] for row in history], marker=".", label="train")
        if any(row.get(f"val_{metric}") is not None for row in history):
            ax.plot(epochs, [row.get(f"val_{metric}") for row in history], marker=".", label="val")
        if best_epoch is not None:
            ax.axvline(best_epoch, color="grey", linestyle="--", label=f"reported (epoch {best_epoch})")
        ax.set(xlabel="epoch", title=title)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend()
    fig.savefig(path, format="png", dpi=100)


def confusion_matrix_plot(labels, predicted, label_names: Sequence[str], path, title: str = "") -> None:
    """Confusion matrix (rows: true class, columns: predicted), colour = row-normalised share.

    Only the classes that occur (as truth or prediction) are drawn, and the font shrinks with
    their number, so a 100-class split stays legible.
    """
    labels, predicted = np.asarray(labels), np.asarray(predicted)
    present = np.union1d(labels, predicted)
    from sklearn.metrics import confusion_matrix   # here: sklearn takes a second to import

    counts = confusion_matrix(labels, predicted, labels=present)
    share = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    n = len(present)
    size = min(max(6.0, 0.18 * n + 3), 30.0)
    # About half a cell's height (the axes take roughly 3/4 of the figure).
    fontsize = max(3.0, min(9.0, 0.5 * 0.75 * size * 72 / max(n, 1)))
    fig = Figure(figsize=(size, size), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    image = ax.imshow(share, cmap="Blues", vmin=0, vmax=1, interpolation="nearest")
    names = [label_names[c] for c in present]
    ax.set_xticks(range(n), names, rotation=90, fontsize=fontsize)
    ax.set_yticks(range(n), names, fontsize=fontsize)
    ax.set(xlabel="predicted", ylabel="true")
    if n <= _ANNOTATE_MAX:
        for i, j in zip(*np.nonzero(counts)):
            ax.text(j, i, str(counts[i, j]), ha="center", va="center", fontsize=fontsize,
                    color="white" if share[i, j] > 0.5 else "black")
    shown = f"{n} of {len(label_names)} classes present" if n < len(label_names) else f"{n} classes"
    ax.set_title(f"{title} ({shown}, {len(labels)} clips)".strip(), fontsize=10)
    fig.colorbar(image, ax=ax, shrink=0.6, label="share of the true class")
    fig.savefig(path, format="png", dpi=100)
