"""RetinaFace (ResNet50) through the `retina-face` package on its PyTorch engine.

The package fetches `retinaface.pth` into ``$DEEPFACE_HOME/.deepface/weights`` on first use; with
no internet, place the file there yourself.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from facemask.config import Detector as DetectorConfig
from facemask.detection.base import DetectorBackend, Face

_LANDMARKS = ("right_eye", "left_eye", "nose", "mouth_right", "mouth_left")


class RetinaFaceDetector(DetectorBackend):
    name = "retinaface"
    reads_weights = False  # the package keeps its own cache

    def __init__(self, weights: None, score_threshold: float, nms_threshold: float, top_k: int, min_face: int):
        os.environ.setdefault("DEEPFACE_BACKEND_ENGINE", "pytorch")
        from retinaface import RetinaFace

        self._api = RetinaFace
        self._model = RetinaFace.build_model()
        self.score_threshold = score_threshold
        self.min_face = min_face

    @classmethod
    def missing_weights(cls, cfg: DetectorConfig, key: str = "detector.weights") -> str | None:
        """None when the package's cache holds the file `weights.file` names."""
        path = Path(os.environ.get("DEEPFACE_HOME", Path.home())) / ".deepface" / "weights" / cfg.weights.file
        return None if path.is_file() else f"weights not found at {path}"

    def detect(self, image: np.ndarray) -> list[Face]:
        if image.size == 0:
            return []
        found = self._api.detect_faces(image, threshold=self.score_threshold, model=self._model, allow_upscaling=False)
        faces = []
        for item in found.values() if isinstance(found, dict) else []:
            box = np.asarray(item["facial_area"], dtype=np.float32)
            if min(box[2] - box[0], box[3] - box[1]) < self.min_face:
                continue
            lms = np.array([item["landmarks"][k] for k in _LANDMARKS], dtype=np.float32)
            faces.append(Face(box, float(item["score"]), lms))
        return sorted(faces, key=lambda f: -f.score)
