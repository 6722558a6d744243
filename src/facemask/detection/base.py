"""The face detector interface and its factory."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from facemask.config import Detector as DetectorConfig


@dataclass(frozen=True)
class Face:
    """One detected face in image coordinates.

    `box` is (x1, y1, x2, y2); `landmarks` is a (5, 2) array ordered right eye, left eye, nose,
    right mouth corner, left mouth corner (the subject's right/left), or None.
    """

    box: np.ndarray
    score: float
    landmarks: np.ndarray | None = None

    @property
    def width(self) -> float:
        return float(self.box[2] - self.box[0])

    @property
    def height(self) -> float:
        return float(self.box[3] - self.box[1])

    @property
    def area(self) -> float:
        return max(self.width, 0.0) * max(self.height, 0.0)

    def transformed(self, scale: float, offset: tuple[float, float] = (0.0, 0.0)) -> Face:
        """The same face in another frame: (coords - offset) / scale."""
        off = np.asarray(offset, dtype=np.float32)
        box = (self.box.reshape(2, 2) - off) / scale
        lms = None if self.landmarks is None else (self.landmarks - off) / scale
        return Face(box.reshape(4), self.score, lms)


class FaceDetector(Protocol):
    """Finds faces in a BGR uint8 image."""

    name: str

    def detect(self, image: np.ndarray) -> list[Face]: ...


def build_detector(cfg: DetectorConfig, weights: Path | None = None) -> FaceDetector:
    """Instantiate the configured backend; `weights` defaults to the mirror copy or a cached download."""
    if cfg.name == "yunet":
        from facemask.detection.yunet import YuNetDetector

        return YuNetDetector.from_config(cfg, weights)
    if cfg.name == "retinaface":
        from facemask.detection.retinaface import RetinaFaceDetector

        return RetinaFaceDetector.from_config(cfg)
    if cfg.name == "retinaface_mnet":
        from facemask.detection.retinaface_mnet import RetinaFaceMobileNetDetector

        return RetinaFaceMobileNetDetector.from_config(cfg, weights)
    if cfg.name == "retinaface_ft":
        from facemask.detection.retinaface_mnet import RetinaFaceOnnxDetector

        return RetinaFaceOnnxDetector.from_config(cfg, weights)
    raise ValueError(f"detector.name: unknown backend {cfg.name!r}")
