"""Face detection backends and alignment on real images."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest

from facemask.config import compose, validate
from facemask.detection import Face, build_detector, detector_backend
from facemask.detection.align import crop_face, roll_angle
from facemask.detection.yunet import YuNetDetector
from facemask.face_crops import choose_face
from facemask.imageio import read_image
from facemask.pipeline import detect_at

from .conftest import MAX_PIXELS, real_images


@pytest.fixture(scope="module")
def yunet(yunet_weights):
    return YuNetDetector(yunet_weights, 0.5, 0.3, 5000, 12)


def test_yunet_finds_the_face_in_real_photos(yunet, shared):
    settings = validate(compose()).pipeline
    found = 0
    files = real_images(shared, "maskedface-net-sample/incorrect", 10)
    for path in files:
        faces = detect_at(yunet, read_image(path, MAX_PIXELS), settings)
        found += bool(faces)
        for f in faces:
            assert f.landmarks.shape == (5, 2)
            assert 0 < f.score <= 1
            assert f.box[2] > f.box[0] and f.box[3] > f.box[1]
    assert found >= 9


def test_yunet_on_empty_and_faceless_images(yunet):
    assert yunet.detect(np.zeros((0, 0, 3), np.uint8)) == []
    assert yunet.detect(np.full((240, 320, 3), 128, np.uint8)) == []


def test_build_detector_from_config_uses_mirror(monkeypatch, shared):
    monkeypatch.setenv("FACEMASK_MIRROR", str(shared))
    det = build_detector(validate(compose(["detector=yunet"])).detector)
    assert det.name == "yunet"


def test_alignment_levels_the_eyes():
    # a face whose eyes slope 20 degrees: after alignment they must be level
    angle = math.radians(20)
    centre = np.array([100.0, 100.0])
    eye_offset = 20 * np.array([math.cos(angle), math.sin(angle)])
    lms = np.array([centre - eye_offset, centre + eye_offset, centre, centre + [-10, 30], centre + [10, 30]])
    face = Face(np.array([60, 60, 140, 140], np.float32), 0.9, lms.astype(np.float32))
    assert roll_angle(face) == pytest.approx(20, abs=1e-4)
    image = np.zeros((200, 200, 3), np.uint8)
    for x, y in lms[:2]:
        cv2.circle(image, (round(x), round(y)), 3, (255, 255, 255), -1)
    crop = crop_face(image, face, size=64, margin=0.2, align=True)
    ys, xs = np.nonzero(crop[..., 0] > 128)
    left, right = ys[xs < 32].mean(), ys[xs >= 32].mean()
    assert abs(left - right) < 1.5
    unaligned = crop_face(image, face, size=64, margin=0.2, align=False)
    ys, xs = np.nonzero(unaligned[..., 0] > 128)
    assert abs(ys[xs < 32].mean() - ys[xs >= 32].mean()) > 5


def test_choose_face_policies():
    small = Face(np.array([0, 0, 10, 10], np.float32), 0.99)
    large = Face(np.array([0, 0, 50, 50], np.float32), 0.6)
    assert choose_face([], "largest") == (None, "no_face")
    assert choose_face([small, large], "largest") == (large, "multi_face_largest")
    assert choose_face([small, large], "drop") == (None, "multi_face")


def test_each_backend_says_what_it_needs_from_its_config_entry(shared, monkeypatch):
    """Stages ask the backend (not its name) whether it reads a weights file; a target that is no
    backend's from_config is a config error naming it."""
    monkeypatch.setenv("FACEMASK_MIRROR", str(shared))  # the suite's mirror, also when pytest runs alone
    params = validate(compose())
    reads = {name: detector_backend(cfg).reads_weights for name, cfg in params.detectors.items()}
    assert reads == {
        "yunet": True,
        "retinaface_mnet": True,
        "retinaface": False,
        "retinaface_ft": True,
        "centerface": True,
    }
    assert all(detector_backend(cfg).name == name for name, cfg in params.detectors.items())
    yunet_cfg = params.detectors["yunet"]
    assert (
        detector_backend(yunet_cfg).weights_file(yunet_cfg) == shared / "models" / "yunet" / "face_detection_yunet.onnx"
    )
    assert detector_backend(params.detectors["retinaface"]).weights_file(params.detectors["retinaface"]) is None
    bad = yunet_cfg.model_copy(update={"target": "facemask.boxes.iou_matrix"})
    with pytest.raises(ValueError, match=r"'facemask\.boxes\.iou_matrix' is not a detector backend"):
        detector_backend(bad)


def test_retinaface_package_loads_weights_from_deepface_home(tmp_path, monkeypatch, shared):
    """The retina-face package's own loader, fed a same-architecture network saved where it looks."""
    import torch

    monkeypatch.setenv("DEEPFACE_HOME", str(tmp_path))
    monkeypatch.setenv("DEEPFACE_BACKEND_ENGINE", "pytorch")
    from retinaface.model import retinaface_pth_model

    torch.manual_seed(0)
    net = retinaface_pth_model.RetinaFace()
    weights = tmp_path / ".deepface" / "weights" / "retinaface.pth"
    package_cfg = validate(compose(["detector=retinaface"])).detector
    assert detector_backend(package_cfg).missing_weights(package_cfg) == f"weights not found at {weights}"
    weights.parent.mkdir(parents=True)
    torch.save(net.state_dict(), weights)
    assert detector_backend(package_cfg).missing_weights(package_cfg) is None

    from facemask.detection.retinaface import RetinaFaceDetector

    det = build_detector(validate(compose(["detector=retinaface"])).detector)
    assert isinstance(det, RetinaFaceDetector)
    loaded = det._model.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in net.state_dict().items())
    image = read_image(real_images(shared, "face-mask-2class/without_mask", 1)[0], MAX_PIXELS)
    h, w = image.shape[:2]
    # random weights score every anchor near 0.5: a 0.5 floor keeps hundreds of boxes, which must
    # all come back as well-formed faces, best first, none under the floor or the minimum size
    for min_face in (1, 60):
        cfg = validate(
            compose(["detector=retinaface", "detector.score_threshold=0.5", f"detector.min_face={min_face}"])
        )
        faces = build_detector(cfg.detector).detect(image)
        assert len(faces) > 10
        assert all(isinstance(f, Face) and f.landmarks.shape == (5, 2) for f in faces)
        assert all(f.score >= 0.5 and min(f.width, f.height) >= min_face for f in faces)
        assert all(-1 <= f.box[0] < f.box[2] <= w + 1 and -1 <= f.box[1] < f.box[3] <= h + 1 for f in faces)
        assert [f.score for f in faces] == sorted((f.score for f in faces), reverse=True)
    assert build_detector(cfg.detector).detect(image[:0]) == []


@pytest.fixture(scope="module")
def retinaface_mnet(shared):
    from facemask.detection.retinaface_mnet import RetinaFaceMobileNetDetector

    weights = shared / "models" / "retinaface-mobilenet0.25" / "mobilenet0.25_Final.pth"
    return RetinaFaceMobileNetDetector(weights, 0.5, 0.4, 750, 8)


def test_retinaface_mobilenet_agrees_with_yunet_on_real_photos(retinaface_mnet, yunet, shared):
    """The published checkpoint loads key for key, and its boxes and landmarks land on the faces
    YuNet finds (IoU >= 0.5, landmarks inside the box) on real unmasked photos."""
    import torch
    from torchvision.ops import box_iou

    agree = checked = 0
    for path in real_images(shared, "face-mask-2class/without_mask", 12):
        image = read_image(path, MAX_PIXELS)
        ref, got = yunet.detect(image), retinaface_mnet.detect(image)
        if len(ref) != 1:
            continue
        checked += 1
        if not got:
            continue
        iou = box_iou(torch.tensor(np.stack([f.box for f in got])), torch.tensor(ref[0].box[None]))
        best = got[int(iou.argmax())]
        (x1, y1, x2, y2), lms = best.box, best.landmarks
        inside = bool(((lms[:, 0] >= x1) & (lms[:, 0] <= x2) & (lms[:, 1] >= y1) & (lms[:, 1] <= y2)).all())
        agree += float(iou.max()) >= 0.5 and inside and lms[0, 0] < lms[1, 0]  # subject's right eye on the left
    assert checked >= 8
    assert agree >= checked - 1


def test_the_onnx_detector_takes_its_share_of_the_cores_and_answers_as_pytorch(retinaface_mnet, shared, tmp_path):
    """Exported to ONNX, the stock RetinaFace runs on as many threads as torch has in this process
    (a pool of two pipelines on two cores gives each one: a session on every core each would
    oversubscribe them) and finds the faces PyTorch finds in real scenes, with the same boxes."""
    import torch

    from facemask.detection.retinaface_mnet import RetinaFaceOnnxDetector
    from facemask.detector_training.export import export_onnx

    graph = export_onnx(retinaface_mnet.net, tmp_path / "detector.onnx")
    threads = torch.get_num_threads()
    try:
        sessions = {}
        for n in (1, 2):
            torch.set_num_threads(n)
            sessions[n] = RetinaFaceOnnxDetector(graph, 0.5, 0.4, 750, 8)
    finally:
        torch.set_num_threads(threads)
    assert {n: d.session.get_session_options().intra_op_num_threads for n, d in sessions.items()} == {1: 1, 2: 2}
    faces = 0
    for path in sorted((shared / "datasets/face-mask-scenes-train/images").glob("*.jpg"))[:6]:
        image = read_image(path, MAX_PIXELS)
        ref, got = retinaface_mnet.detect(image), sessions[1].detect(image)
        assert len(got) == len(ref)
        assert np.allclose([f.box for f in got], [f.box for f in ref], atol=0.5)
        faces += len(ref)
    assert faces >= 10


def test_retinaface_input_is_the_bgr_planes_less_their_means():
    """Worked by hand: pixel (B, G, R) = (104, 117, 123) is the network's zero; a search region cut
    out of a frame (a strided view) comes out as the same region of the whole frame's input."""
    from facemask.detection.retinaface_mnet import preprocess

    frame = np.zeros((4, 6, 3), np.uint8)
    frame[..., 0], frame[..., 1], frame[..., 2] = 104, 117, 123
    frame[1, 2] = (0, 255, 7)
    x = preprocess(frame)
    assert x.shape == (1, 3, 4, 6) and x.dtype == np.float32 and x.flags.c_contiguous
    assert x[0, :, 1, 2].tolist() == [-104.0, 138.0, -116.0]
    assert np.count_nonzero(x) == 3
    assert np.array_equal(preprocess(frame[1:3, 2:5]), x[:, :, 1:3, 2:5])


def test_retinaface_mobilenet_on_empty_and_faceless_images(retinaface_mnet):
    assert retinaface_mnet.detect(np.zeros((0, 0, 3), np.uint8)) == []
    assert retinaface_mnet.detect(np.full((240, 320, 3), 127, np.uint8)) == []


def test_retinaface_mobilenet_refuses_a_foreign_checkpoint(tmp_path):
    import torch

    from facemask.detection.retinaface_mnet import RetinaFaceMobileNetDetector

    bad = tmp_path / "other.pth"
    torch.save({"conv.weight": torch.zeros(1)}, bad)
    with pytest.raises(RuntimeError, match="Missing key"):
        RetinaFaceMobileNetDetector(bad, 0.5, 0.4, 750, 8)
    with pytest.raises(FileNotFoundError):
        RetinaFaceMobileNetDetector(tmp_path / "absent.pth", 0.5, 0.4, 750, 8)


def test_close_up_photos_are_not_blown_up_past_the_detector(shared, yunet_weights):
    """Small close-up photos (<= 160 px) enlarged to a 960 px long side would outgrow YuNet's
    anchors and break into partial faces; the upscale cap keeps one confident face per photo."""
    from facemask.pipeline import detect_at

    params = validate(compose([]))
    detector = YuNetDetector.from_config(params.detectors["yunet"], yunet_weights)
    small = [
        p
        for p in real_images(shared, "face-mask-2class/without_mask", 400)
        if max(read_image(p, MAX_PIXELS).shape[:2]) <= 160
    ]
    assert len(small) >= 12
    confident = params.pipeline.gate_min_score

    def faces(cap: float) -> list[int]:
        # a long side that would enlarge these photos over 6 times; every part of a face counted
        settings = params.pipeline.model_copy(update={"detect_long_side": 960, "max_upscale": cap, "nested_share": 1.0})
        return [
            sum(f.score >= confident for f in detect_at(detector, read_image(p, MAX_PIXELS), settings))
            for p in small[:12]
        ]

    capped = faces(params.pipeline.max_upscale)
    assert sum(n == 1 for n in capped) >= 11, capped
    unbounded = faces(16.0)
    assert sum(n == 1 for n in unbounded) <= 6, unbounded


class Recorded:
    """A detector that answers the boxes another detector gave on a real photo."""

    name = "recorded"

    def __init__(self, faces: list[Face]):
        self.faces = faces

    def detect(self, image: np.ndarray) -> list[Face]:
        return self.faces


def test_parts_of_a_face_are_dropped_after_nms(shared):
    """The fine-tuned detector's boxes on a held-out face-mask-2class photo (0_0_pubajia_0159, 146x118):
    the whole face and two parts of it (0.83 and 0.98 of their area inside it, IoU 0.43 and 0.41: NMS
    keeps them). At `pipeline.nested_share` the parts go; a neighbour overlapping 0.22 of its area stays,
    and a larger box scored lower hides no face."""
    image = read_image(shared / "datasets/face-mask-2class/without_mask/0_0_pubajia_0159.jpg", MAX_PIXELS)
    assert image.shape[:2] == (118, 146)
    settings = validate(compose()).pipeline.model_copy(update={"detect_long_side": 0})
    assert settings.nested_share == 0.7

    def face(box, score):
        return Face(np.array(box, dtype=np.float32), score)

    def kept(faces: list[Face], at=settings) -> list[float]:
        return [f.score for f in detect_at(Recorded(faces), image, at)]

    whole = face((0, 2, 129, 126), 0.92)
    parts = [face((56, 18, 144, 110), 0.89), face((1, 0, 76, 88), 0.45)]
    assert kept([whole, *parts]) == [0.92]
    assert kept([whole, *parts], settings.model_copy(update={"nested_share": 1.0})) == [0.92, 0.89, 0.45]
    assert kept([whole, face((100, 0, 229, 124), 0.9)]) == [0.92, 0.9]  # a neighbour, 0.22 of it overlapping
    assert kept([face((-20, -20, 146, 118), 0.35), whole]) == [0.35, 0.92]  # a false frame scored lower


def test_search_regions_grow_clip_and_merge():
    """Each face box grown by `margin` of its size per side (at least `min_side`), clipped to the
    frame; overlapping regions merged, also when a merge makes a region reach a third one."""
    from facemask.boxes import search_regions

    shape = (480, 640, 3)
    assert search_regions([(100, 100, 140, 150)], shape, 0.5, 16) == [(80, 75, 160, 175)]
    assert search_regions([(10, 10, 20, 20)], shape, 0.5, 64) == [(0, 0, 47, 47)]  # min_side, clipped
    assert search_regions([(600, 440, 640, 480)], shape, 1.0, 16) == [(560, 400, 640, 480)]
    far = search_regions([(100, 100, 140, 150), (400, 100, 440, 150)], shape, 0.5, 16)
    assert far == [(80, 75, 160, 175), (380, 75, 460, 175)]
    chain = search_regions([(100, 100, 140, 150), (170, 100, 210, 150), (240, 100, 280, 150)], shape, 0.5, 16)
    assert chain == [(80, 75, 300, 175)]
    assert search_regions([], shape, 0.5, 16) == []


SCENE = "ilc_0190f7383e7d.jpg"  # a training scene (640x355) with four faces


def test_faces_searched_in_regions_are_the_faces_of_the_whole_frame(retinaface_mnet, shared):
    """A real training scene searched only around its faces, each region at the whole frame's
    detection scale, gives the same faces (boxes within IoU 0.9, scores within 0.05) as the whole
    frame; a region with no face gives none."""
    from facemask.boxes import iou_matrix, search_regions

    image = read_image(shared / "datasets/face-mask-scenes-train/images" / SCENE, MAX_PIXELS)
    settings = validate(compose()).pipeline.model_copy(update={"nested_share": 0.7})
    whole = detect_at(retinaface_mnet, image, settings)
    assert len(whole) == 4
    regions = search_regions([f.box for f in whole], image.shape, 0.5, 128)
    assert sum((x2 - x1) * (y2 - y1) for x1, y1, x2, y2 in regions) < 0.5 * image.shape[0] * image.shape[1]
    found = detect_at(retinaface_mnet, image, settings, regions)
    assert len(found) == len(whole)
    iou = iou_matrix([f.box for f in whole], [f.box for f in found])
    pairs = iou.argmax(axis=1)
    assert (iou.max(axis=1) >= 0.9).all() and len(set(pairs.tolist())) == len(whole)
    assert all(abs(w.score - found[j].score) <= 0.05 for w, j in zip(whole, pairs, strict=True))
    assert not any(f.box[0] < 100 and f.box[1] < 100 for f in whole)
    assert detect_at(retinaface_mnet, image, settings, [(0, 0, 64, 64)]) == []  # a corner with no face
