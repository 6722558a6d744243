"""Stage 7, scenes: the full detection pipeline over annotated scenes, logged to the training run.

Outputs ``reports/scenes/metrics.json`` (mAP@0.5, AP per class, detector recall by face size, speed),
PR curves per class, the confusion of matched faces, ``errors.csv`` and ``worst_errors.png``.
"""

from __future__ import annotations

import logging
import sys

import mlflow

from facemask import tracking
from facemask.config import Params
from facemask.pipeline import MaskPipeline
from facemask.scenes.evaluate import evaluate_scenes, summary, write_reports
from facemask.scenes.metrics import format_scene_table
from facemask.stages._runner import run_stage, write_json

log = logging.getLogger("facemask.scenes")


def flat_metrics(result: dict, prefix: str = "scenes.") -> dict[str, float]:
    """MLflow metric names for a scene evaluation."""
    flat = {
        f"{prefix}{k}": float(result[k])
        for k in ("map", "map_top1", "detector_recall", "fps", "frame_ms_median")
        if result.get(k) is not None
    }
    flat.update({f"{prefix}ap.{lb}": v for lb, v in result["ap"].items()})
    flat.update({f"{prefix}ap_top1.{lb}": v for lb, v in result["ap_top1"].items()})
    for label, sizes in result["recall_by_size"].items():
        flat.update({f"{prefix}recall.{label}.{s}": c["recall"] for s, c in sizes.items() if c["recall"] is not None})
    return flat


def scenes(params: Params) -> None:
    paths = params.paths
    pipeline = MaskPipeline.from_params(params, paths.models / "classifier.pt")
    run, result = evaluate_scenes(pipeline, params)
    out = paths.reports / "scenes"
    figures = write_reports(run, result, pipeline.labels, out, params.scenes.gallery_size, params.scenes.iou_threshold)
    write_json(out / "metrics.json", summary(result))

    ref = tracking.read_run_ref(paths.models / "mlflow_run.json")
    tracking.setup(params.mlflow)
    with mlflow.start_run(run_id=ref["run_id"]):
        mlflow.log_metrics(flat_metrics(result))
        for name, fig in figures.items():
            mlflow.log_figure(fig, f"plots/scenes/{name}")
        mlflow.log_artifact(str(out / "worst_errors.png"), "plots/scenes")
        mlflow.log_artifact(str(out / "metrics.json"), "evaluation/scenes")
    print(
        f"\n{result['scenes']} scenes, {result['faces']} faces, "
        f"{params.detector.name} at long side {params.pipeline.detect_long_side or 'native'}"
    )
    print(format_scene_table(result, pipeline.labels))
    print(f"median {result['frame_ms_median']:.1f} ms/frame ({result['fps']:.1f} fps)")


def main(argv: list[str] | None = None) -> int:
    return run_stage("scenes", scenes, argv)


if __name__ == "__main__":
    sys.exit(main())
