"""The Lightning Trainer of a training stage, built by Hydra from its configuration.

`conf/trainer/` (classifier) and `conf/detector_train/` (detector) each hold a `lightning` block
(the `pytorch_lightning.Trainer` arguments, `_target_` included) and named `callbacks`, each an
object `hydra.utils.instantiate` builds, as in lightning-hydra-template. Only what is known at run
time is added here: the logger, the checkpoint folder and the stage's own callbacks.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from hydra.utils import instantiate
from pytorch_lightning.callbacks import ModelCheckpoint

from facemask.augment import load_augmentation
from facemask.config import Params, PretrainedWeights
from facemask.preprocess import Preprocessor
from facemask.training.datamodule import CropDataModule
from facemask.training.module import MaskClassifierModule
from facemask.training.pretrained import refold_batchnorm

log = logging.getLogger(__name__)


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


def build_classifier_fit(params: Params) -> tuple[CropDataModule, MaskClassifierModule]:
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
    module = MaskClassifierModule(params.model, len(labels), tp.lr, tp.weight_decay, tp.label_smoothing, weights)
    pretrained = params.model.pretrained
    if isinstance(pretrained, PretrainedWeights) and pretrained.batchnorm == "folded":
        layers = refold_batchnorm(module.network, dm.sample_batches(pretrained.bn_samples))
        log.info("BatchNorm statistics of %d layers re-estimated on %d train crops", layers, pretrained.bn_samples)
    return dm, module
