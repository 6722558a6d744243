"""The detection pipeline: detector -> aligned crops -> batched classifier.

One object used by evaluation, the service and the camera client alike, so that a face is cropped
and preprocessed exactly as in training (`crop_face` with the crop stage's settings, then the
classifier's own `Preprocessor`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from facemask.classifier import MaskClassifier
from facemask.config import Params
from facemask.detection import Face, FaceDetector, build_detector
from facemask.detection.align import crop_face


@dataclass(frozen=True)
class FaceResult:
    """One face: box (x1, y1, x2, y2) in frame pixels, detector score, class and probabilities."""

    box: tuple[float, float, float, float]
    score: float
    label: str
    confidence: float
    probabilities: dict[str, float]

    def to_dict(self) -> dict:
        return asdict(self)


class MaskPipeline:
    """Finds every face in a BGR frame and classifies its mask, all faces in one batch."""

    def __init__(
        self,
        detector: FaceDetector,
        classifier: MaskClassifier,
        crop_size: int,
        margin: float,
        align: bool = True,
    ):
        self.detector, self.classifier = detector, classifier
        self.crop_size, self.margin, self.align = crop_size, margin, align

    @classmethod
    def from_classifier(
        cls, detector: FaceDetector, classifier: MaskClassifier, fallback_crop: dict | None = None
    ) -> MaskPipeline:
        """Crop faces as the classifier's training did: the settings its artefact records, else
        `fallback_crop`; an artefact without them and no fallback is refused."""
        crop = {**(fallback_crop or {}), **classifier.meta.get("crop", {})}
        if not crop:
            raise ValueError("the classifier artefact records no crop settings: retrain it with this version")
        return cls(detector, classifier, crop["size"], crop["margin"], crop["align"])

    @classmethod
    def from_params(
        cls, params: Params, classifier: Path | MaskClassifier, detector: FaceDetector | None = None
    ) -> MaskPipeline:
        """Pipeline from the configuration; crop settings come from the classifier artefact when it
        records them (they must match training), else from `params.crop`."""
        if not isinstance(classifier, MaskClassifier):
            classifier = MaskClassifier.load(classifier)
        return cls.from_classifier(detector or build_detector(params.detector), classifier, params.crop.model_dump())

    @property
    def labels(self) -> list[str]:
        return self.classifier.labels

    def detect_faces(self, frame: np.ndarray) -> list[Face]:
        """Faces in frame coordinates (kept apart from `classify` so callers can reuse detections)."""
        return self.detector.detect(frame)

    def classify(self, frame: np.ndarray, faces: list[Face]) -> list[FaceResult]:
        """Classify given faces of a frame (one batch through the network)."""
        if not faces:
            return []
        crops = [crop_face(frame, f, self.crop_size, self.margin, self.align) for f in faces]
        probs = self.classifier.predict_proba(crops, bgr=True)
        results = []
        for face, p in zip(faces, probs, strict=True):
            k = int(p.argmax())
            results.append(
                FaceResult(
                    box=tuple(round(float(v), 1) for v in face.box),
                    score=round(face.score, 4),
                    label=self.labels[k],
                    confidence=round(float(p[k]), 4),
                    probabilities={lb: round(float(v), 4) for lb, v in zip(self.labels, p, strict=True)},
                )
            )
        return results

    def __call__(self, frame: np.ndarray) -> list[FaceResult]:
        if frame is None or frame.ndim != 3 or frame.shape[2] != 3 or frame.size == 0:
            raise ValueError("expected a non-empty HxWx3 BGR frame")
        return self.classify(frame, self.detect_faces(frame))
