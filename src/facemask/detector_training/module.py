"""LightningModule: fine-tune RetinaFace-MobileNet0.25 with the multibox loss, validated as served.

Validation runs the network exactly as the service does (`detect_at` at the pipeline's input size,
the detector's thresholds and NMS) on whole held-out scenes and reports recall at IoU 0.5, precision
and class-agnostic AP.
"""

from __future__ import annotations

import copy

import numpy as np
import pytorch_lightning as pl
import torch

from facemask.config import Detector, DetectorTrain, Pipeline, Scenes
from facemask.detection.retinaface_mnet import RetinaFaceMobileNet, RetinaFaceMobileNetDetector, prior_boxes
from facemask.detector_training.multibox import build_targets, multibox_loss
from facemask.detector_training.scene_data import BoxedScene
from facemask.imageio import read_image
from facemask.pipeline import detect_at
from facemask.scenes.detection import detector_scores
from facemask.training.pretrained import freeze, keep_frozen_in_eval


class DetectorModule(pl.LightningModule):
    def __init__(
        self,
        network: RetinaFaceMobileNet,
        cfg: DetectorTrain,
        detector: Detector,
        pipeline: Pipeline,
        val_scenes: list[BoxedScene],
        max_pixels: int,
        scoring: Scenes,
    ):
        super().__init__()
        self.network, self.cfg, self.detector_cfg, self.pipeline = network, cfg, detector, pipeline
        self.scoring = scoring  # iou_threshold, size_bins: as the promotion gate scores
        self.teacher = copy.deepcopy(network).eval().requires_grad_(False)
        self.val_scenes, self.max_pixels = val_scenes, max_pixels
        freeze(self.network, cfg.freeze)
        self._priors = prior_boxes(cfg.input_size, cfg.input_size)
        self._found: list[np.ndarray] = []  # per val scene (N, 5): box, score, as served

    def on_train_epoch_start(self) -> None:
        self.teacher.eval()
        # keeps the pretrained BatchNorm statistics (small batches estimate them badly)
        keep_frozen_in_eval(self.network, self.cfg.freeze, all_batchnorm=self.cfg.freeze_batchnorm)

    def training_step(self, batch: tuple[torch.Tensor, list[torch.Tensor]], _: int) -> torch.Tensor:
        images, boxes = batch
        cfg = self.cfg
        with torch.no_grad():
            _, teacher_conf, teacher_lms = self.teacher(images)
        loc, logits, lms = self.network.heads(images)
        priors = self._priors.to(images.device)
        targets = build_targets(boxes, priors, teacher_conf[..., 1], cfg.match_iou, cfg.unboxed_min_score)
        losses = multibox_loss(
            loc,
            logits,
            lms,
            targets,
            teacher_lms,
            cfg.neg_ratio,
            cfg.min_negatives,
            cfg.landmark_weight,
            cfg.box_weight,
        )
        for key, value in losses.items():
            self.log(
                f"train/{key}", value, on_step=False, on_epoch=True, prog_bar=key == "loss", batch_size=len(images)
            )
        return losses["loss"]

    def on_validation_epoch_start(self) -> None:
        self._found = []

    def validation_step(self, batch: torch.Tensor, _: int) -> None:
        d = self.detector_cfg
        detector = RetinaFaceMobileNetDetector(self.network, d.score_threshold, d.nms_threshold, d.top_k, d.min_face)
        for index in batch.tolist():
            image = read_image(self.val_scenes[index].path, self.max_pixels)
            faces = detect_at(detector, image, self.pipeline)
            self._found.append(np.array([[*f.box, f.score] for f in faces], dtype=np.float32).reshape(-1, 5))

    def on_validation_epoch_end(self) -> None:
        scenes = self.val_scenes[: len(self._found)]
        # the promotion gate's scoring: boxes through the detector's box_fit, at the gate's IoU
        scores = detector_scores(scenes, self._found, self.scoring.iou_threshold, self.scoring.size_bins,
                                 self.detector_cfg.box_fit)  # fmt: skip
        for key in ("recall", "precision", "ap"):
            self.log(f"val/{key}", float(scores[key]), prog_bar=key != "precision")

    def configure_optimizers(self):
        params = [p for p in self.network.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=self.cfg.lr, weight_decay=self.cfg.weight_decay)
        # a warm-up of at least two steps: a tiny run (a few batches) plans for 20
        steps = max(20, int(self.trainer.estimated_stepping_batches))
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=self.cfg.lr, total_steps=steps, pct_start=0.1)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
