"""The entrance gate's rule on detected faces."""

from __future__ import annotations


def test_gate_counts_only_confident_faces():
    """A hand scored 0.55 beside a masked face is not a second person; the same hand alone is no face."""
    from facemask.pipeline import FaceResult
    from facemask.serving.decisions import gate_decision

    probs = {"mask": 0.95, "no_mask": 0.03, "incorrect": 0.02}
    face = FaceResult((100, 100, 200, 220), 0.92, "mask", 0.95, probs)
    hand = FaceResult((0, 300, 80, 400), 0.55, "no_mask", 0.9, probs)
    assert gate_decision([face, hand], 0.6).reason == "several_faces"  # every detection counted (apart)
    assert gate_decision([face, hand], 0.6, min_face_score=0.6).allow
    assert gate_decision([hand], 0.6, min_face_score=0.6).reason == "no_face"
