"""What the entrance gate decides for a frame, and why."""

from __future__ import annotations

from dataclasses import dataclass

from facemask.pipeline import FaceResult


@dataclass(frozen=True)
class GateDecision:
    allow: bool
    reason: str  # ok | no_face | several_faces | no_mask | mask_incorrect | low_confidence
    message: str


def gate_decision(faces: list[FaceResult], min_confidence: float, min_face_score: float = 0.0) -> GateDecision:
    """Allow exactly one face that wears a mask correctly with enough confidence; deny otherwise.
    Detections scored below `min_face_score` (a hand, a pattern) are not counted as faces (parts of a
    face never reach it: `pipeline.detect_at` drops them)."""
    faces = [f for f in faces if f.score >= min_face_score]
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
