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

    box: np.ndarray  # (4,) float32, a facemask.boxes box
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
    """The configured backend, built by Hydra from its `_target_` factory; `weights` defaults to the
    mirror copy or a cached download. The factory's own errors (a missing weights file, a failed
    download) come through unwrapped."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    try:
        return instantiate({"_target_": cfg.target}, cfg=cfg, weights=weights)
    except InstantiationException as err:
        if err.__cause__ is not None and not isinstance(err.__cause__, ImportError | AttributeError):
            raise err.__cause__ from None
        raise ValueError(f"detector._target_: cannot build {cfg.target!r} for {cfg.name!r}: {err}") from None
