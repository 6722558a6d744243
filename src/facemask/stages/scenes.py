"""Stage 7, scenes: the full detection pipeline over annotated scenes, logged to the training run.

Outputs ``reports/scenes/metrics.json`` (mAP@0.5, AP per class, detector recall by face size, speed),
PR curves per class, the confusion of matched faces, ``errors.csv`` and ``worst_errors.png``.
"""

from __future__ import annotations

import logging
import sys

import mlflow

from facemask import machine, mlflow_tracking
from facemask.cli import run_stage, write_json
from facemask.config import Params
from facemask.scenes.average_precision import format_scene_table
from facemask.scenes.evaluate import evaluate_scenes, flat_metrics, summary, write_reports

log = logging.getLogger("facemask.scenes")


def scenes(params: Params) -> None:
    paths = params.paths
    run, result = evaluate_scenes(params, paths.classifier)
    out = paths.scene_metrics.parent
    figures = write_reports(run, result, run.labels, out, params.scenes.gallery_size, params.scenes.iou_threshold)
    write_json(paths.scene_metrics, {**summary(result), "machine": machine.describe()})  # whose ms and fps

    ref = mlflow_tracking.attach(params.mlflow, paths.classifier_run)
    with mlflow.start_run(run_id=ref["run_id"]):
        mlflow.log_metrics(flat_metrics(result))
        mlflow.set_tag("scenes.machine", machine.label())
        for name, fig in figures.items():
            mlflow.log_figure(fig, f"plots/scenes/{name}")
        mlflow.log_artifact(str(out / "worst_errors.png"), "plots/scenes")
        mlflow.log_artifact(str(paths.scene_metrics), "evaluation/scenes")
    print(
        f"\n{result['scenes']} scenes, {result['faces']} faces, "
        f"{params.detector.name} at long side {params.pipeline.detect_long_side or 'native'}"
    )
    print(format_scene_table(result, run.labels))
    print(f"median {result['frame_ms_median']:.1f} ms/frame ({result['fps']:.1f} fps) on {machine.label()}")


def main(argv: list[str] | None = None) -> int:
    return run_stage("scenes", scenes, argv)


if __name__ == "__main__":
    sys.exit(main())
