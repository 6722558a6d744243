"""The face detector interface and its factory."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Protocol

import numpy as np

from facemask.config import ConfigError
from facemask.config import Detector as DetectorConfig
from facemask.data.fetch import FetchError, resolve_weights


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


class DetectorBackend:
    """Base of the backends: one `from_config` for all, and what a backend needs from its config entry.

    A backend takes (weights, score_threshold, nms_threshold, top_k, min_face); it says whether it reads
    a weights file of its own (`reads_weights`: the `weights` entry, resolved through the mirror or a
    download) or its package keeps one (then `weights` is None and `missing_weights` says where)."""

    name: ClassVar[str]
    reads_weights: ClassVar[bool] = True

    @classmethod
    def from_config(cls, cfg: DetectorConfig, weights: Path | None = None) -> DetectorBackend:
        """Built from a `detector` entry; `weights` overrides the resolved file (a packaged copy)."""
        if weights is None:
            weights = cls.weights_file(cfg)
        return cls(weights, cfg.score_threshold, cfg.nms_threshold, cfg.top_k, cfg.min_face)

    @classmethod
    def weights_file(cls, cfg: DetectorConfig, key: str = "detector.weights") -> Path | None:
        """The file this backend reads (mirror, cache or download: FetchError when none), or None."""
        return resolve_weights(cfg.weights, key=key) if cls.reads_weights else None

    @classmethod
    def missing_weights(cls, cfg: DetectorConfig, key: str = "detector.weights") -> str | None:
        """Why this backend cannot run on this machine, or None when its weights are here."""
        try:
            cls.weights_file(cfg, key)
        except (ConfigError, FetchError) as err:
            return str(err)
        return None


def detector_backend(cfg: DetectorConfig) -> type[DetectorBackend]:
    """The backend class the entry's `_target_` (`<class>.from_config`) names."""
    from hydra.utils import get_method

    try:
        backend = getattr(get_method(cfg.target), "__self__", None)
    except Exception as err:  # hydra wraps the import error
        raise ValueError(f"detector._target_: cannot find {cfg.target!r} for {cfg.name!r}: {err}") from None
    if not (isinstance(backend, type) and issubclass(backend, DetectorBackend)):
        raise ValueError(f"detector._target_: {cfg.target!r} is not a detector backend's from_config")
    return backend


class LargeFacePass:
    """A detector that also looks at the image shrunk by `scale` and keeps the best of overlapping
    boxes (NMS at `nms_threshold`): faces larger than its training range are found at the small size."""

    def __init__(self, detector: FaceDetector, scale: float, nms_threshold: float):
        self.detector, self.scale, self.nms_threshold = detector, scale, nms_threshold
        self.name = detector.name

    def detect(self, image: np.ndarray) -> list[Face]:
        import cv2
        import torch
        from torchvision.ops import nms

        faces = self.detector.detect(image)
        h, w = image.shape[:2]
        size = (round(w * self.scale), round(h * self.scale))
        if min(size) < 32:  # nothing large enough to need it
            return faces
        small = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
        faces += [face.transformed(self.scale) for face in self.detector.detect(small)]
        if len(faces) < 2:
            return faces
        boxes = torch.from_numpy(np.stack([face.box for face in faces]))
        scores = torch.tensor([face.score for face in faces], dtype=torch.float32)
        return [faces[i] for i in nms(boxes, scores, self.nms_threshold).tolist()]


def build_detector(cfg: DetectorConfig, weights: Path | None = None) -> FaceDetector:
    """The configured backend, built by Hydra from its `_target_` factory (with its `large_face_pass`
    when it has one); `weights` defaults to the mirror copy or a cached download. The factory's own
    errors (a missing weights file, a failed download) come through unwrapped."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    try:
        detector = instantiate({"_target_": cfg.target}, cfg=cfg, weights=weights)
    except InstantiationException as err:
        if err.__cause__ is not None and not isinstance(err.__cause__, ImportError | AttributeError):
            raise err.__cause__ from None
        raise ValueError(f"detector._target_: cannot build {cfg.target!r} for {cfg.name!r}: {err}") from None
    return LargeFacePass(detector, cfg.large_face_pass, cfg.nms_threshold) if cfg.large_face_pass else detector
