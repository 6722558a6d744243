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

from facemask.boxes import match
from facemask.config import Detector, DetectorTrain, Pipeline
from facemask.detection.retinaface_mnet import RetinaFaceMobileNet, RetinaFaceMobileNetDetector, prior_boxes
from facemask.detector_training.multibox import build_targets, multibox_loss
from facemask.detector_training.scene_data import BoxedScene
from facemask.imageio import read_image
from facemask.pipeline import detect_at
from facemask.scenes.average_precision import Prediction, average_precision
from facemask.training.pretrained import freeze, keep_frozen_in_eval

FACE = "face"


def detection_scores(scenes: list[BoxedScene], found: list[tuple[np.ndarray, np.ndarray]], iou: float) -> dict:
    """Class-agnostic recall, precision and AP of detections (boxes, scores) against annotated boxes."""
    gts = [(s.boxes, [FACE] * len(s.boxes)) for s in scenes]
    preds = [Prediction(b, [FACE] * len(b), sc, np.ones(len(b), dtype=np.float32)) for b, sc in found]
    hits = sum(len(match(s.boxes, b, sc, iou)) for s, (b, sc) in zip(scenes, found, strict=True))
    n_gt, n_det = sum(len(s.boxes) for s in scenes), sum(len(b) for b, _ in found)
    return {
        "recall": hits / n_gt if n_gt else 0.0,
        "precision": hits / n_det if n_det else 0.0,
        "ap": average_precision(gts, preds, [FACE], iou)["map"] if n_gt else 0.0,
    }


class DetectorModule(pl.LightningModule):
    def __init__(
        self,
        network: RetinaFaceMobileNet,
        cfg: DetectorTrain,
        detector: Detector,
        pipeline: Pipeline,
        val_scenes: list[BoxedScene],
        max_pixels: int,
    ):
        super().__init__()
        self.network, self.cfg, self.detector_cfg, self.pipeline = network, cfg, detector, pipeline
        self.teacher = copy.deepcopy(network).eval().requires_grad_(False)
        self.val_scenes, self.max_pixels = val_scenes, max_pixels
        freeze(self.network, cfg.freeze)
        self._priors = prior_boxes(cfg.input_size, cfg.input_size)
        self._found: list[tuple[np.ndarray, np.ndarray]] = []

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
            faces = detect_at(detector, image, self.pipeline.detect_long_side, self.pipeline.max_upscale)
            boxes = np.array([f.box for f in faces], dtype=np.float32).reshape(-1, 4)
            self._found.append((boxes, np.array([f.score for f in faces], dtype=np.float32)))

    def on_validation_epoch_end(self) -> None:
        scenes = self.val_scenes[: len(self._found)]
        for key, value in detection_scores(scenes, self._found, 0.5).items():
            self.log(f"val/{key}", value, prog_bar=key != "precision")

    def configure_optimizers(self):
        params = [p for p in self.network.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=self.cfg.lr, weight_decay=self.cfg.weight_decay)
        # a warm-up of at least two steps: a tiny run (a few batches) plans for 20
        steps = max(20, int(self.trainer.estimated_stepping_batches))
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=self.cfg.lr, total_steps=steps, pct_start=0.1)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
