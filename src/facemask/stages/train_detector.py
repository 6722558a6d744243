"""Stage, train_detector: fine-tune RetinaFace-MobileNet0.25 on the training scenes, export ONNX.

Starts from the stock WIDER FACE weights (`detector_train.init`), trains on augmented crops of the
train-split scenes, keeps the epoch with the best validation AP on the val-split scenes (detected as
served), and writes ``models/detector/`` (``detector.pt`` state_dict, ``detector.onnx`` for ONNX
Runtime, ``mlflow_run.json``), ``reports/detector/train.json`` and ``reports/detector/history.csv``.
The run is logged to MLflow as its own run, with the ONNX model; `promote_detector` registers it.
"""

from __future__ import annotations

import logging
import sys

import mlflow
import onnx
import pytorch_lightning as pl
import torch

from facemask import mlflow_tracking, plots
from facemask.cli import run_stage, write_json
from facemask.config import Params
from facemask.data.fetch import resolve_weights
from facemask.detection.retinaface_mnet import RetinaFaceMobileNet, load_state
from facemask.detector_training.export import export_onnx
from facemask.detector_training.module import DetectorModule
from facemask.detector_training.scene_data import SceneDataModule
from facemask.training.trainer import fit_recorded

log = logging.getLogger("facemask.train_detector")


def build(params: Params) -> tuple[SceneDataModule, DetectorModule]:
    """The data module and the Lightning module of a fine-tuning run."""
    cfg, paths = params.detector_train, params.paths
    dm = SceneDataModule(
        paths.manifest,
        paths.raw,
        cfg,
        params.pipeline.detect_long_side or 640,
        params.data.max_image_pixels,
        params.train_seed,
    )
    init = params.detectors[cfg.init]
    network = load_state(RetinaFaceMobileNet(), resolve_weights(init.weights, key=f"detectors.{cfg.init}.weights"))
    module = DetectorModule(
        network.train(), cfg, params.detectors[cfg.target], params.pipeline, dm.val_scenes,
        params.data.max_image_pixels, params.scenes,
    )  # fmt: skip
    return dm, module


def train_detector(params: Params) -> None:
    pl.seed_everything(params.train_seed, workers=True)
    cfg, paths = params.detector_train, params.paths
    reports = paths.reports / "detector"
    dm, module = build(params)
    log.info("%d training scenes, %d validation scenes", len(dm.train_scenes), len(dm.val_scenes))

    experiment_id = mlflow_tracking.setup(params.mlflow)
    with mlflow.start_run(experiment_id=experiment_id, run_name="train-detector") as run:
        mlflow.log_params(
            mlflow_tracking.flatten(
                {"train_seed": params.train_seed, "detector_train": params.detector_train.model_dump(mode="json")}
            )
        )
        mlflow.log_params({"data.train_scenes": len(dm.train_scenes), "data.val_scenes": len(dm.val_scenes)})
        mlflow.set_tags({"stage": "train_detector", "facemask.kind": "detector", "init": cfg.init})
        fitted = fit_recorded(module, dm, "detector_train", cfg.lightning, cfg.callbacks, params.mlflow,
                              run.info.run_id, paths.detector_onnx.parent / "checkpoints")  # fmt: skip
        network = module.network.eval().cpu()
        for path in (paths.detector_weights, paths.detector_onnx):
            path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(network.state_dict(), paths.detector_weights)
        onnx_path = export_onnx(network, paths.detector_onnx)

        frame = fitted.history
        reports.mkdir(parents=True, exist_ok=True)
        frame.to_csv(reports / "history.csv", index=False)
        mlflow.log_figure(plots.detector_curves(frame), "plots/detector_training.png")
        # one self-contained file (MLflow would split the weights into a .data file beside it)
        model_info = mlflow.onnx.log_model(onnx.load(str(onnx_path)), name="detector", save_as_external_data=False)
        best = frame.loc[frame["val_ap"].idxmax()] if len(frame) else None
        summary = {
            "best_epoch": int(best["epoch"]) if best is not None else None,
            "val_ap": round(fitted.best_score, 4),
            "val_recall": round(float(best["val_recall"]), 4) if best is not None else None,
            "val_precision": round(float(best["val_precision"]), 4) if best is not None else None,
            "epochs": len(frame),
            "train_seconds": round(fitted.seconds, 1),
            "seconds_per_epoch": round(float(frame["seconds"].median()), 2) if len(frame) else None,
            "device": str(fitted.trainer.strategy.root_device),
        }
        mlflow.log_metrics({f"summary.{k}": v for k, v in summary.items() if isinstance(v, int | float)})
        uri = mlflow_tracking.tracking_uri(params.mlflow)
        mlflow_tracking.write_run_ref(paths.detector_run, run.info.run_id, experiment_id, uri, model_info.model_uri)
    write_json(reports / "train.json", summary)
    log.info(
        "best val AP %.4f (recall %s) after %d epochs (%.0f s)",
        summary["val_ap"],
        summary["val_recall"],
        len(frame),
        fitted.seconds,
    )


def main(argv: list[str] | None = None) -> int:
    return run_stage("train_detector", train_detector, argv)


if __name__ == "__main__":
    sys.exit(main())
