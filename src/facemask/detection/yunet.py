"""YuNet through OpenCV's cv2.FaceDetectorYN."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from facemask.detection.base import DetectorBackend, Face


class YuNetDetector(DetectorBackend):
    """cv2.FaceDetectorYN wrapper. Not thread-safe: use one instance per thread or process."""

    name = "yunet"

    def __init__(self, weights: Path, score_threshold: float, nms_threshold: float, top_k: int, min_face: int):
        if not Path(weights).is_file():
            raise FileNotFoundError(f"YuNet weights not found: {weights}")
        self.min_face = min_face
        self._size = (320, 320)
        self._net = cv2.FaceDetectorYN.create(str(weights), "", self._size, score_threshold, nms_threshold, top_k)

    def detect(self, image: np.ndarray) -> list[Face]:
        h, w = image.shape[:2]
        if h == 0 or w == 0:
            return []
        if (w, h) != self._size:
            self._net.setInputSize((w, h))
            self._size = (w, h)
        _, rows = self._net.detect(image)
        if rows is None:
            return []
        faces = []
        for r in rows:
            x, y, bw, bh = r[:4]
            if min(bw, bh) < self.min_face:
                continue
            box = np.array([x, y, x + bw, y + bh], dtype=np.float32)
            faces.append(Face(box, float(r[14]), r[4:14].reshape(5, 2).astype(np.float32)))
        return sorted(faces, key=lambda f: -f.score)
