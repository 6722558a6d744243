"""Stage 4, train: fit the timm classifier on the face crops, log the run to MLflow.

Outputs ``models/classifier.pt`` (the artefact), ``models/mlflow_run.json`` (the run the evaluate
stage attaches to), ``reports/train.json`` (metrics) and ``reports/train_history.csv`` (plots).
"""

from __future__ import annotations

import logging
import sys

import mlflow
import numpy as np
import pytorch_lightning as pl
import timm
import torch
from pytorch_lightning.utilities.rank_zero import rank_zero_only

from facemask import mlflow_tracking, plots
from facemask.classifier import MaskClassifier, checked_onnx_graph, save_classifier
from facemask.cli import run_stage, write_json
from facemask.config import Params
from facemask.crop_scoring import predict_crops, split_crops
from facemask.data.feedback import SOURCE as FEEDBACK
from facemask.detection import detector_backend
from facemask.imageio import read_image
from facemask.numerics import reproducible_inference
from facemask.preprocess import Preprocessor
from facemask.quantization import quantize_graph
from facemask.scenes.rejection import fit_rejection
from facemask.training.classifier_fit import build_classifier_fit
from facemask.training.datamodule import CropDataModule
from facemask.training.trainer import build_trainer, fit_recorded

log = logging.getLogger("facemask.train")
# the crop settings this stage reads (dvc.yaml declares these keys, not crop.workers or jpeg_quality)
CROP_GEOMETRY = {"size", "margin", "align"}


def train(params: Params) -> None:
    pl.seed_everything(params.train_seed, workers=True)
    tp, paths, labels = params.trainer, params.paths, params.classifier_labels
    if params.crop.background.enabled:  # the rejection threshold is fitted through the detector: fail now,
        detector_backend(params.detector).weights_file(params.detector)  # not after the training
    dm, module = build_classifier_fit(params)
    if rank_zero_only.rank != 0:  # a DDP process Lightning or torchrun started: it trains, rank zero records
        trainer, _ = build_trainer(tp.lightning, tp.callbacks, checkpoint_dir=paths.models / "checkpoints")
        trainer.fit(module, datamodule=dm)
        return

    experiment_id = mlflow_tracking.setup(params.mlflow)
    with mlflow.start_run(experiment_id=experiment_id, run_name=f"train-{params.model.backbone}") as run:
        log_inputs(params, dm)
        paths.reports.mkdir(parents=True, exist_ok=True)
        fitted = fit_recorded(module, dm, "trainer", tp.lightning, tp.callbacks, params.mlflow, run.info.run_id,
                              paths.models / "checkpoints")  # fmt: skip
        network = module.network.eval()
        meta = {
            "run_id": run.info.run_id,
            "best_val_macro_f1": fitted.best_score,
            "timm": timm.__version__,
            "crop": params.crop.model_dump(mode="json", include=CROP_GEOMETRY),  # serving crops faces as training did
            "reject_label": params.crop.background.label if params.crop.background.enabled else None,
            "compliant_label": params.data.compliant,  # the gate, compliance and drawings read it here
        }
        graph = checked_onnx_graph(network, params.model.input_size)  # served, calibrated, stored: one export
        int8_graph = None
        if params.model.int8_calibration:
            int8_graph, meta["int8"] = calibrated_int8(params, network, graph, labels)
        if meta["reject_label"] is not None:  # the rejection threshold belongs to this model, as served
            runtime = params.pipeline.classifier_runtime
            pre = Preprocessor.from_config(params.model)
            meta["reject_min_probability"], meta["drift_reference"] = record_rejection(
                params, MaskClassifier(network, labels, pre, meta, runtime, int8_graph, graph)
            )
        save_classifier(network, params.model, labels, paths.classifier, meta, int8_graph, graph)

        frame = fitted.history
        frame.to_csv(paths.reports / "train_history.csv", index=False)
        mlflow.log_figure(plots.training_curves(frame), "plots/training_curves.png")
        mlflow.log_artifact(str(paths.augmentation), "augment")
        mlflow.log_artifact(str(paths.augment_preview), "augment")
        example = np.zeros((1, 3, params.model.input_size, params.model.input_size), dtype=np.float32)
        model_info = mlflow.pytorch.log_model(
            network,
            name="model",
            input_example=example,
            serialization_format="pickle",
            pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", f"timm=={timm.__version__}"],
            extra_files=[str(paths.classifier)],  # the artefact the service loads
        )
        summary = {
            "best_val_macro_f1": round(fitted.best_score, 4),
            "epochs": len(frame),
            "train_seconds": round(fitted.seconds, 1),
            "seconds_per_epoch": round(float(frame["seconds"].median()), 2) if len(frame) else None,
            "reject_min_probability": meta.get("reject_min_probability"),
        }
        mlflow.log_metrics({f"train_summary.{k}": v for k, v in summary.items() if v is not None})
        uri = mlflow_tracking.tracking_uri(params.mlflow)
        mlflow_tracking.write_run_ref(paths.classifier_run, run.info.run_id, experiment_id, uri, model_info.model_uri)
    write_json(paths.reports / "train.json", summary)
    best, epochs = summary["best_val_macro_f1"], summary["epochs"]
    log.info("best val macro-F1 %.4f after %d epochs (%.0f s)", best, epochs, fitted.seconds)


def log_inputs(params: Params, dm: CropDataModule) -> None:
    """The run's parameters: the sections this stage declares in dvc.yaml, no more; the class counts."""
    labels, dump = params.classifier_labels, params.model_dump(mode="json")
    read = {k: dump[k] for k in ("train_seed", "model", "trainer")}
    read["crop"] = {k: v for k, v in dump["crop"].items() if k in {*CROP_GEOMETRY, "background"}}
    read |= {"data": {"labels": dump["data"]["labels"]}, "detector": {"name": dump["detector"]["name"]}}
    mlflow.log_params(mlflow_tracking.flatten(read))
    mlflow.log_params({"data.train_counts": dict(zip(labels, dm.class_counts().tolist(), strict=True))})
    drawn = dm.drawn_class_counts().round().astype(int).tolist()
    mlflow.log_params({"data.drawn_per_epoch": dict(zip(labels, drawn, strict=True))})
    # the reviewed alerts this model learns from and is tested on (`make retrain`), counted per split
    mlflow.log_metrics({f"feedback.{split}_faces": int(frame["source"].eq(FEEDBACK).sum())
                        for split, frame in dm.frames.items()})  # fmt: skip
    mlflow.set_tags({"stage": "train", "backbone": params.model.backbone, "detector": params.detector.name})


def calibrated_int8(
    params: Params, network: torch.nn.Module, fp32_graph: bytes, labels: list[str]
) -> tuple[bytes, dict]:
    """The int8 graph of the network's ONNX graph `fp32_graph`, calibrated on `model.int8_calibration`
    training-split crops (shuffled with the seed), and how far it strays from fp32 on the val-split
    crops (logged to the run)."""
    pre = Preprocessor.from_config(params.model)
    train = split_crops(params, "train").sample(frac=1.0, random_state=params.train_seed)[
        : params.model.int8_calibration
    ]
    crops = [read_image(params.paths.crops / name, params.data.max_image_pixels) for name in train["crop"]]
    batches = ({"input": pre.batch(crops[i : i + 16], bgr=True).numpy()} for i in range(0, len(crops), 16))
    graph = quantize_graph(fp32_graph, batches)
    val = split_crops(params, "val")
    fp32 = predict_crops(MaskClassifier(network, labels, pre, {}, "onnxruntime", fp32_graph=fp32_graph), params, val)
    int8 = predict_crops(MaskClassifier(network, labels, pre, {}, "onnxruntime_int8", graph), params, val)
    stats = {
        "calibration_crops": len(crops),
        "val_top1_agreement": round(float((fp32.argmax(1) == int8.argmax(1)).mean()), 4),
        "val_max_probability_gap": round(float(np.abs(fp32 - int8).max()), 4),
    }
    mlflow.log_metrics({f"int8_{k}": v for k, v in stats.items()})
    log.info("int8 graph: top-1 as fp32 on %.1f%% of the val crops", 100 * stats["val_top1_agreement"])
    return graph, stats


def record_rejection(params: Params, classifier: MaskClassifier) -> tuple[float, dict]:
    """The model's rejection threshold, fitted on the val-split scenes (the sweep recorded), and the
    drift reference measured in the same pass (`facemask.drift`)."""
    threshold, sweep, reference = fit_rejection(params, classifier)
    sweep.to_csv(params.paths.reports / "rejection.csv", index=False)
    mlflow.log_figure(plots.rejection_sweep(sweep, threshold), "plots/rejection.png")
    mlflow.log_metric("reject_min_probability", threshold)
    log.info("rejection threshold %.2f (val-scene mAP %.3f)", threshold, sweep["map"].max())
    return threshold, reference


def main(argv: list[str] | None = None) -> int:
    reproducible_inference()  # a model is made of what this stage computes: the same floats on every x86
    return run_stage("train", train, argv)


if __name__ == "__main__":
    sys.exit(main())
