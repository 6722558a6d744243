"""What the entrance gate decides for a frame, and why."""

from __future__ import annotations

from dataclasses import dataclass

from facemask.pipeline import FaceResult


@dataclass(frozen=True)
class GateDecision:
    allow: bool
    reason: str  # ok | no_face | several_faces | no_mask | mask_incorrect | low_confidence
    message: str


NESTED_SHARE = 0.7  # a detection with this share of its area inside a larger one is a part of that face


def _nested(face: FaceResult, others: list[FaceResult], share: float) -> bool:
    """Whether `face` lies `share` or more of its area inside a larger detection: a part of that face
    (a detector can box a chin or a half face beside the whole of a face that fills the frame)."""
    x1, y1, x2, y2 = face.box
    area = max(x2 - x1, 0) * max(y2 - y1, 0)
    for o in others:
        ox1, oy1, ox2, oy2 = o.box
        if o is face or (ox2 - ox1) * (oy2 - oy1) <= area:
            continue
        inter = max(min(x2, ox2) - max(x1, ox1), 0) * max(min(y2, oy2) - max(y1, oy1), 0)
        if area > 0 and inter >= share * area:
            return True
    return False


def gate_decision(
    faces: list[FaceResult], min_confidence: float, min_face_score: float = 0.0, nested_share: float = NESTED_SHARE
) -> GateDecision:
    """Allow exactly one face that wears a mask correctly with enough confidence; deny otherwise.
    Detections scored below `min_face_score` (a hand, a pattern) are not counted as faces, nor those
    lying `nested_share` or more inside a larger detection (a part of that face, not a second person)."""
    faces = [f for f in faces if f.score >= min_face_score]
    faces = [f for f in faces if not _nested(f, faces, nested_share)]
    if not faces:
        return GateDecision(False, "no_face", "no face found: step in front of the camera")
    if len(faces) > 1:
        return GateDecision(False, "several_faces", f"{len(faces)} faces found: one person at a time")
    face = faces[0]
    if face.confidence < min_confidence:
        return GateDecision(
            False, "low_confidence", f"unsure ({face.label} at {face.confidence:.2f} < {min_confidence:.2f})"
        )
    if face.label == "no_mask":
        return GateDecision(False, "no_mask", "no mask: please put on a mask")
    if face.label == "incorrect":
        return GateDecision(False, "mask_incorrect", "mask worn incorrectly: cover nose and chin")
    return GateDecision(True, "ok", "mask worn correctly")
