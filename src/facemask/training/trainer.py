"""The Lightning Trainer of a training stage, built by Hydra from its configuration.

`conf/trainer/` (classifier) and `conf/detector_train/` (detector) each hold a `lightning` block
(the `pytorch_lightning.Trainer` arguments, `_target_` included) and named `callbacks`, each an
object `hydra.utils.instantiate` builds, as in lightning-hydra-template. Only what is known at run
time is added here: the logger, the checkpoint folder and the stage's own callbacks.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.loggers import MLFlowLogger

from facemask import mlflow_tracking
from facemask.config import ConfigError
from facemask.config import Mlflow as MlflowConfig
from facemask.training.history import History


def build_callbacks(configs: dict[str, dict[str, Any]], checkpoint_dir: Path | None = None) -> list[pl.Callback]:
    """Every configured callback; a `ModelCheckpoint` writes under `checkpoint_dir`."""
    callbacks = []
    for name, cfg in configs.items():
        callback = instantiate(cfg)
        if not isinstance(callback, pl.Callback):
            raise TypeError(f"callbacks.{name}: {cfg['_target_']} is not a Lightning callback")
        if isinstance(callback, ModelCheckpoint) and checkpoint_dir is not None:
            callback.dirpath = str(checkpoint_dir)
        callbacks.append(callback)
    return callbacks


def build_trainer(
    lightning: dict[str, Any],
    callbacks: dict[str, dict[str, Any]],
    *,
    logger: Any = False,
    checkpoint_dir: Path | None = None,
    extra_callbacks: list[pl.Callback] = (),
) -> tuple[pl.Trainer, ModelCheckpoint | None]:
    """(the configured Trainer, its ModelCheckpoint if one is configured)."""
    built = build_callbacks(callbacks, checkpoint_dir) + list(extra_callbacks)
    trainer = instantiate(lightning, logger=logger, callbacks=built, _convert_="all")
    checkpoint = next((c for c in built if isinstance(c, ModelCheckpoint)), None)
    return trainer, checkpoint


@dataclass
class Fitted:
    """What a recorded fit leaves: the per-epoch history, the best epoch's monitored score, the fit's
    seconds and the Trainer (its device)."""

    history: pd.DataFrame
    best_score: float
    seconds: float
    trainer: pl.Trainer


def fit_recorded(
    module: pl.LightningModule,
    datamodule: pl.LightningDataModule,
    section: str,
    lightning: dict[str, Any],
    callbacks: dict[str, dict[str, Any]],
    mlflow_cfg: MlflowConfig,
    run_id: str,
    checkpoint_dir: Path,
) -> Fitted:
    """Both training stages' fit: the configured Trainer (`section`: its config key, for errors)
    logging each epoch to the MLflow run `run_id`, then the best checkpoint's weights loaded back
    into `module` and the checkpoints removed. Under DDP the other ranks have exited by then: the
    process group is torn down, so what follows (rank zero's alone) waits on nobody."""
    uri = mlflow_tracking.tracking_uri(mlflow_cfg)
    logger = MLFlowLogger(experiment_name=mlflow_cfg.experiment, tracking_uri=uri, run_id=run_id)
    history = History()
    shutil.rmtree(checkpoint_dir, ignore_errors=True)
    trainer, checkpoint = build_trainer(
        lightning, callbacks, logger=logger, checkpoint_dir=checkpoint_dir, extra_callbacks=[history]
    )
    if checkpoint is None:
        raise ConfigError(f"{section}.callbacks: a ModelCheckpoint is needed (its best epoch is the model)")
    started = time.perf_counter()
    trainer.fit(module, datamodule=datamodule)
    seconds = time.perf_counter() - started
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    state = torch.load(checkpoint.best_model_path, map_location="cpu", weights_only=True)["state_dict"]
    module.load_state_dict(state)
    shutil.rmtree(checkpoint_dir, ignore_errors=True)
    return Fitted(pd.DataFrame(history.rows), float(checkpoint.best_model_score), seconds, trainer)
