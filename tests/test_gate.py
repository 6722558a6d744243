"""The entrance gate's rule on detected faces."""

from __future__ import annotations


def test_gate_counts_only_confident_faces():
    """A hand scored 0.55 beside a masked face is not a second person; the same hand alone is no face."""
    from facemask.config import compose, validate
    from facemask.pipeline import FaceResult
    from facemask.serving.decisions import GateRule

    probs = {"mask": 0.95, "no_mask": 0.03, "incorrect": 0.02}
    face = FaceResult((100, 100, 200, 220), 0.92, "mask", 0.95, probs)
    hand = FaceResult((0, 300, 80, 400), 0.55, "no_mask", 0.9, probs)
    deny = validate(compose()).serving.gate_deny
    assert GateRule("mask", deny, 0.6).decide([face, hand]).reason == "several_faces"  # every detection counted
    gate = GateRule("mask", deny, 0.6, min_face_score=0.6)
    assert gate.decide([face, hand]).allow
    assert gate.decide([hand]).reason == "no_face"
    assert gate.decide([FaceResult((0, 0, 90, 90), 0.9, "no_mask", 0.95, probs)]).reason == "no_mask"
    assert gate.decide([FaceResult((0, 0, 90, 90), 0.9, "incorrect", 0.95, probs)]).reason == "mask_incorrect"
    unsure = gate.decide([FaceResult((0, 0, 90, 90), 0.9, "mask", 0.55, probs)])
    assert (unsure.reason, unsure.message) == ("low_confidence", "unsure (mask at 0.55 < 0.60)")
