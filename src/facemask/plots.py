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


def confusion_matrix(matrix: np.ndarray, labels: list[str], title: str = "Confusion matrix") -> Figure:
    fig, ax = plt.subplots(figsize=(4.8, 4.2))
    norm = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    for i in range(len(labels)):
        for j in range(len(labels)):
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
        xticks=range(len(labels)),
        yticks=range(len(labels)),
        xticklabels=labels,
        yticklabels=labels,
        xlabel="predicted",
        ylabel="actual",
        title=title,
    )
    fig.tight_layout()
    return fig


def pr_curves(curves: dict[str, pd.DataFrame], ap: dict[str, float]) -> Figure:
    fig, ax = plt.subplots(figsize=(5, 4.2))
    for label, frame in curves.items():
        ax.plot(frame["recall"], frame["precision"], label=f"{label} (AP {ap[label]:.3f})")
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1.01), ylim=(0, 1.01), title="Precision-recall (test)")
    ax.legend(loc="lower left")
    fig.tight_layout()
    return fig
