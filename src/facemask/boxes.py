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


def areas(boxes: np.ndarray) -> np.ndarray:
    """(N,) areas of an (N, 4) box array; 0 for a box with no extent."""
    return np.clip(boxes[:, 2] - boxes[:, 0], 0, None) * np.clip(boxes[:, 3] - boxes[:, 1], 0, None)


def intersections(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(len(a), len(b)) areas where two (N, 4) box arrays overlap."""
    x1 = np.maximum(a[:, None, 0], b[None, :, 0])
    y1 = np.maximum(a[:, None, 1], b[None, :, 1])
    x2 = np.minimum(a[:, None, 2], b[None, :, 2])
    y2 = np.minimum(a[:, None, 3], b[None, :, 3])
    return np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)


def iou_matrix(a: np.ndarray | Sequence[Box], b: np.ndarray | Sequence[Box]) -> np.ndarray:
    """(len(a), len(b)) intersection over union of two sets of boxes; 0 where a box has no area."""
    a, b = as_boxes(a), as_boxes(b)
    inter = intersections(a, b)
    union = areas(a)[:, None] + areas(b)[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def nested(boxes: np.ndarray | Sequence[Box], scores: np.ndarray | Sequence[float], share: float) -> np.ndarray:
    """(N,) True where a box lies `share` or more of its area inside a larger box scored at least as
    high: a part of that face (a chin, half a face), not a face of its own. NMS keeps such parts, as
    their IoU with the whole face is small; a larger box scored lower never hides a face."""
    boxes, scores = as_boxes(boxes), np.asarray(scores, dtype=np.float32)
    area = areas(boxes)
    inside = intersections(boxes, boxes) >= share * area[:, None]
    container = (area[None, :] > area[:, None]) & (scores[None, :] >= scores[:, None])
    return (inside & container).any(axis=1) & (area > 0)


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


Region = tuple[int, int, int, int]  # x1, y1, x2, y2: whole pixels of a frame


def search_regions(
    boxes: np.ndarray | Sequence[Box], shape: tuple[int, ...], margin: float, min_side: int
) -> list[Region]:
    """Regions of a `shape` (h, w, ...) frame where these faces will be in the next frame: each box
    grown by `margin` times its size on every side (and to `min_side`), clipped to the frame;
    regions that overlap merged (`merge_regions`)."""
    h, w = shape[:2]
    regions = []
    for x1, y1, x2, y2 in as_boxes(boxes):
        cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
        half_w = max((x2 - x1) * (0.5 + margin), min_side / 2)
        half_h = max((y2 - y1) * (0.5 + margin), min_side / 2)
        regions.append((
            int(max(0, cx - half_w)), int(max(0, cy - half_h)),
            int(np.ceil(min(w, cx + half_w))), int(np.ceil(min(h, cy + half_h))),
        ))  # fmt: skip
    return merge_regions(regions)


def merge_regions(regions: Sequence[Region]) -> list[Region]:
    """Overlapping regions replaced by their bounding box, until none overlap; empty ones dropped."""
    out = [r for r in regions if r[2] > r[0] and r[3] > r[1]]
    merged = True
    while merged and len(out) > 1:
        merged = False
        for i, j in [(a, b) for a in range(len(out)) for b in range(a + 1, len(out))]:
            a, b = out[i], out[j]
            if a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]:
                out[i] = (min(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), max(a[3], b[3]))
                del out[j]
                merged = True
                break
    return out
