"""A camera's zones: which faces it watches. A face is kept when its anchor point (the centre of its
box, or its feet point: the bottom centre) lies in no `ignore` zone and, where the camera has `count`
zones, in one of them. Faces left out are not tracked, alerted on or counted."""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from facemask.config import Zone


class ZoneFilter:
    def __init__(self, zones: Sequence[Zone], anchor: str = "centre"):
        self.zones, self.anchor = list(zones), anchor
        self._pixels: dict[tuple[int, int], list[tuple[str, np.ndarray]]] = {}

    def __bool__(self) -> bool:
        return bool(self.zones)

    def _polygons(self, shape: tuple[int, ...]) -> list[tuple[str, np.ndarray]]:
        h, w = shape[:2]
        if (h, w) not in self._pixels:
            scale = np.array([w, h], dtype=np.float32)
            self._pixels[(h, w)] = [(z.kind, np.asarray(z.points, np.float32) * scale) for z in self.zones]
        return self._pixels[(h, w)]

    def point(self, box: Sequence[float]) -> tuple[float, float]:
        x1, y1, x2, y2 = box[:4]
        return (x1 + x2) / 2, (y2 if self.anchor == "feet" else (y1 + y2) / 2)

    def keeps(self, box: Sequence[float], shape: tuple[int, ...]) -> bool:
        if not self.zones:
            return True
        x, y = self.point(box)
        inside = {"count": False, "ignore": False}
        counting = False
        for kind, polygon in self._polygons(shape):
            counting |= kind == "count"
            if cv2.pointPolygonTest(polygon, (float(x), float(y)), False) >= 0:
                inside[kind] = True
        return not inside["ignore"] and (inside["count"] or not counting)
