"""Face boxes: the one box type and the one IoU matcher.

A box is ``(x1, y1, x2, y2)`` in pixels of the frame it was found in; arrays of boxes are ``(N, 4)``
float32. Scene evaluation, the crop stage, the detector's validation and the face tracker all pair
boxes with `match`, so "the same face" means the same thing everywhere.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

Box = tuple[float, float, float, float]


def as_boxes(boxes: np.ndarray | Sequence[Sequence[float]]) -> np.ndarray:
    """An (N, 4) float32 array of boxes (an empty input gives shape (0, 4))."""
    return np.asarray(boxes, dtype=np.float32).reshape(-1, 4)


def iou_matrix(a: np.ndarray | Sequence[Box], b: np.ndarray | Sequence[Box]) -> np.ndarray:
    """(len(a), len(b)) intersection over union of two sets of boxes; 0 where a box has no area."""
    a, b = as_boxes(a), as_boxes(b)
    x1 = np.maximum(a[:, None, 0], b[None, :, 0])
    y1 = np.maximum(a[:, None, 1], b[None, :, 1])
    x2 = np.minimum(a[:, None, 2], b[None, :, 2])
    y2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area_a = np.clip(a[:, 2] - a[:, 0], 0, None) * np.clip(a[:, 3] - a[:, 1], 0, None)
    area_b = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def match(
    targets: np.ndarray | Sequence[Box], found: np.ndarray | Sequence[Box], order: np.ndarray, iou_threshold: float
) -> dict[int, int]:
    """Greedy one-to-one matching: {target index: found index}. Found boxes are taken best `order`
    first (a detector's score); each takes the unclaimed target it overlaps most, at `iou_threshold`
    or more."""
    targets, found = as_boxes(targets), as_boxes(found)
    if len(targets) == 0 or len(found) == 0:
        return {}
    iou = iou_matrix(found, targets)
    pairs: dict[int, int] = {}
    free = np.ones(len(targets), dtype=bool)
    for p in np.argsort(-np.asarray(order), kind="stable"):
        candidates = np.flatnonzero((iou[p] >= iou_threshold) & free)
        if len(candidates):
            t = int(candidates[iou[p, candidates].argmax()])
            pairs[t], free[t] = int(p), False
    return pairs
