"""The face detector alone on annotated scenes: recall (overall, per class, per size) and precision.

No classifier is involved: every box the detector reports counts, mapped by its `box_fit` onto the
annotation convention. The detector promotion gate and `python -m facemask.scenes.calibrate` use it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Protocol

import numpy as np
from tqdm import tqdm

from facemask.boxes import match
from facemask.config import BoxFit, Pipeline
from facemask.data.voc import Scene
from facemask.detection import FaceDetector
from facemask.imageio import read_image
from facemask.pipeline import detect_at, fit_box
from facemask.scenes.average_precision import SIZES, Prediction, average_precision, size_bin

FACE = "face"  # every annotated class counts as a face for the detector


def detect_scenes(detector: FaceDetector, settings: Pipeline, scenes: list[Scene], max_pixels: int) -> list[np.ndarray]:
    """Per scene an (N, 5) array x1, y1, x2, y2, score of raw detections, found as served."""
    out = []
    for scene in tqdm(scenes, desc=f"detect ({detector.name})", unit="scene"):
        faces = detect_at(detector, read_image(scene.image, max_pixels), settings)
        out.append(np.array([[*f.box, f.score] for f in faces], dtype=np.float32).reshape(-1, 5))
    return out


def fitted(detections: np.ndarray, fit: BoxFit) -> np.ndarray:
    return np.array([fit_box(b, fit) for b in detections[:, :4]], dtype=np.float32).reshape(-1, 4)


class BoxedFaces(Protocol):
    """Annotated faces of one scene: boxes (N, 4) and a label per box (`Scene`, a training scene)."""

    boxes: np.ndarray
    labels: list[str]


def detector_scores(
    scenes: Sequence[BoxedFaces], detections: list[np.ndarray], iou: float, size_bins: tuple[int, int], fit: BoxFit
) -> dict:
    """The detector's one scoring, wherever it is judged (the fine-tuning's validation, the promotion
    gate, the calibration): detections (N, 5: box, score) mapped by `fit` onto the annotation
    convention; recall at `iou` overall, per class and per class and size, precision over all
    detections, and the class-agnostic average precision."""
    found: dict[tuple[str, str], list[int]] = {}
    hits = n_det = 0
    gts, preds = [], []
    for scene, det in zip(scenes, detections, strict=True):
        boxes = fitted(det, fit)
        gts.append((scene.boxes, [FACE] * len(scene.boxes)))
        preds.append(Prediction(boxes, [FACE] * len(boxes), det[:, 4], np.ones(len(boxes), dtype=np.float32)))
        pairs = match(scene.boxes, boxes, det[:, 4], iou)
        hits, n_det = hits + len(pairs), n_det + len(det)
        for g, (box, label) in enumerate(zip(scene.boxes, scene.labels, strict=True)):
            for key in ((label, "all"), (label, size_bin(box, size_bins)), ("all", "all")):
                cell = found.setdefault(key, [0, 0])
                cell[0] += g in pairs
                cell[1] += 1
    recall = {f"{label}.{size}": round(f / t, 4) for (label, size), (f, t) in sorted(found.items()) if t}
    total = found.get(("all", "all"), [0, 0])[1]
    return {
        "recall": round(hits / total, 4) if total else 0.0,
        "precision": round(hits / n_det, 4) if n_det else 0.0,
        "ap": round(average_precision(gts, preds, [FACE], iou)["map"], 4) if total else 0.0,
        "faces": total,
        "detections": n_det,
        "recall_by": recall,
        "sizes": list(SIZES),
    }


def scenes_digest(scenes: list[Scene]) -> str:
    """A short digest of the scenes and their boxes: figures are compared only on equal digests."""
    h = hashlib.sha256()
    for s in scenes:
        h.update(s.name.encode())
        h.update(np.round(s.boxes, 1).astype(np.float32).tobytes())
        h.update("|".join(s.labels).encode())
    return h.hexdigest()[:16]
