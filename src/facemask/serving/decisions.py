"""What the entrance gate decides for a frame, and why."""

from __future__ import annotations

from dataclasses import dataclass

from facemask.pipeline import FaceResult

MESSAGES = {  # per reason (the API's words, never a class name: `serving.gate_deny` maps classes onto them)
    "ok": "mask worn correctly",
    "no_face": "no face found: step in front of the camera",
    "no_mask": "no mask: please put on a mask",
    "mask_incorrect": "mask worn incorrectly: cover nose and chin",
}


@dataclass(frozen=True)
class GateDecision:
    allow: bool
    reason: str  # ok | no_face | several_faces | low_confidence | a class's `serving.gate_deny` reason
    message: str


@dataclass(frozen=True)
class GateRule:
    """Admit exactly one face of the `compliant` class with enough confidence; deny otherwise, a face of
    another class with its `deny` reason. Detections scored below `min_face_score` (a hand, a pattern)
    are not counted as faces (parts of a face never reach it: `pipeline.detect_at` drops them)."""

    compliant: str  # the classifier's compliant class (data.compliant)
    deny: dict[str, str]  # serving.gate_deny
    min_confidence: float  # serving.gate_min_confidence
    min_face_score: float = 0.0  # pipeline.gate_min_score

    def check(self, labels: list[str]) -> GateRule:
        """This rule, when it knows every class of `labels` (a classifier's): a ValueError otherwise."""
        missing = set(labels) - {self.compliant} - set(self.deny)
        if self.compliant not in labels or missing:
            raise ValueError(f"the gate (compliant {self.compliant!r}, serving.gate_deny {sorted(self.deny)}) "
                             f"does not cover the classifier's classes {labels}")  # fmt: skip
        return self

    def decide(self, faces: list[FaceResult]) -> GateDecision:
        faces = [f for f in faces if f.score >= self.min_face_score]
        if not faces:
            return GateDecision(False, "no_face", MESSAGES["no_face"])
        if len(faces) > 1:
            return GateDecision(False, "several_faces", f"{len(faces)} faces found: one person at a time")
        face = faces[0]
        if face.confidence < self.min_confidence:
            return GateDecision(
                False, "low_confidence", f"unsure ({face.label} at {face.confidence:.2f} < {self.min_confidence:.2f})"
            )
        if face.label == self.compliant:
            return GateDecision(True, "ok", MESSAGES["ok"])
        reason = self.deny[face.label]
        return GateDecision(False, reason, MESSAGES.get(reason, f"{face.label}: not admitted"))
