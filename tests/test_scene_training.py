"""Training on annotated real scenes: scene ingestion (split by scene, evaluation copies dropped,
boxes scaled, malformed annotations refused), detections matched to annotated faces, one crop for
training and serving, and false faces rejected before anything downstream sees them."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys

import cv2
import numpy as np
import pandas as pd
import pytest
import torch

from facemask.classifier import MaskClassifier
from facemask.config import ConfigError, Params, compose, validate, write_params
from facemask.data.voc import SceneError, load_scenes
from facemask.detection import build_detector
from facemask.detection.align import crop_face
from facemask.draw import COMPLIANT, PALETTE, hex_colour, label_colours
from facemask.face_crops import process, scene_faces
from facemask.imageio import read_image
from facemask.pipeline import FaceFinder, MaskPipeline, fit_box, unfit_box
from facemask.preprocess import Preprocessor
from facemask.scenes.average_precision import scene_metrics
from facemask.scenes.evaluate import to_prediction
from facemask.scenes.rejection import best_threshold, rejection_sweep
from facemask.serving.decisions import GateRule
from facemask.stream.compliance import hourly
from facemask.stream.session import CameraSession
from facemask.stream.sinks import EventSinks, read_events

from .conftest import MAX_PIXELS, copy_scenes, dev_scene_stems, real_images, train_scene_stems

LABEL_MAP = {"with_mask": "mask", "without_mask": "no_mask", "mask_weared_incorrect": "incorrect"}
DEV_COPY, DEV_CROP, RESIZED = "ilc_zz_copy_of_dev", "ilc_zz_crop_of_dev", "ilc_zz_resized"


def _ingest(root, env):
    return subprocess.run(
        [sys.executable, "-m", "facemask.stages.ingest", "--params", str(root / "params.yaml")],
        cwd=root, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip


@pytest.fixture(scope="module")
def ingested(tmp_path_factory, shared):
    """A mirror with 40 real training scenes, two copies of an evaluation scene (one exact, one a
    central crop) and one scene whose image was halved after annotation; ingested once."""
    root = tmp_path_factory.mktemp("scene-ingest")
    mirror = root / "mirror"
    for source, folder in (("face-mask-2class", "with_mask"), ("face-mask-2class", "without_mask"),
                           ("maskedface-net-sample", "correct"), ("maskedface-net-sample", "incorrect")):  # fmt: skip
        (mirror / "datasets" / source / folder).mkdir(parents=True)
        for f in real_images(shared, f"{source}/{folder}", 6):
            shutil.copy(f, mirror / "datasets" / source / folder / f.name)
    dev, train = shared / "datasets/face-mask-scenes-dev", mirror / "datasets/face-mask-scenes-train"
    copy_scenes(dev, mirror / "datasets/face-mask-scenes-dev", dev_scene_stems(12))
    stems = train_scene_stems(shared, 40)
    copy_scenes(shared / "datasets/face-mask-scenes-train", train, stems)
    # an evaluation scene copied into the training set, whole and as a central crop
    shutil.copy(dev / "images/maksssksksss3.jpg", train / f"images/{DEV_COPY}.jpg")
    shutil.copy(dev / "annotations/maksssksksss3.xml", train / f"annotations/{DEV_COPY}.xml")
    image = cv2.imread(str(dev / "images/maksssksksss5.jpg"))
    h, w = image.shape[:2]
    cv2.imwrite(str(train / f"images/{DEV_CROP}.jpg"), image[h // 12 : h - h // 12, w // 12 : w - w // 12])
    shutil.copy(dev / "annotations/maksssksksss5.xml", train / f"annotations/{DEV_CROP}.xml")
    # a training scene whose image was halved after it was annotated: its boxes must be halved too
    original = stems[7]
    image = cv2.imread(str(train / f"images/{original}.jpg"))
    cv2.imwrite(str(train / f"images/{RESIZED}.jpg"), cv2.resize(image, None, fx=0.5, fy=0.5))
    (train / f"images/{original}.jpg").unlink()
    (train / f"annotations/{original}.xml").rename(train / f"annotations/{RESIZED}.xml")
    truth = load_scenes(shared / "datasets/face-mask-scenes-train", LABEL_MAP)
    expected = next(s for s in truth if s.name == original).boxes * 0.5

    overrides = [f"paths.{k}={root / k}" for k in ("raw", "interim", "crops", "models", "reports")]
    write_params(compose(overrides), root / "params.yaml")
    env = {**os.environ, "FACEMASK_MIRROR": str(mirror), "FACEMASK_CACHE": str(root / "cache")}
    proc = _ingest(root, env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    manifest = pd.read_csv(root / "interim/manifest.csv")
    report = json.loads((root / "reports/ingest.json").read_text())
    return root, env, mirror, manifest, report, expected


def test_scene_faces_are_samples_split_by_scene(ingested):
    _, _, _, manifest, report, _ = ingested
    faces = manifest[manifest["kind"] == "scene"]
    assert report["scene_faces"] == len(faces) > report["scene_images"] >= 35
    assert set(faces["label"]) == {"mask", "no_mask", "incorrect"}
    assert (faces.groupby("relpath")["split"].nunique() == 1).all()  # every face of a scene in one split
    assert (manifest.groupby("group")["split"].nunique() == 1).all()  # near duplicates too
    assert set(faces["split"]) == {"train", "val", "test"}
    assert faces["id"].is_unique and faces["id"].str.match(r"^face-mask-scenes-train-[0-9a-f]{12}-f\d\d$").all()
    assert (faces["x2"] > faces["x1"]).all() and (faces["y2"] > faces["y1"]).all()
    assert report["per_source"]["face-mask-scenes-train"]["train"]


def test_copies_of_evaluation_scenes_are_dropped_and_counted(ingested):
    _, _, _, manifest, report, _ = ingested
    assert report["evaluation_copies"] == 2
    assert report["evaluation_copy_examples"] == [f"images/{DEV_COPY}.jpg", f"images/{DEV_CROP}.jpg"]
    assert not manifest["relpath"].str.contains("ilc_zz_c").any()


def test_boxes_are_scaled_to_a_resized_image(ingested):
    _, _, _, manifest, _, expected = ingested
    boxes = manifest[manifest["relpath"] == f"images/{RESIZED}.jpg"].sort_values("id")[["x1", "y1", "x2", "y2"]]
    np.testing.assert_allclose(boxes.to_numpy(), expected, atol=0.1)


def test_malformed_annotation_is_refused_naming_the_file(ingested):
    root, env, mirror, _, _, _ = ingested
    before = (root / "interim/manifest.csv").read_bytes()
    bad = mirror / "datasets/face-mask-scenes-train/annotations" / f"{RESIZED}.xml"
    good = bad.read_text()
    try:
        bad.write_text(good.replace("<xmax>", "<xmaximum>", 1).replace("</xmax>", "</xmaximum>", 1))
        proc = _ingest(root, env)
        assert proc.returncode == 2
        assert f"{RESIZED}.xml: an object has no numeric bndbox/xmax" in proc.stderr
        bad.write_text("<annotation><object>")
        proc = _ingest(root, env)
        assert proc.returncode == 2 and f"{RESIZED}.xml: not valid XML" in proc.stderr
    finally:
        bad.write_text(good)
    assert (root / "interim/manifest.csv").read_bytes() == before  # nothing stored was changed


def test_voc_reader_refuses_an_annotation_without_image(tmp_path, shared):
    copy_scenes(shared / "datasets/face-mask-scenes-train", tmp_path, train_scene_stems(shared, 2))
    (tmp_path / "images" / f"{train_scene_stems(shared, 1)[0]}.jpg").unlink()
    with pytest.raises(SceneError, match=r"ilc_\w+\.xml: no image"):
        load_scenes(tmp_path, LABEL_MAP)


# --- matching, one crop, rejection -----------------------------------------------------------------


@pytest.fixture(scope="module")
def params(shared):
    return validate(compose(["detector=yunet", "crop.jpeg_quality=100"]))


@pytest.fixture(scope="module")
def finder(params, yunet_weights):
    return FaceFinder.from_params(params, build_detector(params.detector, yunet_weights))


@pytest.fixture(scope="module")
def crowd(shared):
    """A real training scene with at least four boxed faces."""
    scenes = load_scenes(shared / "datasets/face-mask-scenes-train", LABEL_MAP)
    return next(s for s in scenes if len(s.labels) >= 4 and min(s.boxes[:, 2] - s.boxes[:, 0]) >= 40)


def _iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def test_detections_are_matched_to_annotated_faces_on_a_real_scene(finder, params, crowd):
    image = read_image(crowd.image, MAX_PIXELS)
    annotated, _, unmatched = scene_faces(finder, image, crowd.boxes, params)
    assert len(annotated) == len(crowd.boxes)
    matched = [
        (box, face) for box, (row, face) in zip(crowd.boxes, annotated, strict=True) if row["status"] == "matched"
    ]
    assert len(matched) >= len(crowd.boxes) - 1
    for box, face in matched:
        assert face.score >= params.detector.score_threshold and face.landmarks is not None
        assert _iou(fit_box(face.box, params.detector.box_fit), box) >= params.crop.match_iou
    assert len({id(face) for _, face in matched}) == len(matched)  # one detection per annotated face

    # hide one annotated face: its detection is now unmatched, and the face it was is not invented
    fewer, _, unmatched_fewer = scene_faces(finder, image, crowd.boxes[1:], params)
    assert [r["status"] for r, _ in fewer] == [r["status"] for r, _ in annotated[1:]]
    assert unmatched_fewer == unmatched + (annotated[0][0]["status"] == "matched")


def test_a_missed_face_is_cut_from_its_box_in_the_detector_convention(finder, params, crowd):
    image = read_image(crowd.image, MAX_PIXELS)
    h, w = image.shape[:2]
    nowhere = np.array([[w - 30, h - 30, w - 6, h - 4]], np.float32)  # a corner with no face in it
    (row, face), *_ = scene_faces(finder, image, nowhere, params)[0]
    assert row["status"] == "missed" and row["score"] == 0.0 and face.landmarks is None
    np.testing.assert_allclose(fit_box(face.box, params.detector.box_fit), nowhere[0], atol=1e-3)
    np.testing.assert_allclose(unfit_box(nowhere[0], params.detector.box_fit), face.box, atol=1e-3)


class FixedLogits(torch.nn.Module):
    """A stand-in network with fixed class logits, to control what the classifier answers."""

    def __init__(self, logits: list[float]):
        super().__init__()
        self.logits = torch.tensor(logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits.expand(len(x), -1)


def pipeline_with(params, finder, logits: list[float]) -> MaskPipeline:
    labels = params.classifier_labels
    assert labels[-1] == "background"
    classifier = MaskClassifier(
        FixedLogits(logits), labels, Preprocessor.from_config(params.model),
        {"crop": params.crop.model_dump(), "reject_label": "background", "compliant_label": params.data.compliant},
    )  # fmt: skip
    return MaskPipeline.from_classifier(finder.detector, classifier, None, params.pipeline, params.detector.box_fit)


def test_crop_stage_and_pipeline_cut_the_same_crop(finder, params, crowd, tmp_path):
    samples = [
        {"id": f"s-000000000000-f{k:02d}", "kind": "scene", "x1": b[0], "y1": b[1], "x2": b[2], "y2": b[3]}
        for k, b in enumerate(crowd.boxes)
    ]
    rows = process(finder, crowd.image, samples, tmp_path, params)
    pipe = pipeline_with(params, finder, [2.0, 0.0, 0.0, 0.0])
    seen: list[np.ndarray] = []
    real = pipe.classifier.predict_proba
    pipe.classifier.predict_proba = lambda crops, **kw: (seen.extend(crops), real(crops, **kw))[1]
    frame = read_image(crowd.image, MAX_PIXELS)
    results = pipe(frame)
    assert len(results) == len(seen) >= len(crowd.boxes) - 1
    boxes = np.array([f.box for f in pipe.detect_faces(frame)])
    matched = [r for r in rows if r["status"] == "matched"]
    assert matched
    for row in matched:
        gap = np.abs(boxes - [row["x1"], row["y1"], row["x2"], row["y2"]]).max(axis=1)
        k = int(gap.argmin())
        assert gap[k] <= 0.05  # the same detection, to the pixel
        written = cv2.imread(str(tmp_path / row["crop"]))
        assert written.shape == seen[k].shape == (params.crop.size, params.crop.size, 3)
        assert np.abs(written.astype(int) - seen[k].astype(int)).mean() < 1.5  # JPEG at quality 100


def test_a_face_rejected_as_background_never_reaches_the_answer(finder, params, crowd):
    frame = read_image(crowd.image, MAX_PIXELS)
    faces = finder.detect(frame)
    assert len(faces) >= 4
    rejecting = pipeline_with(params, finder, [0.0, 0.0, 0.0, 3.0])  # p(background) ~ 0.87
    assert rejecting(frame) == []
    assert GateRule("mask", params.serving.gate_deny, 0.6).decide(rejecting(frame)).reason == "no_face"
    doubtful = pipeline_with(params, finder, [1.0, 0.0, 0.0, 0.5])  # p(background) ~ 0.25: kept
    results = doubtful(frame)
    assert len(results) == len(faces)
    p_face = 1 - float(torch.softmax(torch.tensor([1.0, 0.0, 0.0, 0.5]), 0)[3])
    for face, r in zip(faces, results, strict=True):
        assert set(r.probabilities) == {"mask", "no_mask", "incorrect"} and r.label == "mask"
        assert sum(r.probabilities.values()) == pytest.approx(1.0, abs=1e-3)
        assert r.score == pytest.approx(face.score * p_face, abs=1e-3)  # ranked lower by its doubt


class RowLogits(torch.nn.Module):
    """A stand-in network answering row k of `logits` for the k-th crop of a batch."""

    def __init__(self, logits: list[list[float]]):
        super().__init__()
        self.logits = torch.tensor(logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits[: len(x)]


def test_an_alert_snapshot_is_cut_from_the_alerted_face_when_a_face_before_it_is_rejected(
    finder, params, crowd, tmp_path
):
    """The second of the scene's faces is rejected as background, the others are unmasked: every
    alert's snapshot must be cut from its own track's detection, never from the face at its index
    in the detector's list (which, after the rejection, belongs to somebody else)."""
    frame = read_image(crowd.image, MAX_PIXELS)
    faces = finder.detect(frame)
    assert len(faces) >= 3
    no_mask, background = [0.0, 4.0, 0.0, 0.0], [0.0, 0.0, 0.0, 4.0]
    logits = [no_mask, background] + [no_mask] * (len(faces) - 2)
    labels = params.classifier_labels
    classifier = MaskClassifier(
        RowLogits(logits), labels, Preprocessor.from_config(params.model),
        {"crop": params.crop.model_dump(), "reject_label": "background", "compliant_label": params.data.compliant},
    )  # fmt: skip
    pipeline = MaskPipeline.from_classifier(finder.detector, classifier, None, params.pipeline, params.detector.box_fit)
    cfg = params.stream.model_dump()
    cfg["sinks"].update(jsonl=tmp_path / "events.jsonl", log=False)
    cfg["alerts"].update(snapshots="store", camera_cooldown_s=0, min_score=0.0)
    cfg["frame_diff"]["enabled"] = False
    cfg = type(params.stream).model_validate(cfg)
    sinks = EventSinks(cfg.sinks)
    session = CameraSession("crowd", pipeline, cfg, sinks)
    alerts = [a for t in range(12) for a in session.process(frame, now=1000.0 + 0.5 * t)["alerts"]]
    sinks.close()
    kept = [f for k, f in enumerate(faces) if k != 1]
    assert len(alerts) == len(kept)  # one per unmasked person, none for the rejected face
    snapshots = {
        e["track"]: cv2.imdecode(np.frombuffer(base64.b64decode(e["snapshot_jpeg_b64"]), np.uint8), cv2.IMREAD_COLOR)
        for e in map(json.loads, (tmp_path / "events.jsonl").read_text().splitlines())
        if e["type"] == "alert"
    }
    for alert in alerts:
        # the alerted person: the kept detection whose fitted box is the alert's box
        gaps = [np.abs(fit_box(f.box, params.detector.box_fit) - alert["box"]).max() for f in kept]
        own = kept[int(np.argmin(gaps))]
        assert min(gaps) <= 0.1
        expected = crop_face(frame, own, 128, 0.3, align=False)
        others = [crop_face(frame, f, 128, 0.3, align=False) for f in faces if f is not own]
        snapshot = snapshots[alert["track"]].astype(int)
        own_error = np.abs(snapshot - expected.astype(int)).mean()
        assert own_error < 4  # JPEG at quality 85 of the same crop
        assert all(own_error < np.abs(snapshot - o.astype(int)).mean() / 3 for o in others)


def test_the_rejection_sweep_drops_every_face_below_the_classifiers_doubt_and_none_above(finder, params, crowd):
    """p(background) is 0.6 for every face: a threshold at or under it drops them all (recall 0), one
    above keeps every detection (the recall of the pipeline without rejection)."""
    p_bg = 0.6
    logits = [0.0, 0.0, 0.0, float(np.log(p_bg / (1 - p_bg) * 3))]  # softmax: background 0.6, faces 0.4/3
    pipeline = pipeline_with(params, finder, logits)
    assert float(torch.softmax(torch.tensor(logits), 0)[3]) == pytest.approx(p_bg, abs=1e-6)
    sweep = rejection_sweep(pipeline, [crowd], MAX_PIXELS, 0.5, (16, 32), grid=(0.5, 0.6, 0.7, 1.0))
    kept = MaskPipeline.from_classifier(
        finder.detector, pipeline.classifier, None, params.pipeline.model_copy(update={"reject_min_probability": 1.0}),
        params.detector.box_fit,
    )(read_image(crowd.image, MAX_PIXELS))  # fmt: skip
    found = scene_metrics([(crowd.boxes, crowd.labels)], [to_prediction(kept, pipeline.labels)], pipeline.labels)
    assert sweep["detector_recall"].tolist()[:2] == [0.0, 0.0]
    assert sweep["detector_recall"].tolist()[2:] == [found["detector_recall"]] * 2 and found["detector_recall"] > 0.5
    assert best_threshold(sweep) == 1.0  # the same mAP at 0.7 and 1.0: the one that rejects least


RENAMED = {"mask": "covered", "no_mask": "bare", "incorrect": "half"}


def renamed_params() -> Params:
    """The default configuration with every class renamed (sources, scenes, gate, alerts)."""
    raw = compose(["detector=yunet"])
    data = raw["data"]
    data["labels"], data["compliant"] = [RENAMED[lb] for lb in data["labels"]], RENAMED[data["compliant"]]
    for source in [*data["sources"].values(), raw["scenes"]["source"]]:
        source["label_map"] = {k: RENAMED[v] for k, v in source["label_map"].items()}
    raw["serving"]["gate_deny"] = {RENAMED[k]: v for k, v in raw["serving"]["gate_deny"].items()}
    raw["stream"]["alerts"]["classes"] = [RENAMED[lb] for lb in raw["stream"]["alerts"]["classes"]]
    with pytest.raises(ConfigError, match="compliant 'mask' is not one of the labels"):
        validate({**raw, "data": {**data, "compliant": "mask"}})
    with pytest.raises(ConfigError, match="gate_deny must give a reason for each of"):
        validate({**raw, "serving": {**raw["serving"], "gate_deny": {"bare": "no_mask"}}})
    return validate(raw)


def test_renamed_classes_flow_through_gate_stream_compliance_and_colours(finder, crowd, tmp_path):
    """No class name is written in the code: with the classes renamed in the configuration, a classifier
    trained on them (its artefact names the compliant class) drives the gate, the live tracks and their
    colours, the alerts, the stats events and the compliance report."""
    params = renamed_params()
    frame = read_image(crowd.image, MAX_PIXELS)
    faces = finder.detect(frame)
    assert len(faces) >= 3
    covered, bare, half = [4.0, 0.0, 0.0, 0.0], [0.0, 4.0, 0.0, 0.0], [0.0, 0.0, 4.0, 0.0]
    logits = [covered, bare] + [half] * (len(faces) - 2)
    meta = {"crop": params.crop.model_dump(), "reject_label": "background", "compliant_label": params.data.compliant}
    classifier = MaskClassifier(
        RowLogits(logits), params.classifier_labels, Preprocessor.from_config(params.model), meta
    )
    pipeline = MaskPipeline.from_classifier(finder.detector, classifier, None, params.pipeline, params.detector.box_fit)
    assert pipeline.labels == ["covered", "bare", "half"] and pipeline.compliant == "covered"

    results = pipeline(frame)
    gate = GateRule(pipeline.compliant, params.serving.gate_deny, 0.6).check(pipeline.labels)
    assert [gate.decide([r]).reason for r in results[:3]] == ["ok", "no_mask", "mask_incorrect"]
    with pytest.raises(ValueError, match="does not cover the classifier's classes"):
        GateRule("mask", {"no_mask": "no_mask"}, 0.6).check(pipeline.labels)

    colours = label_colours(pipeline.labels, pipeline.compliant)
    assert colours == {"covered": COMPLIANT, "bare": PALETTE[0], "half": PALETTE[1]}
    cfg = params.stream.model_dump()
    cfg["sinks"].update(jsonl=tmp_path / "events.jsonl", log=False)
    cfg["alerts"].update(camera_cooldown_s=0, min_score=0.0, snapshots="off")
    cfg["frame_diff"]["enabled"] = False
    cfg = type(params.stream).model_validate(cfg)
    sinks = EventSinks(cfg.sinks)
    session = CameraSession("door", pipeline, cfg, sinks)
    answers = [session.process(frame, now=1000.0 + 0.5 * t) for t in range(8)]
    session.close(now=1004.0)
    sinks.close()
    tracks = answers[-1]["tracks"]
    assert sorted(t["label"] for t in tracks) == sorted(r.label for r in results)
    assert all(t["colour"] == hex_colour(colours[t["label"]]) for t in tracks)
    assert answers[-1]["compliance"] == pytest.approx(1 / len(results))
    assert {a["class"] for answer in answers for a in answer["alerts"]} == {"bare", "half"}

    events = list(read_events(tmp_path / "events.jsonl"))
    stats = [e for e in events if e["type"] == "stats"]
    assert stats and stats[0]["compliant"] == "covered"
    assert {k for k in stats[0] if k.startswith("faces_")} == {"faces_covered", "faces_bare", "faces_half"}
    table = hourly(events)
    assert table["faces"].sum() == 8 * len(results)
    assert table["masked_share"].tolist() == [pytest.approx(1 / len(results))]
