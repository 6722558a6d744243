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


def test_a_part_of_a_face_is_not_a_second_person():
    """The fine-tuned detector's boxes on a held-out face-mask-2class photo (0_0_pubajia_0159, 146x118,
    upscaled to 640): the whole face and two parts of it. At the gate's NESTED_SHARE (0.7) the parts
    (0.83 and 0.98 of their area inside the face) are not counted; two people side by side are."""
    from facemask.pipeline import FaceResult
    from facemask.serving.decisions import NESTED_SHARE, gate_decision

    probs = {"mask": 0.01, "no_mask": 0.98, "incorrect": 0.01}
    whole = FaceResult((0, 2, 129, 126), 0.92, "no_mask", 0.99, probs)
    parts = [FaceResult((56, 18, 144, 110), 0.89, "no_mask", 0.98, probs),
             FaceResult((1, 0, 76, 88), 0.45, "no_mask", 0.98, probs)]  # fmt: skip
    assert gate_decision([whole, *parts], 0.6, 0.0, nested_share=1.0).reason == "several_faces"  # all counted
    assert gate_decision([whole, *parts], 0.6, 0.0, NESTED_SHARE).reason == "no_mask"
    neighbour = FaceResult((100, 0, 229, 124), 0.9, "no_mask", 0.97, probs)  # 0.22 of it overlaps
    assert gate_decision([whole, neighbour], 0.6, 0.0, NESTED_SHARE).reason == "several_faces"
