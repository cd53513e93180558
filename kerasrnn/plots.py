"""Figures written to a run directory: training curves and the confusion matrix."""

from __future__ import annotations

import numpy as np
from matplotlib.ticker import MaxNLocator

from kerasrnn._io import atomic_write


def figure(rows: int = 1, columns: int = 1, figsize: tuple[float, float] = (7, 4)):
    """A matplotlib Figure and its axes, made without pyplot: no backend is chosen or
    changed (a notebook's inline backend stays), no display is needed, and no figure is
    left registered anywhere (nothing to close).

    Returns:
        (Figure, Axes or an array of Axes, as `Figure.subplots` gives them).
    """
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    return fig, fig.subplots(rows, columns)


def training_curves(history: list[dict], path: str, best_epoch: int | None = None) -> None:
    """Plots loss and accuracy (train and validation) by epoch into a PNG.

    Args:
        history: one dict per epoch with epoch, loss, accuracy, val_loss, val_accuracy.
        path: the PNG to write.
        best_epoch: the epoch whose weights the run kept, marked on both plots.
    """
    epochs = [row["epoch"] for row in history]
    fig, axes = figure(1, 2, figsize=(10, 4))
    for ax, metric in zip(axes, ("loss", "accuracy")):
        ax.plot(epochs, [row[metric] for row in history], "o-", label="train")
        ax.plot(epochs, [row[f"val_{metric}"] for row in history], "o-", label="validation")
        if best_epoch is not None:
            ax.axvline(best_epoch, color="grey", linestyle="--", label=f"kept: epoch {best_epoch}")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.set_title(metric)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, classes: int = 10) -> np.ndarray:
    """Counts [true class, predicted class] pairs.

    Returns:
        int64 array [classes, classes].
    """
    counts = np.zeros((classes, classes), dtype=np.int64)
    np.add.at(counts, (np.asarray(labels), np.asarray(predictions)), 1)
    return counts


def confusion_matrix_figure(
    counts: np.ndarray, title: str = "confusion matrix", class_names: tuple[str, ...] | None = None
):
    """Draws a confusion matrix (rows: true class, columns: prediction).

    Args:
        counts: int [classes, classes], from `confusion_matrix`.
        title: the figure's title.
        class_names: the classes' names by label (see `config.CLASS_NAMES`); None: labels.

    Returns:
        The matplotlib Figure (made without pyplot: see `figure`).
    """
    names = [str(label) for label in range(len(counts))] if class_names is None else class_names
    if len(names) != len(counts):
        raise ValueError(f"{len(counts)} classes, but {len(names)} class names: {names}")
    # Names longer than a digit are slanted so that neighbours do not overlap.
    wide = max(len(name) for name in names) > 2
    fig, ax = figure(figsize=(7, 6.5) if wide else (6, 5.5))
    image = ax.imshow(counts, cmap="Blues")
    fig.colorbar(image, ax=ax)
    for (i, j), n in np.ndenumerate(counts):
        color = "white" if n > counts.max() / 2 else "black"
        ax.text(j, i, str(n), ha="center", va="center", fontsize=7, color=color)
    ax.set_xticks(
        range(len(counts)), names, rotation=45 if wide else 0, ha="right" if wide else "center"
    )
    ax.set_yticks(range(len(counts)), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.tight_layout()
    return fig


def confusion_matrix_png(
    counts: np.ndarray,
    path: str,
    title: str = "confusion matrix",
    class_names: tuple[str, ...] | None = None,
) -> None:
    """Draws a confusion matrix into a PNG (see `confusion_matrix_figure`)."""
    fig = confusion_matrix_figure(counts, title, class_names)
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
