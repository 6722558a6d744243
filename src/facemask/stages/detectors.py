"""Stage 8, detectors: the scene evaluation once per detector variant (backend x input size).

Each variant is a child run of the training run in MLflow (params `detector`, `detect_long_side`;
metrics `map`, `ap.<class>`, `fps`), so the MLflow UI charts accuracy against frames per second.
``reports/scenes/detectors.csv`` holds the same table and ``detectors.png`` the scatter plot.
"""

from __future__ import annotations

import logging
import sys

import mlflow
import pandas as pd

from facemask import machine, mlflow_tracking, plots
from facemask.cli import run_stage
from facemask.config import Params
from facemask.detection import detector_backend
from facemask.scenes.evaluate import evaluate_scenes, flat_metrics

log = logging.getLogger("facemask.detectors")


def compare(params: Params) -> None:
    paths = params.paths
    ref = mlflow_tracking.attach(params.mlflow, paths.classifier_run)
    rows = []
    for variant in params.scenes.compare:
        cfg = params.detectors[variant.detector]
        reason = detector_backend(cfg).missing_weights(cfg, key=f"detectors.{cfg.name}.weights")
        if reason:
            log.warning("skipping %s: %s", variant.name, reason)
            rows.append({"variant": variant.name, "status": f"skipped: {reason}"})
            continue
        settings = params.pipeline.model_copy(update={"detect_long_side": variant.detect_long_side})
        variant_params = params.model_copy(update={"detector": cfg, "pipeline": settings})
        _, result = evaluate_scenes(variant_params, paths.classifier, desc=variant.name)
        metrics = flat_metrics(result, prefix="")
        with (
            mlflow.start_run(run_id=ref["run_id"]),
            mlflow.start_run(run_name=f"scenes {variant.name}", experiment_id=ref["experiment_id"], nested=True),
        ):
            mlflow.log_params(
                {
                    "detector": variant.detector,
                    "detect_long_side": variant.detect_long_side,
                    "scenes": result["scenes"],
                    "iou_threshold": result["iou_threshold"],
                }
            )
            mlflow.log_metrics(metrics)
            mlflow.set_tag("facemask.kind", "detector-comparison")
        rows.append(
            {
                "variant": variant.name,
                "status": "ok",
                "map": result["map"],
                "map_top1": result["map_top1"],
                **{f"ap_{lb}": v for lb, v in result["ap"].items()},
                "detector_recall": result["detector_recall"],
                "detector_precision": result["detector_precision"],
                "recall_at_precision": result["recall_at_precision"]["recall"],
                **{f"map_{size}": v["map"] for size, v in result["ap_by_size"].items()},
                **{
                    f"recall_{size}": c["recall"]
                    for size, c in result["recall_by_size"]["all"].items()
                    if size != "all"
                },
                "fps": result["fps"],
                "detect_ms": result["detect_ms_median"],
                "classify_ms": result["classify_ms_median"],
            }
        )
        log.info("%s: mAP %.3f, %.1f fps", variant.name, result["map"], result["fps"])
    table = pd.DataFrame(rows).assign(machine=machine.label())  # every fps of one run, on this machine
    out = paths.reports / "scenes"
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "detectors.csv", index=False)
    done = table[table["status"] == "ok"]
    fig = plots.accuracy_vs_speed(done)
    fig.suptitle(machine.label(), fontsize=8, x=0.99, ha="right")
    fig.savefig(out / "detectors.png", dpi=110)
    with mlflow.start_run(run_id=ref["run_id"]):
        mlflow.log_figure(fig, "plots/scenes/detectors.png")
        mlflow.log_table(table, "evaluation/scenes/detectors.json")
    with pd.option_context("display.width", 160, "display.max_columns", 20):
        print(table.round(3).to_string(index=False))


def main(argv: list[str] | None = None) -> int:
    return run_stage("detectors", compare, argv)


if __name__ == "__main__":
    sys.exit(main())
