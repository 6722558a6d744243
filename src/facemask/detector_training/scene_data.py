"""Annotated scenes as detector training data: random scale, face-centred crop, flip and colour.

The scenes are read from the ingest manifest (one row per annotated face, `kind == "scene"`), so the
detector trains on the same de-duplicated split as the classifier and never on an evaluation copy.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from facemask.config import DetectorTrain
from facemask.data.voc import SceneError
from facemask.detection.retinaface_mnet import BGR_MEAN, preprocess
from facemask.imageio import read_image


@dataclass(frozen=True)
class BoxedScene:
    """One training scene: its image file, its annotated face boxes (N, 4) in image pixels and their labels."""

    path: Path
    boxes: np.ndarray
    labels: list[str]


def manifest_scenes(manifest: Path, raw: Path, split: str) -> list[BoxedScene]:
    """The annotated scenes of one split, one entry per image, sorted by path."""
    frame = pd.read_csv(manifest)
    frame = frame[(frame["kind"] == "scene") & (frame["split"] == split)]
    scenes = []
    for (source, relpath), part in frame.groupby(["source", "relpath"], sort=True):
        boxes = part[["x1", "y1", "x2", "y2"]].to_numpy(dtype=np.float32)
        scenes.append(BoxedScene(raw / source / relpath, boxes, part["label"].astype(str).tolist()))
    return scenes


def photometric(image: np.ndarray, cfg: DetectorTrain, rng: np.random.Generator) -> np.ndarray:
    """Random brightness, contrast, saturation and hue (RetinaFace's colour distortion)."""
    p = cfg.photometric
    out = image.astype(np.float32)
    out = out * rng.uniform(1 - p.contrast, 1 + p.contrast) + rng.uniform(-p.brightness, p.brightness)
    hsv = cv2.cvtColor(np.clip(out, 0, 255).astype(np.uint8), cv2.COLOR_BGR2HSV).astype(np.float32)
    hsv[..., 1] *= rng.uniform(1 - p.saturation, 1 + p.saturation)
    hsv[..., 0] = (hsv[..., 0] + rng.uniform(-p.hue, p.hue) / 2) % 180  # OpenCV hue: 2 degrees a unit
    return cv2.cvtColor(np.clip(hsv, 0, 255).astype(np.uint8), cv2.COLOR_HSV2BGR)


def low_resolution(image: np.ndarray, cfg: DetectorTrain, rng: np.random.Generator) -> np.ndarray:
    """With probability `low_resolution.p`, the image shrunk by a log-uniform factor in
    [`min_scale`, 1] and enlarged back: the look of a small frame enlarged to the detector's input."""
    lr = cfg.low_resolution
    if lr.p == 0 or rng.random() >= lr.p:
        return image
    factor = math.exp(rng.uniform(math.log(lr.min_scale), 0.0))
    h, w = image.shape[:2]
    small = cv2.resize(image, (max(1, round(w * factor)), max(1, round(h * factor))), interpolation=cv2.INTER_AREA)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)


def random_crop(
    image: np.ndarray, boxes: np.ndarray, cfg: DetectorTrain, long_side: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """An `input_size` square from the scene resized to `long_side` x a log-uniform factor of
    `scale_range` (faces appear at the sizes the detector meets when serving, and smaller), centred
    on a random face with probability `face_centred`; boxes whose centre falls outside are dropped."""
    size = cfg.input_size
    h, w = image.shape[:2]
    lo, hi = cfg.scale_range
    scale = long_side / max(h, w) * math.exp(rng.uniform(math.log(lo), math.log(hi)))
    sw, sh = max(1, round(w * scale)), max(1, round(h * scale))
    resized = cv2.resize(image, (sw, sh), interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    boxes = boxes * scale
    if len(boxes) and rng.random() < cfg.face_centred:
        face = boxes[rng.integers(len(boxes))]
        cx = (face[0] + face[2]) / 2 + rng.uniform(-0.4, 0.4) * size
        cy = (face[1] + face[3]) / 2 + rng.uniform(-0.4, 0.4) * size
        x0, y0 = round(cx - size / 2), round(cy - size / 2)
    else:
        x0, y0 = (
            int(rng.integers(min(0, sw - size), max(0, sw - size) + 1)),
            int(rng.integers(min(0, sh - size), max(0, sh - size) + 1)),
        )
    canvas = np.empty((size, size, 3), dtype=np.uint8)
    canvas[:] = np.asarray(BGR_MEAN, dtype=np.uint8)
    sx0, sy0, sx1, sy1 = max(x0, 0), max(y0, 0), min(x0 + size, sw), min(y0 + size, sh)
    if sx1 > sx0 and sy1 > sy0:
        canvas[sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0] = resized[sy0:sy1, sx0:sx1]
    boxes = boxes - np.array([x0, y0, x0, y0], dtype=np.float32)
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2
    inside = np.all((centre >= 0) & (centre < size), axis=1)
    boxes = np.clip(boxes[inside], 0, size)
    return canvas, boxes.reshape(-1, 4)


class EpochSampler(Sampler):
    """Yields (epoch, i) for i < n; Lightning calls `set_epoch` at each epoch's start, so every
    epoch draws new crops, the same ones for the same seed whatever the worker count."""

    def __init__(self, n: int) -> None:
        self.n, self.epoch = n, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return iter([(self.epoch, i) for i in range(self.n)])

    def __len__(self) -> int:
        return self.n


class SceneCrops(Dataset):
    """Augmented crops drawn from the scenes with replacement; item (epoch, i) is drawn from its own
    seeded generator."""

    def __init__(self, scenes: list[BoxedScene], cfg: DetectorTrain, long_side: int, max_pixels: int, seed: int):
        if not scenes:
            raise SceneError("no annotated training scenes in the manifest (is a `kind: scenes` source enabled?)")
        self.scenes, self.cfg, self.long_side, self.max_pixels, self.seed = scenes, cfg, long_side, max_pixels, seed

    def __len__(self) -> int:
        return self.cfg.epoch_samples

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        rng = np.random.default_rng((self.seed, *key))
        scene = self.scenes[int(rng.integers(len(self.scenes)))]
        image = read_image(scene.path, self.max_pixels)
        crop, boxes = random_crop(image, scene.boxes, self.cfg, self.long_side, rng)
        if self.cfg.flip and rng.random() < 0.5:
            crop = np.ascontiguousarray(crop[:, ::-1])
            boxes = boxes[:, [2, 1, 0, 3]] * np.array([-1, 1, -1, 1], dtype=np.float32) + np.array(
                [crop.shape[1], 0, crop.shape[1], 0], dtype=np.float32
            )
        crop = photometric(low_resolution(crop, self.cfg, rng), self.cfg, rng)
        size = float(self.cfg.input_size)
        return torch.from_numpy(preprocess(crop)[0]), torch.from_numpy(boxes / size)


def collate(batch: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, list[torch.Tensor]]:
    return torch.stack([x for x, _ in batch]), [b for _, b in batch]


class SceneDataModule(pl.LightningDataModule):
    """Training crops from the manifest's train split; the val split's whole scenes for validation."""

    def __init__(self, manifest: Path, raw: Path, cfg: DetectorTrain, long_side: int, max_pixels: int, seed: int):
        super().__init__()
        self.cfg, self.seed = cfg, seed
        self.train_scenes = manifest_scenes(manifest, raw, "train")
        val = manifest_scenes(manifest, raw, "val")
        if not val:
            raise SceneError(f"{manifest}: no val-split scenes to validate the detector on")
        self.val_scenes = val[: cfg.val_scenes] if cfg.val_scenes else val
        self.train_set = SceneCrops(self.train_scenes, cfg, long_side, max_pixels, seed)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(
            self.train_set,
            batch_size=self.cfg.batch_size,
            sampler=EpochSampler(len(self.train_set)),
            num_workers=self.cfg.num_workers,
            collate_fn=collate,
            drop_last=len(self.train_set) > self.cfg.batch_size,
        )

    def val_dataloader(self) -> DataLoader:
        # whole scenes, one a batch, read in the validation step (sizes differ)
        return DataLoader(list(range(len(self.val_scenes))), batch_size=1)
