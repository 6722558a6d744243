"""Stage 6, promote: register the evaluated model; move the champion alias only if it wins."""

from __future__ import annotations

import json
import sys

import mlflow
from mlflow.tracking import MlflowClient

from facemask import mlflow_tracking
from facemask.classifier import MaskClassifier
from facemask.cli import run_stage, write_json
from facemask.config import Params
from facemask.crop_scoring import face_score
from facemask.registry import promote


def promote_stage(params: Params) -> None:
    paths, cfg = params.paths, params.mlflow
    ref = mlflow_tracking.attach(cfg, paths.classifier_run)
    metrics = json.loads(paths.metrics.read_text())
    client = MlflowClient()

    def rescore(version: str) -> float:
        """The champion's face macro-F1 on this pipeline's test split."""
        path = mlflow_tracking.classifier_file(f"models:/{cfg.registered_model}/{version}")
        return face_score(MaskClassifier.load(path), params)[0]

    decision = promote(
        client, cfg.registered_model, ref["model_uri"], ref["run_id"], metrics["face_macro_f1"],
        cfg.champion_alias, cfg.promotion_margin, metrics["test_split"], rescore,
    )  # fmt: skip
    with mlflow.start_run(run_id=ref["run_id"]):
        mlflow.set_tags(
            {
                "promotion": "promoted" if decision.promoted else "rejected",
                "registered_version": decision.candidate_version,
            }
        )
    write_json(paths.reports / "promotion.json", decision.to_dict())


def main(argv: list[str] | None = None) -> int:
    return run_stage("promote", promote_stage, argv)


if __name__ == "__main__":
    sys.exit(main())
