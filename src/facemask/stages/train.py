"""Stage 4, train: fit the timm classifier on the face crops, log the run to MLflow.

Outputs ``models/classifier.pt`` (the artefact), ``models/mlflow_run.json`` (the run the evaluate
stage attaches to), ``reports/train.json`` (metrics) and ``reports/train_history.csv`` (plots).
"""

from __future__ import annotations

import logging
import shutil
import sys
import time

import mlflow
import numpy as np
import pandas as pd
import pytorch_lightning as pl
import timm
import torch
from pytorch_lightning.callbacks import EarlyStopping, ModelCheckpoint
from pytorch_lightning.loggers import MLFlowLogger

from facemask import plots, tracking
from facemask.augment import load_augmentation
from facemask.classifier import save_classifier
from facemask.config import Params
from facemask.preprocess import Preprocessor
from facemask.stages._runner import run_stage, write_json
from facemask.training.datamodule import CropDataModule
from facemask.training.history import History
from facemask.training.module import MaskClassifierModule

log = logging.getLogger("facemask.train")
MONITOR = "val/macro_f1"


def build(params: Params) -> tuple[CropDataModule, MaskClassifierModule]:
    """The data module and the Lightning module of a training run (also used by `make bench`)."""
    tp, paths, labels = params.trainer, params.paths, params.classifier_labels
    dm = CropDataModule(
        paths.interim / "crops.csv",
        paths.crops,
        labels,
        Preprocessor.from_config(params.model),
        load_augmentation(paths.models / "augment.json"),
        batch_size=tp.batch_size,
        num_workers=tp.num_workers,
        balance=tp.balance,
        seed=params.seed,
        epoch_samples=tp.epoch_samples,
        scene_share=tp.scene_share,
    )
    weights = dm.class_weights() if tp.balance == "class_weights" else None
    return dm, MaskClassifierModule(params.model, len(labels), tp.lr, tp.weight_decay, tp.label_smoothing, weights)


def train(params: Params) -> None:
    pl.seed_everything(params.seed, workers=True)
    tp, paths, labels = params.trainer, params.paths, params.classifier_labels
    dm, module = build(params)

    experiment_id = tracking.setup(params.mlflow)
    ckpt_dir = paths.models / "checkpoints"
    shutil.rmtree(ckpt_dir, ignore_errors=True)
    history = History()
    with mlflow.start_run(experiment_id=experiment_id, run_name=f"train-{params.model.backbone}") as run:
        mlflow.log_params(tracking.flatten(params.model_dump(mode="json")))
        mlflow.log_params({"data.train_counts": dict(zip(labels, dm.class_counts().tolist(), strict=True))})
        drawn = dm.drawn_class_counts().round().astype(int).tolist()
        mlflow.log_params({"data.drawn_per_epoch": dict(zip(labels, drawn, strict=True))})
        mlflow.set_tags({"stage": "train", "backbone": params.model.backbone, "detector": params.detector.name})
        uri = tracking.tracking_uri(params.mlflow)
        logger = MLFlowLogger(experiment_name=params.mlflow.experiment, tracking_uri=uri, run_id=run.info.run_id)
        checkpoint = ModelCheckpoint(dirpath=ckpt_dir, filename="best", monitor=MONITOR, mode="max", save_top_k=1)
        trainer = pl.Trainer(
            max_epochs=tp.max_epochs,
            accelerator=tp.accelerator,
            deterministic=tp.deterministic,
            logger=logger,
            callbacks=[checkpoint, EarlyStopping(MONITOR, mode="max", patience=tp.early_stopping_patience), history],
            limit_train_batches=tp.limit_train_batches,
            limit_val_batches=tp.limit_val_batches,
            enable_model_summary=False,
            log_every_n_steps=10,
        )
        started = time.perf_counter()
        trainer.fit(module, datamodule=dm)
        seconds = time.perf_counter() - started

        state = torch.load(checkpoint.best_model_path, map_location="cpu", weights_only=True)["state_dict"]
        module.load_state_dict(state)
        network = module.network.eval()
        best_f1 = float(checkpoint.best_model_score)
        meta = {
            "run_id": run.info.run_id,
            "best_val_macro_f1": best_f1,
            "timm": timm.__version__,
            "crop": params.crop.model_dump(mode="json"),  # serving crops faces exactly as training did
            "reject_label": params.crop.background.label if params.crop.background.enabled else None,
        }
        save_classifier(network, params.model, labels, paths.models / "classifier.pt", meta)

        frame = pd.DataFrame(history.rows)
        paths.reports.mkdir(parents=True, exist_ok=True)
        frame.to_csv(paths.reports / "train_history.csv", index=False)
        mlflow.log_figure(plots.training_curves(frame), "plots/training_curves.png")
        mlflow.log_artifact(str(paths.models / "augment.json"), "augment")
        mlflow.log_artifact(str(paths.reports / "augment_preview.png"), "augment")
        example = np.zeros((1, 3, params.model.input_size, params.model.input_size), dtype=np.float32)
        model_info = mlflow.pytorch.log_model(
            network,
            name="model",
            input_example=example,
            serialization_format="pickle",
            pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", f"timm=={timm.__version__}"],
            extra_files=[str(paths.models / "classifier.pt")],  # the artefact the service loads
        )
        summary = {
            "best_val_macro_f1": round(best_f1, 4),
            "epochs": len(frame),
            "train_seconds": round(seconds, 1),
            "seconds_per_epoch": round(float(frame["seconds"].median()), 2) if len(frame) else None,
        }
        mlflow.log_metrics({f"train_summary.{k}": v for k, v in summary.items() if v is not None})
        tracking.write_run_ref(
            paths.models / "mlflow_run.json", run.info.run_id, experiment_id, uri, model_info.model_uri
        )
    write_json(paths.reports / "train.json", summary)
    log.info(
        "best val macro-F1 %.4f after %d epochs (%.0f s)", summary["best_val_macro_f1"], summary["epochs"], seconds
    )


def main(argv: list[str] | None = None) -> int:
    return run_stage("train", train, argv)


if __name__ == "__main__":
    sys.exit(main())
