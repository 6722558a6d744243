"""Stage, promote_detector: score the fine-tuned detector on the dev scenes, register it, gate it.

The detector alone (no classifier) runs over the dev scenes as served (`pipeline.detect_long_side`,
its thresholds and `box_fit`). The version is registered as `mlflow.registered_detector`; the
champion alias moves only when dev-scene recall improves at equal or better precision. Writes
``reports/detector/dev.json`` (recall per class and size, precision) and
``reports/detector/promotion.json``; the figures are logged to the detector's training run.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import mlflow
from mlflow.tracking import MlflowClient

from facemask import mlflow_tracking, registry
from facemask.cli import run_stage, write_json
from facemask.config import Params
from facemask.data.voc import Scene, evaluation_folder, load_scenes
from facemask.detection import build_detector
from facemask.scenes.detection import detect_scenes, detector_scores, scenes_digest

log = logging.getLogger("facemask.promote_detector")


def score(params: Params, scenes: list[Scene], weights: Path) -> dict:
    cfg = params.detectors[params.detector_train.target]
    detections = detect_scenes(build_detector(cfg, weights), params.pipeline, scenes, params.data.max_image_pixels)
    return detector_scores(scenes, detections, params.scenes.iou_threshold, params.scenes.size_bins, cfg.box_fit)


def promote_detector(params: Params) -> None:
    paths, ml = params.paths, params.mlflow
    ref = mlflow_tracking.attach(ml, paths.detector_run)
    scenes = load_scenes(evaluation_folder(params.scenes), params.scenes.source.label_map)
    digest = scenes_digest(scenes)
    result = score(params, scenes, paths.detector_onnx)
    client = MlflowClient()

    def rescore(version: str) -> dict[str, float]:
        found = score(params, scenes, registry.detector_file(f"models:/{ml.registered_detector}/{version}"))
        return {k: found[k] for k in ("recall", "precision")}

    figures = {k: result[k] for k in ("recall", "precision")}
    decision = registry.promote_detector(
        client, ml.registered_detector, ref["model_uri"], ref["run_id"], figures, ml.champion_alias, digest, rescore
    )
    with mlflow.start_run(run_id=ref["run_id"]):
        mlflow.log_metrics({"dev.recall": result["recall"], "dev.precision": result["precision"]})
        mlflow.log_metrics({f"dev.recall.{k}": v for k, v in result["recall_by"].items()})
        mlflow.set_tag("promotion", "promoted" if decision.promoted else "rejected")
    write_json(paths.reports / "detector" / "dev.json", {**result, "dev_scenes": digest, "scenes": len(scenes)})
    write_json(paths.reports / "detector" / "promotion.json", decision.to_dict())
    log.info(
        "dev scenes: recall %.3f (masked %.3f, small masked %s), precision %.3f; %s",
        result["recall"], result["recall_by"].get("mask.all", 0.0), result["recall_by"].get("mask.small"),
        result["precision"], decision.reason,
    )  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    return run_stage("promote_detector", promote_detector, argv)


if __name__ == "__main__":
    sys.exit(main())
