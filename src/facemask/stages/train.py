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
from pytorch_lightning.loggers import MLFlowLogger
from pytorch_lightning.utilities.rank_zero import rank_zero_only

from facemask import mlflow_tracking, plots
from facemask.classifier import MaskClassifier, save_classifier
from facemask.cli import run_stage, write_json
from facemask.config import ConfigError, Params
from facemask.preprocess import Preprocessor
from facemask.scenes.rejection import fit_rejection
from facemask.training.history import History
from facemask.training.trainer import build_classifier_fit, build_trainer

log = logging.getLogger("facemask.train")


def train(params: Params) -> None:
    pl.seed_everything(params.seed, workers=True)
    tp, paths, labels = params.trainer, params.paths, params.classifier_labels
    dm, module = build_classifier_fit(params)
    if rank_zero_only.rank != 0:  # a DDP process Lightning or torchrun started: it trains, rank zero records
        trainer, _ = build_trainer(tp.lightning, tp.callbacks, checkpoint_dir=paths.models / "checkpoints")
        trainer.fit(module, datamodule=dm)
        return

    experiment_id = mlflow_tracking.setup(params.mlflow)
    ckpt_dir = paths.models / "checkpoints"
    shutil.rmtree(ckpt_dir, ignore_errors=True)
    history = History()
    with mlflow.start_run(experiment_id=experiment_id, run_name=f"train-{params.model.backbone}") as run:
        dump = params.model_dump(mode="json")  # the sections this stage declares in dvc.yaml, no more
        read = {k: dump[k] for k in ("seed", "crop", "model", "trainer")}
        read |= {"data": {"labels": dump["data"]["labels"]}, "detector": {"name": dump["detector"]["name"]}}
        mlflow.log_params(mlflow_tracking.flatten(read))
        mlflow.log_params({"data.train_counts": dict(zip(labels, dm.class_counts().tolist(), strict=True))})
        drawn = dm.drawn_class_counts().round().astype(int).tolist()
        mlflow.log_params({"data.drawn_per_epoch": dict(zip(labels, drawn, strict=True))})
        mlflow.set_tags({"stage": "train", "backbone": params.model.backbone, "detector": params.detector.name})
        uri = mlflow_tracking.tracking_uri(params.mlflow)
        logger = MLFlowLogger(experiment_name=params.mlflow.experiment, tracking_uri=uri, run_id=run.info.run_id)
        trainer, checkpoint = build_trainer(
            tp.lightning, tp.callbacks, logger=logger, checkpoint_dir=ckpt_dir, extra_callbacks=[history]
        )
        if checkpoint is None:
            raise ConfigError("trainer.callbacks: a ModelCheckpoint is needed (its best epoch is the model)")
        paths.reports.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        trainer.fit(module, datamodule=dm)
        seconds = time.perf_counter() - started
        if torch.distributed.is_initialized():  # DDP: the other ranks have exited; what follows is rank zero's
            torch.distributed.destroy_process_group()  # alone (metrics must not wait on them: a gloo error)

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
        if meta["reject_label"] is not None:  # the rejection threshold belongs to this model
            classifier = MaskClassifier(network, labels, Preprocessor.from_config(params.model), meta)
            meta["reject_min_probability"], sweep = fit_rejection(params, classifier)
            sweep.to_csv(paths.reports / "rejection.csv", index=False)
            mlflow.log_figure(plots.rejection_sweep(sweep, meta["reject_min_probability"]), "plots/rejection.png")
            mlflow.log_metric("reject_min_probability", meta["reject_min_probability"])
            log.info(
                "rejection threshold %.2f (val-scene mAP %.3f)", meta["reject_min_probability"], sweep["map"].max()
            )
        save_classifier(network, params.model, labels, paths.models / "classifier.pt", meta)

        frame = pd.DataFrame(history.rows)
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
            "reject_min_probability": meta.get("reject_min_probability"),
        }
        mlflow.log_metrics({f"train_summary.{k}": v for k, v in summary.items() if v is not None})
        mlflow_tracking.write_run_ref(
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
