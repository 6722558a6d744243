"""Face alignment and cropping, shared by the crop stage and live inference."""

from __future__ import annotations

import math

import cv2
import numpy as np

from facemask.detection.base import Face

MAX_ROLL_DEG = 45.0


def roll_angle(face: Face) -> float:
    """In-plane rotation (degrees) that would level the eyes; 0 without landmarks."""
    if face.landmarks is None:
        return 0.0
    right_eye, left_eye = face.landmarks[0], face.landmarks[1]
    dx, dy = float(left_eye[0] - right_eye[0]), float(left_eye[1] - right_eye[1])
    if dx == 0 and dy == 0:
        return 0.0
    angle = math.degrees(math.atan2(dy, dx))
    return angle if abs(angle) <= MAX_ROLL_DEG else 0.0


def crop_face(image: np.ndarray, face: Face, size: int, margin: float, align: bool = True) -> np.ndarray:
    """A `size`x`size` crop centred on the face box, enlarged by `margin` of its side on each side,
    rotated so the eyes are level when `align`; one warpAffine, borders filled black."""
    cx, cy = (face.box[0] + face.box[2]) / 2, (face.box[1] + face.box[3]) / 2
    side = max(face.width, face.height, 1.0) * (1.0 + 2.0 * margin)
    angle = roll_angle(face) if align else 0.0
    matrix = cv2.getRotationMatrix2D((float(cx), float(cy)), angle, size / side)
    matrix[:, 2] += (size / 2.0 - cx, size / 2.0 - cy)
    return cv2.warpAffine(image, matrix, (size, size), flags=cv2.INTER_LINEAR, borderValue=(0, 0, 0))
