"""Stage 5, evaluate: the trained classifier on the test crops; metrics and plots to DVC and MLflow.

Outputs ``reports/metrics.json``, ``reports/confusion.csv``, ``reports/pr/<label>.csv`` and PNG
figures under ``reports/figures``; all of them are also attached to the training run in MLflow.
"""

from __future__ import annotations

import logging
import sys

import cv2
import mlflow
import numpy as np
import pandas as pd
from tqdm import tqdm

from facemask import plots, tracking
from facemask.classifier import MaskClassifier
from facemask.config import Params
from facemask.metrics import classification_metrics, confusion_rows, pr_curve_frames
from facemask.stages._runner import run_stage, write_json

log = logging.getLogger("facemask.evaluate")


def predict_split(classifier: MaskClassifier, params: Params, split: str, batch: int = 128) -> tuple:
    table = pd.read_csv(params.paths.interim / "crops.csv", keep_default_na=False)
    table = table[(table["split"] == split) & (table["crop"] != "")]
    if table.empty:
        raise ValueError(f"no {split} crops in {params.paths.interim / 'crops.csv'}")
    y_true = table["label"].map(classifier.labels.index).to_numpy()
    proba = []
    for start in tqdm(range(0, len(table), batch), desc=f"classify {split} crops"):
        names = table["crop"].iloc[start : start + batch]
        crops = [cv2.imread(str(params.paths.crops / n)) for n in names]
        proba.append(classifier.predict_proba(crops, bgr=True, batch_size=batch))
    return table, y_true, np.concatenate(proba)


def evaluate(params: Params) -> None:
    paths, labels = params.paths, params.data.labels
    classifier = MaskClassifier.load(paths.models / "classifier.pt")
    _, y_true, proba = predict_split(classifier, params, "test")
    result = classification_metrics(y_true, proba, labels)
    write_json(paths.reports / "metrics.json", result)
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

    ref = tracking.read_run_ref(paths.models / "mlflow_run.json")
    tracking.setup(params.mlflow)
    with mlflow.start_run(run_id=ref["run_id"]):
        flat = {"test.accuracy": result["accuracy"], "test.macro_f1": result["macro_f1"]}
        for label, stats in result["per_class"].items():
            flat.update({f"test.{label}.{k}": v for k, v in stats.items() if k != "support"})
        mlflow.log_metrics(flat)
        for name, fig in figures.items():
            mlflow.log_figure(fig, f"plots/{name}")
        mlflow.log_artifact(str(paths.reports / "metrics.json"), "evaluation")
        mlflow.set_tag("evaluated", "true")
    log.info("test accuracy %.4f, macro-F1 %.4f on %d crops", result["accuracy"], result["macro_f1"], result["n"])
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
