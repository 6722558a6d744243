"""Figures for MLflow and the reports folder (matplotlib, headless)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure


def training_curves(history: pd.DataFrame) -> Figure:
    fig, (ax_loss, ax_f1) = plt.subplots(1, 2, figsize=(10, 4))
    for col, name in (("train_loss", "train"), ("val_loss", "val")):
        if col in history:
            ax_loss.plot(history["epoch"], history[col], marker="o", label=name)
    ax_loss.set(xlabel="epoch", ylabel="loss", title="Loss")
    ax_loss.legend()
    if "val_macro_f1" in history:
        ax_f1.plot(history["epoch"], history["val_macro_f1"], marker="o", color="tab:green")
    ax_f1.set(xlabel="epoch", ylabel="macro-F1", title="Validation macro-F1", ylim=(0, 1.01))
    fig.tight_layout()
    return fig


def confusion_matrix(
    matrix: np.ndarray, labels: list[str], title: str = "Confusion matrix", columns: list[str] | None = None
) -> Figure:
    """Rows are actual `labels`; `columns` (default the same labels) are what was predicted."""
    columns = columns or labels
    fig, ax = plt.subplots(figsize=(1.2 * len(columns) + 1.2, 4.2))
    norm = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    for i in range(len(labels)):
        for j in range(len(columns)):
            ax.text(
                j,
                i,
                f"{matrix[i, j]}\n{norm[i, j]:.0%}",
                ha="center",
                va="center",
                color="white" if norm[i, j] > 0.6 else "black",
                fontsize=9,
            )
    ax.set(
        xticks=range(len(columns)),
        yticks=range(len(labels)),
        xticklabels=columns,
        yticklabels=labels,
        xlabel="predicted",
        ylabel="actual",
        title=title,
    )
    fig.tight_layout()
    return fig


def pr_curves(curves: dict[str, pd.DataFrame], ap: dict[str, float], title: str = "Precision-recall (test)") -> Figure:
    fig, ax = plt.subplots(figsize=(5, 4.2))
    for label, frame in curves.items():
        ax.plot(frame["recall"], frame["precision"], label=f"{label} (AP {ap[label]:.3f})")
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1.01), ylim=(0, 1.01), title=title)
    ax.legend(loc="lower left")
    fig.tight_layout()
    return fig


def recall_by_size(recall: dict, labels: list[str], sizes: tuple[str, ...]) -> Figure:
    """Detector recall per class and face size, with the face count on each bar."""
    fig, ax = plt.subplots(figsize=(6, 4))
    width = 0.8 / len(labels)
    for k, label in enumerate(labels):
        xs = np.arange(len(sizes)) + (k - (len(labels) - 1) / 2) * width
        cells = [recall[label][s] for s in sizes]
        heights = [c["recall"] or 0.0 for c in cells]
        bars = ax.bar(xs, heights, width, label=label)
        for bar, cell in zip(bars, cells, strict=True):
            ax.annotate(
                f"{cell['found']}/{cell['total']}",
                (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                ha="center",
                va="bottom",
                fontsize=7,
            )
    ax.set(
        xticks=range(len(sizes)),
        xticklabels=sizes,
        ylim=(0, 1.1),
        ylabel="recall",
        title="Faces found by the detector, by size",
    )
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    return fig


def accuracy_vs_speed(table: pd.DataFrame) -> Figure:
    """mAP against frames per second, one point per detector variant."""
    fig, ax = plt.subplots(figsize=(6, 4.2))
    for row in table.itertuples():
        ax.scatter(row.fps, row.map, s=40)
        ax.annotate(row.variant, (row.fps, row.map), textcoords="offset points", xytext=(5, 4), fontsize=8)
    ax.set(
        xlabel="frames per second (median, this machine)",
        ylabel="mAP@0.5 on scenes",
        title="Detector variants: accuracy against speed",
    )
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def detector_curves(history: pd.DataFrame) -> Figure:
    """Detector fine-tuning: training losses, and validation recall / precision / AP per epoch."""
    fig, (ax_loss, ax_val) = plt.subplots(1, 2, figsize=(10, 4))
    for col in ("train_loss", "train_box", "train_cls", "train_landmarks"):
        if col in history:
            ax_loss.plot(history["epoch"], history[col], marker="o", label=col.removeprefix("train_"))
    ax_loss.set(xlabel="epoch", ylabel="loss", title="Training loss")
    ax_loss.legend()
    for col in ("val_recall", "val_precision", "val_ap"):
        if col in history:
            ax_val.plot(history["epoch"], history[col], marker="o", label=col.removeprefix("val_"))
    ax_val.set(xlabel="epoch", title="Held-out scenes (IoU 0.5)", ylim=(0, 1.01))
    ax_val.legend()
    fig.tight_layout()
    return fig


def rejection_sweep(sweep: pd.DataFrame, chosen: float) -> Figure:
    """Val-scene mAP, detector recall and precision against the rejection threshold, the chosen one marked."""
    fig, ax = plt.subplots(figsize=(6, 4.2))
    for col in ("map", "detector_recall", "detector_precision"):
        ax.plot(sweep["reject_min_probability"], sweep[col], marker="o", label=col.replace("_", " "))
    ax.axvline(chosen, color="grey", linestyle="--", label=f"chosen {chosen:.2f}")
    ax.set(
        xlabel="p(background) from which a detection is dropped",
        title="Rejection threshold on validation scenes",
        ylim=(0, 1.01),
    )
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return fig
