"""Classification metrics of the evaluate stage (scikit-learn underneath)."""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    confusion_matrix,
    precision_recall_curve,
    precision_recall_fscore_support,
)


def classification_metrics(y_true: np.ndarray, proba: np.ndarray, labels: list[str]) -> dict:
    """Accuracy, macro-F1, per-class precision/recall/F1/support/AP and the confusion matrix."""
    y_pred = proba.argmax(axis=1)
    idx = list(range(len(labels)))
    precision, recall, f1, support = precision_recall_fscore_support(y_true, y_pred, labels=idx, zero_division=0)
    per_class = {}
    for i, label in enumerate(labels):
        positives = y_true == i
        ap = float(average_precision_score(positives, proba[:, i])) if positives.any() else 0.0
        per_class[label] = {
            "precision": round(float(precision[i]), 4),
            "recall": round(float(recall[i]), 4),
            "f1": round(float(f1[i]), 4),
            "support": int(support[i]),
            "average_precision": round(ap, 4),
        }
    return {
        "accuracy": round(float(accuracy_score(y_true, y_pred)), 4),
        "macro_f1": round(float(np.mean(f1)), 4),
        "n": len(y_true),
        "per_class": per_class,
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=idx).tolist(),
    }


def face_macro_f1(actual: list[str], predicted: list[str], face_labels: list[str]) -> float:
    """Macro-F1 over the face classes of face crops, whatever else a model can answer (a face
    called `background` counts as a miss): the figure that compares models with different outputs."""
    keep = [i for i, a in enumerate(actual) if a in face_labels]
    if not keep:
        raise ValueError("no face crops to score")
    y_true = [actual[i] for i in keep]
    y_pred = [predicted[i] for i in keep]
    _, _, f1, _ = precision_recall_fscore_support(y_true, y_pred, labels=face_labels, zero_division=0)
    return round(float(np.mean(f1)), 4)


def split_digest(ids: list[str], labels: list[str]) -> str:
    """A short fingerprint of a test split (its crop ids and labels): equal digests, same test set."""
    import hashlib

    text = "\n".join(f"{i},{lb}" for i, lb in sorted(zip(ids, labels, strict=True)))
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def pr_curve_frames(y_true: np.ndarray, proba: np.ndarray, labels: list[str], points: int = 101) -> dict:
    """One-vs-rest precision-recall curve per class, resampled on a fixed recall grid for plotting."""
    grid = np.linspace(0, 1, points)
    frames = {}
    for i, label in enumerate(labels):
        positives = y_true == i
        if not positives.any():
            continue
        precision, recall, _ = precision_recall_curve(positives, proba[:, i])
        # interpolated precision: best precision at recall >= r
        best = np.maximum.accumulate(precision[::-1])[::-1]
        interp = np.interp(grid, recall[::-1], best[::-1])
        frames[label] = pd.DataFrame({"recall": grid.round(3), "precision": interp.round(4)})
    return frames


def confusion_rows(y_true: np.ndarray, y_pred: np.ndarray, labels: list[str]) -> pd.DataFrame:
    """actual/predicted pairs for DVC's confusion-matrix template."""
    return pd.DataFrame({"actual": [labels[i] for i in y_true], "predicted": [labels[i] for i in y_pred]})


def format_table(result: dict) -> str:
    """A small text table of a metrics.json: per-class precision/recall/F1/AP and the totals."""
    lines = [f"{'class':<10} {'precision':>9} {'recall':>7} {'F1':>6} {'AP':>6} {'n':>5}"]
    for label, s in result["per_class"].items():
        lines.append(
            f"{label:<10} {s['precision']:>9.3f} {s['recall']:>7.3f} {s['f1']:>6.3f} "
            f"{s['average_precision']:>6.3f} {s['support']:>5}"
        )
    lines.append(f"accuracy {result['accuracy']:.4f}   macro-F1 {result['macro_f1']:.4f}   n={result['n']}")
    if "face_macro_f1" in result:
        split = result["test_split"]
        lines.append(f"face macro-F1 {result['face_macro_f1']:.4f} (promotion metric, test split {split})")
    for source, s in result.get("per_source", {}).items():
        lines.append(f"  {source:<24} accuracy {s['accuracy']:.4f}  macro-F1 {s['macro_f1']:.4f}  n={s['n']}")
    return "\n".join(lines)


if __name__ == "__main__":
    import json
    import sys
    from pathlib import Path

    if len(sys.argv) != 2:
        sys.exit("usage: python -m facemask.classification_metrics METRICS_JSON (the evaluate stage's paths.metrics)")
    print(format_table(json.loads(Path(sys.argv[1]).read_text())))
