"""Stage 5, evaluate: the trained classifier on the test crops; metrics and plots to DVC and MLflow.

Outputs ``reports/metrics.json``, ``reports/confusion.csv``, ``reports/pr/<label>.csv`` and PNG
figures under ``reports/figures``; all of them are also attached to the training run in MLflow.
"""

from __future__ import annotations

import logging
import sys

import mlflow
import numpy as np
import pandas as pd

from facemask import mlflow_tracking, plots
from facemask.classification_metrics import (
    classification_metrics,
    confusion_rows,
    face_macro_f1,
    pr_curve_frames,
    split_digest,
)
from facemask.classifier import MaskClassifier
from facemask.cli import run_stage, write_json
from facemask.config import Params
from facemask.crop_scoring import predict_crops, scored_parts, split_crops

log = logging.getLogger("facemask.evaluate")


def per_group(table: pd.DataFrame, y_true: np.ndarray, proba: np.ndarray, labels: list[str], column: str) -> dict:
    """Accuracy and macro-F1 (over the classes present) per value of `column` (source, kind)."""
    out = {}
    for value, idx in table.groupby(column).indices.items():
        present = sorted(set(y_true[idx]))
        sub = classification_metrics(y_true[idx], proba[idx], labels)
        f1 = [sub["per_class"][labels[k]]["f1"] for k in present]
        out[str(value)] = {"accuracy": sub["accuracy"], "macro_f1": round(float(np.mean(f1)), 4), "n": sub["n"]}
    return out


def evaluate(params: Params) -> None:
    paths = params.paths
    classifier = MaskClassifier.load(paths.classifier, params.pipeline.classifier_runtime)  # as served
    labels = classifier.labels
    table = split_crops(params, "test")
    unknown = set(table["label"]) - set(labels)
    if unknown:
        raise ValueError(f"test crops carry labels the classifier does not know: {sorted(unknown)}")
    y_true = table["label"].map(labels.index).to_numpy()
    proba = predict_crops(classifier, params, table)
    result = classification_metrics(y_true, proba, labels)
    predicted = [labels[k] for k in proba.argmax(axis=1)]
    result["face_macro_f1"] = face_macro_f1(table["label"].tolist(), predicted, params.data.labels)
    result["test_split"] = split_digest(table["id"].tolist(), table["label"].tolist())
    result["parts"] = scored_parts(table, predicted, params.data.labels)  # sources' and reviewed alerts' crops
    result["per_source"] = per_group(table, y_true, proba, labels, "source")
    if "kind" in table:
        result["per_kind"] = per_group(table, y_true, proba, labels, "kind")
    write_json(paths.metrics, result)
    confusion_rows(y_true, proba.argmax(axis=1), labels).to_csv(paths.reports / "confusion.csv", index=False)
    curves = pr_curve_frames(y_true, proba, labels)
    (paths.reports / "pr").mkdir(parents=True, exist_ok=True)
    for label, frame in curves.items():
        frame.to_csv(paths.reports / "pr" / f"{label}.csv", index=False)
    figures = {
        "confusion_matrix.png": plots.confusion_matrix(np.array(result["confusion_matrix"]), labels),
        "pr_curves.png": plots.pr_curves(curves, {k: v["average_precision"] for k, v in result["per_class"].items()}),
    }
    (paths.reports / "figures").mkdir(parents=True, exist_ok=True)
    for name, fig in figures.items():
        fig.savefig(paths.reports / "figures" / name, dpi=110)

    ref = mlflow_tracking.attach(params.mlflow, paths.classifier_run)
    with mlflow.start_run(run_id=ref["run_id"]):
        flat = {
            "test.accuracy": result["accuracy"],
            "test.macro_f1": result["macro_f1"],
            "test.face_macro_f1": result["face_macro_f1"],
        }
        for source, stats in result["per_source"].items():
            flat.update({f"test.source.{source}.{k}": v for k, v in stats.items()})
        for part, stats in result["parts"].items():
            flat.update({f"test.{part}.{k}": v for k, v in stats.items() if v is not None})
        mlflow.set_tag("test_split", result["test_split"])
        for label, stats in result["per_class"].items():
            flat.update({f"test.{label}.{k}": v for k, v in stats.items() if k != "support"})
        mlflow.log_metrics(flat)
        for name, fig in figures.items():
            mlflow.log_figure(fig, f"plots/{name}")
        mlflow.log_artifact(str(paths.metrics), "evaluation")
        mlflow.set_tag("evaluated", "true")
    log.info("test accuracy %.4f, macro-F1 %.4f on %d crops", result["accuracy"], result["macro_f1"], result["n"])
    log.info("face macro-F1 %.4f (test split %s)", result["face_macro_f1"], result["test_split"])
    for source, stats in result["per_source"].items():
        log.info("  %-26s accuracy %.4f macro-F1 %.4f (n=%d)", source, stats["accuracy"], stats["macro_f1"], stats["n"])
    for label, stats in result["per_class"].items():
        log.info(
            "  %-10s P %.3f R %.3f F1 %.3f (n=%d)",
            label,
            stats["precision"],
            stats["recall"],
            stats["f1"],
            stats["support"],
        )


def main(argv: list[str] | None = None) -> int:
    return run_stage("evaluate", evaluate, argv)


if __name__ == "__main__":
    sys.exit(main())
