"""Drift of what a camera's model sees, against what it saw on validation data.

The population is the faces a full pass keeps (after rejection) that the detector scores at least
`MIN_SCORE`. Five quantities describe it: the detector's score, p(background) (the classifier's
doubt that it is a face), the class, the face's height in pixels and the faces per frame. The train
stage measures them on the val-split scenes through the served pipeline and stores the counts in the
classifier artefact (`meta["drift_reference"]`); a camera's `DriftMonitor` keeps the same counts over
its recent full passes (decayed with a half-life) and compares them with the population stability
index, PSI = sum over bins of (q - p) ln(q / p). Conventionally below 0.1 is stable, 0.1-0.25 a
shift worth a look, above 0.25 a population the model was not validated on. A camera's drift score
is its largest PSI.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol

import numpy as np

MIN_SCORE = 0.5  # faces the detector scores at least this: stable across stream.min_score settings
EDGES: dict[str, tuple[float, ...]] = {  # lower edges of the bins (the last bin is open)
    "score": (0.5, 0.6, 0.7, 0.8, 0.9, 0.95),
    "background": (0.0, 0.05, 0.1, 0.2, 0.3, 0.5),
    "height": (0, 16, 24, 32, 48, 64, 96, 128, 192, 256),
    "faces": (0, 1, 2, 3, 5, 10),
}
QUANTITIES = ("score", "background", "class", "height", "faces")
HALF_LIFE_FRAMES = 3000  # a camera's counts halve over this many full passes (5 min at 10 passes a second)
MIN_FACES = 100  # no score before the decayed counts hold this many faces
SMOOTHING = 0.5  # added to every bin's count (Jeffreys): an empty bin would make PSI infinite, and a
# tiny share in its place lets a few faces in a bin the reference never filled dominate the index


class Detection(Protocol):
    score: float


class Result(Protocol):
    """What `facemask.pipeline.FaceResult` carries that drift reads."""

    box: Sequence[float]
    score: float
    label: str
    detection: Detection | None


def frame_samples(results: Iterable[Result]) -> dict[str, list]:
    """The drift quantities of one full pass's classified faces (those scored `MIN_SCORE` or more)."""
    faces = [r for r in results if r.detection is not None and r.detection.score >= MIN_SCORE]
    return {
        "score": [float(r.detection.score) for r in faces],
        # a result's score is the detector's times p(face)
        "background": [max(0.0, 1.0 - float(r.score) / float(r.detection.score)) for r in faces],
        "class": [r.label for r in faces],
        "height": [float(r.box[3] - r.box[1]) for r in faces],
        "faces": [len(faces)],
    }


class Counts:
    """Per quantity, the (weighted) counts of its bins; `labels` are the class bins."""

    def __init__(self, labels: Sequence[str]):
        self.labels = list(labels)
        self.counts = {q: np.zeros(len(self.labels) if q == "class" else len(EDGES[q])) for q in QUANTITIES}

    def add(self, samples: dict[str, list]) -> None:
        for quantity, values in samples.items():
            if quantity == "class":
                for label in values:
                    if label in self.labels:
                        self.counts[quantity][self.labels.index(label)] += 1
            elif values:
                bins = np.searchsorted(EDGES[quantity], np.asarray(values, dtype=float), side="right") - 1
                np.add.at(self.counts[quantity], np.clip(bins, 0, len(EDGES[quantity]) - 1), 1)

    def scale(self, factor: float) -> None:
        for counts in self.counts.values():
            counts *= factor

    @property
    def faces(self) -> float:
        return float(self.counts["score"].sum())

    def to_dict(self) -> dict[str, Any]:
        return {
            "min_score": MIN_SCORE, "edges": {q: list(e) for q, e in EDGES.items()}, "labels": self.labels,
            "counts": {q: [round(float(c), 3) for c in v] for q, v in self.counts.items()},
        }  # fmt: skip

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Counts:
        """Counts stored by `to_dict`; refused (ValueError) when measured with other bins."""
        if data.get("min_score") != MIN_SCORE or data.get("edges") != {q: list(e) for q, e in EDGES.items()}:
            raise ValueError("the drift reference was measured with other bins: retrain (dvc repro train)")
        counts = cls(data["labels"])
        for quantity in QUANTITIES:
            counts.counts[quantity] = np.asarray(data["counts"][quantity], dtype=float)
        return counts


def reference(frames: Iterable[dict[str, list]], labels: Sequence[str]) -> dict[str, Any]:
    """The reference counts of `frames` (each `frame_samples`), as stored in the classifier artefact."""
    counts = Counts(labels)
    for samples in frames:
        counts.add(samples)
    return counts.to_dict()


def psi(expected: np.ndarray, actual: np.ndarray) -> float:
    """Population stability index of `actual` against `expected` (bin counts, each `SMOOTHING` more)."""
    p = (expected + SMOOTHING) / (float(expected.sum()) + SMOOTHING * len(expected))
    q = (actual + SMOOTHING) / (float(actual.sum()) + SMOOTHING * len(actual))
    return float(np.sum((q - p) * np.log(q / p)))


class DriftMonitor:
    """One camera's recent full passes against the reference; `listener` gets each pass's samples
    and the monitor (the service turns them into Prometheus series)."""

    def __init__(
        self,
        stored: dict[str, Any],
        half_life_frames: float = HALF_LIFE_FRAMES,
        min_faces: float = MIN_FACES,
        listener: Callable[[dict[str, list], DriftMonitor], None] | None = None,
    ):
        self.reference = Counts.from_dict(stored)
        self.recent = Counts(self.reference.labels)
        self.decay = 0.5 ** (1.0 / half_life_frames)
        self.min_faces, self.listener = min_faces, listener

    def observe(self, results: Iterable[Result]) -> dict[str, list]:
        """One full pass's classified faces."""
        samples = frame_samples(results)
        self.recent.scale(self.decay)
        self.recent.add(samples)
        if self.listener is not None:
            self.listener(samples, self)
        return samples

    def psi(self) -> dict[str, float] | None:
        """PSI per quantity; None until the recent counts hold `min_faces` faces."""
        if self.recent.faces < self.min_faces:
            return None
        return {q: round(psi(self.reference.counts[q], self.recent.counts[q]), 4) for q in QUANTITIES}

    def summary(self) -> dict[str, Any]:
        """What /cameras/status shows: PSI per quantity, the score (the largest) and the faces it rests on."""
        scores = self.psi()
        return {
            "score": max(scores.values()) if scores else None,
            "psi": scores,
            "faces": round(self.recent.faces, 1),
        }
