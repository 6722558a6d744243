"""The classifier's training run, assembled from the configuration: its DataModule over the face
crops and its LightningModule, pretrained weights prepared (BatchNorm re-estimated on our crops)."""

from __future__ import annotations

import logging

from facemask.augment import load_augmentation
from facemask.config import Params, PretrainedWeights
from facemask.preprocess import Preprocessor
from facemask.training.datamodule import CropDataModule
from facemask.training.module import MaskClassifierModule
from facemask.training.pretrained import refold_batchnorm

log = logging.getLogger(__name__)


def build_classifier_fit(params: Params) -> tuple[CropDataModule, MaskClassifierModule]:
    """The data module and the Lightning module of a training run (also used by `make bench`)."""
    tp, paths, labels = params.trainer, params.paths, params.classifier_labels
    dm = CropDataModule(
        paths.crop_table,
        paths.crops,
        labels,
        Preprocessor.from_config(params.model),
        load_augmentation(paths.augmentation),
        batch_size=tp.batch_size,
        num_workers=tp.num_workers,
        balance=tp.balance,
        seed=params.train_seed,
        epoch_samples=tp.epoch_samples,
        scene_share=tp.scene_share,
    )
    weights = dm.class_weights() if tp.balance == "class_weights" else None
    module = MaskClassifierModule(
        params.model, len(labels), tp.lr, tp.weight_decay, tp.label_smoothing, weights, tp.focal_gamma
    )
    pretrained = params.model.pretrained
    if isinstance(pretrained, PretrainedWeights) and pretrained.batchnorm == "folded":
        layers = refold_batchnorm(module.network, dm.sample_batches(pretrained.bn_samples))
        log.info("BatchNorm statistics of %d layers re-estimated on %d train crops", layers, pretrained.bn_samples)
    return dm, module
