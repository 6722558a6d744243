"""Review and correct: the entrance video's alert (an unmasked visitor beside a masked bystander,
`test_event_media`) with `stream.feedback` on keeps the visitor's region sharp and the bystander
blurred; a reviewer's verdict on it becomes a PASCAL VOC scene the pipeline's scene reader takes;
bad verdicts are refused before anything is written; with feedback off nothing is kept for review.
The pull into a project takes checked scenes only (a bad one is refused whole, with its reason) and
the ingest stage splits each reviewed scene by its image's digest (the whole loop: test_pipeline)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import cv2
import numpy as np
import pytest

from facemask.boxes import iou_matrix
from facemask.data import feedback as fb
from facemask.data.voc import load_scenes
from facemask.serving.events import EventNotFound, EventReview
from facemask.serving.feedback import BadReview, FeedbackOff, Review, scene_files, store
from facemask.stream.retention import MediaRetention

from .conftest import MAX_PIXELS, REPO, real_images
from .test_event_media import faces_found, media_cfg, record
from .test_stream import frames

pytestmark = pytest.mark.slow
LABELS = ["mask", "no_mask", "incorrect"]
IDENTITY = {label: label for label in LABELS}
CONTEXT = 4.0  # the visitor's region reaches the bystander 190 px to his left


def feedback_cfg(tmp_path: Path, enabled: bool = True):
    cfg = media_cfg(tmp_path, "blur", clips=False)
    raw = cfg.model_dump()
    raw["feedback"].update(enabled=enabled, context=CONTEXT)
    return type(cfg).model_validate(raw)


def nothing_stored(cfg) -> bool:
    return not cfg.feedback_dir.exists() or not any(cfg.feedback_dir.rglob("*.*"))


def test_a_verdict_on_a_real_alert_is_a_voc_scene_and_a_bad_one_changes_nothing(pipeline, video, tmp_path):
    cfg = feedback_cfg(tmp_path)
    alert, _ = record(pipeline, video, cfg)
    assert alert["media"]["region"] == f"entrance/{alert['id']}.region.jpg"
    region_file = cfg.media_dir / alert["media"]["region"]
    about = json.loads(region_file.with_suffix(".json").read_text())
    region = cv2.imread(str(region_file))
    assert region.shape[:2] == (about["height"], about["width"])
    # the visitor sharp (found where the record says), the masked bystander beside him blurred away:
    # the same pixels of the raw frame show both
    raw = dict(frames(video))[round(about["time"] - 1000.0, 1)]
    x0, y0 = about["origin"]  # the region's top left corner in the frame
    assert len(faces_found(pipeline, raw[y0 : y0 + about["height"], x0 : x0 + about["width"]])) == 2
    found = faces_found(pipeline, region)
    assert len(found) == 1 and iou_matrix([found[0].box], [about["box"]])[0, 0] > 0.5, (found, about)
    assert faces_found(pipeline, cv2.imread(str(cfg.media_dir / alert["media"]["snapshot"]))) == []

    reviews = EventReview(cfg, LABELS)
    served = alert["class"]
    other = next(label for label in LABELS if label != served)
    w, h = about["width"], about["height"]
    refused = [
        (Review("maybe"), "verdict"),
        (Review("wrong_class", "scarf"), "not a class"),
        (Review("wrong_class", served), "that verdict is `right`"),
        (Review("right", other), "wrong_class only"),
        (Review("right", box=(0, 0, w + 5, h)), "not a box inside the region"),
        (Review("right", box=(10, 10, 5, 20)), "not a box inside the region"),
        (Review("right", box=(0, 0, float("nan"), 4)), "four numbers"),
        (Review("right", reviewer="x" * 65), "reviewer"),
    ]
    for review, message in refused:
        with pytest.raises(BadReview, match=message):
            reviews.review(alert["id"], review)
    with pytest.raises(EventNotFound, match="no alert"):
        reviews.review("0" * 32, Review("right"))
    assert nothing_stored(cfg)

    stored = reviews.review(alert["id"], Review("right", reviewer="Ana", key_id="abc123"))
    assert stored["label"] == served and not stored["replaced"] and stored["box"] == about["box"]
    [scene] = load_scenes(cfg.feedback_dir, IDENTITY)  # the pipeline's own VOC reader takes it
    assert scene.labels == [served] and np.allclose(scene.boxes[0], about["box"], atol=0.05)
    assert cv2.imread(str(scene.image)).shape == region.shape
    root = ET.parse(scene_files(cfg.feedback_dir, alert["id"])[1]).getroot()
    assert root.findtext("reviewed/by") == "Ana" and root.findtext("reviewed/key") == "abc123"
    assert root.findtext("source/event") == alert["id"] and root.findtext("source/served") == served

    # a corrected class and box replace the verdict; `not a face` keeps the box as a rejection sample
    box = (1.0, 2.0, w - 1.0, h - 2.0)
    assert reviews.review(alert["id"], Review("wrong_class", other, box=box))["replaced"]
    [scene] = load_scenes(cfg.feedback_dir, IDENTITY)
    assert scene.labels == [other] and scene.boxes.tolist() == [list(box)]
    reviews.review(alert["id"], Review("not_a_face"))
    [scene] = load_scenes(cfg.feedback_dir, IDENTITY)
    assert scene.labels == [] and scene.ignored == ["not_a_face"]  # no face class: the face readers skip it
    [scene] = load_scenes(cfg.feedback_dir, fb.label_map(LABELS, "background"))  # the ingest stage's reading
    assert scene.labels == ["background"] and np.allclose(scene.boxes[0], about["box"], atol=0.05)
    listed = reviews.list()
    assert listed["feedback"] and listed["labels"] == LABELS
    assert listed["events"][0]["review"]["verdict"] == "not_a_face"
    assert listed["events"][0]["region_url"] == f"/events/{alert['id']}/region"
    region_file.with_suffix(".json").unlink()  # where the face is, gone (a half-swept region): refused
    with pytest.raises(EventNotFound, match="deleted"):
        reviews.review(alert["id"], Review("right"))
    [scene] = load_scenes(cfg.feedback_dir, IDENTITY)
    assert scene.ignored == ["not_a_face"]  # the stored verdict is untouched


def test_with_feedback_off_nothing_is_kept_for_review_and_verdicts_are_refused(pipeline, video, tmp_path):
    cfg = feedback_cfg(tmp_path, enabled=False)
    alert, _ = record(pipeline, video, cfg)
    assert set(alert["media"]) == {"snapshot"}  # clips off here: the snapshot only, no region
    assert not list(cfg.media_dir.rglob("*.region.*"))
    with pytest.raises(FeedbackOff, match=r"stream\.feedback\.enabled is false"):
        EventReview(cfg, LABELS).review(alert["id"], Review("right"))
    with pytest.raises(EventNotFound, match="feedback was off"):
        EventReview(cfg, LABELS).media(alert["id"], "region")
    assert "review" not in EventReview(cfg, LABELS).list()["events"][0] and nothing_stored(cfg)


def test_retention_sweeps_an_events_region_with_its_snapshot_and_reviewed_scenes_alike(tmp_path):
    cfg = feedback_cfg(tmp_path).media.model_copy(update={"retention_days": 7})
    media, feedback = tmp_path / "media", tmp_path / "feedback"
    now = time.time()
    for event_id, age in (("a" * 32, 8 * 86400), ("b" * 32, 3600)):
        files = [media / "door" / f"{event_id}{suffix}" for suffix in (".jpg", ".region.jpg", ".region.json")]
        files += list(scene_files(feedback, event_id))
        for path in files:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"x")
            os.utime(path, (now - age, now - age))
    assert MediaRetention(cfg, media).sweep(now) == ["a" * 32]
    assert MediaRetention(cfg, feedback).sweep(now) == ["a" * 32]
    left = sorted(p.name for p in tmp_path.rglob("*.*"))
    assert left == sorted(["b" * 32 + s for s in (".jpg", ".region.jpg", ".region.json", ".jpg", ".xml")])


def test_a_deployment_asking_for_review_without_alert_media_is_refused_at_start(tmp_path, monkeypatch):
    """`FACEMASK_FEEDBACK=on` where `stream.alerts.snapshots` is off would keep nothing to review: the
    service's stream settings refuse to load, saying what to change; off, or with media, they load."""
    from facemask.config import ConfigError, load_params
    from facemask.serving.packaging import load_stream_config

    raw = load_params(REPO / "params.yaml").stream.model_dump(mode="json")
    raw["alerts"]["snapshots"] = "off"
    (tmp_path / "stream.json").write_text(json.dumps(raw))
    monkeypatch.setenv("FACEMASK_FEEDBACK", "on")
    with pytest.raises(ConfigError, match="snapshots is off"):
        load_stream_config(tmp_path)
    monkeypatch.setenv("FACEMASK_FEEDBACK", "off")
    assert not load_stream_config(tmp_path).feedback.enabled
    raw["alerts"]["snapshots"] = "blur"
    (tmp_path / "stream.json").write_text(json.dumps(raw))
    monkeypatch.setenv("FACEMASK_FEEDBACK", "on")
    assert load_stream_config(tmp_path).feedback.enabled


def served_scene(folder: Path, regions: Path, photo: Path, event_id: str, served: str, review: Review) -> dict:
    """A reviewed alert as a service stores it (`serving.feedback.store`), of a real photo as its region."""
    image = cv2.imread(str(photo))
    h, w = image.shape[:2]
    region = regions / f"{event_id}.region.jpg"
    region.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(region), image)
    box = [0.2 * w, 0.15 * h, 0.8 * w, 0.85 * h]
    region.with_suffix(".json").write_text(json.dumps({"width": w, "height": h, "box": box, "frame_box": box}))
    event = {"id": event_id, "class": served, "camera": "door", "time": 1000.0}
    return store(folder, event, region, review, LABELS)


def test_a_pull_takes_checked_reviews_refuses_bad_ones_whole_and_ingest_splits_them_for_good(shared, tmp_path):
    """`facemask.stages.feedback`'s pull from a service's feedback folder: good reviewed alerts are
    copied (again: unchanged; a later verdict: replaced), each bad one is refused with its reason and
    nothing of it written. The ingest stage reads the pulled folder as scenes of kind `region`, a
    `not_a_face` as the rejection class, each scene in the split its image's digest draws."""
    from facemask.config import compose, validate
    from facemask.stages.ingest import feedback_manifest

    photos = real_images(shared, "face-mask-2class/without_mask", 8)
    service, regions, project = tmp_path / "service", tmp_path / "media", tmp_path / "project/data/feedback"
    ids = [f"{k:032x}" for k in range(1, 9)]
    served_scene(service, regions, photos[0], ids[0], "no_mask", Review("wrong_class", "mask", reviewer="Ana"))
    served_scene(service, regions, photos[1], ids[1], "no_mask", Review("not_a_face"))
    served_scene(service, regions, photos[2], ids[2], "no_mask", Review("right"))
    bad = {}
    for k, (edit, reason) in enumerate(
        [
            (lambda xml, img: xml.write_text(xml.read_text().replace("<name>no_mask", "<name>scarf")), "not a class"),
            (lambda xml, img: img.write_bytes(b"\xff\xd8 not a jpeg"), "jpg: not a decodable image"),
            (lambda xml, img: xml.write_text(re.sub(r"<xmax>[\d.]+<", "<xmax>5000<", xml.read_text())), "not inside"),
            (lambda xml, img: img.unlink(), "no image"),
            (lambda xml, img: xml.write_text(re.sub(r"<reviewed>.*</reviewed>", "", xml.read_text(), flags=re.S)),
             "no reviewed/verdict"),
        ],
        start=3,
    ):  # fmt: skip
        served_scene(service, regions, photos[k], ids[k], "no_mask", Review("right"))
        image, annotation = scene_files(service, ids[k])
        edit(annotation, image)
        bad[ids[k]] = reason
    report = fb.pull(service, project, fb.label_map(LABELS, "background"), MAX_PIXELS)
    assert (report.found, report.added, report.replaced, report.unchanged) == (8, 3, 0, 0)
    assert report.verdicts == {"wrong_class": 1, "not_a_face": 1, "right": 1} and report.total == 3
    refused = {r["scene"]: r["reason"] for r in report.refused}
    assert set(refused) == set(bad) and all(bad[k] in refused[k] for k in bad), refused
    assert sorted(p.stem for p in project.rglob("*.*")) == sorted(ids[:3] * 2)  # nothing of a refused one
    again = fb.pull(service, project, fb.label_map(LABELS, "background"), MAX_PIXELS)
    assert (again.added, again.replaced, again.unchanged) == (0, 0, 3)
    served_scene(service, regions, photos[2], ids[2], "no_mask", Review("wrong_class", "incorrect"))
    assert fb.pull(service, project, fb.label_map(LABELS, "background"), MAX_PIXELS).replaced == 1
    with pytest.raises(fb.FeedbackError, match="not a feedback folder"):
        fb.pull(tmp_path / "media", project, fb.label_map(LABELS, "background"), MAX_PIXELS)
    with pytest.raises(fb.FeedbackError, match="own feedback folder"):
        fb.pull(project, project, fb.label_map(LABELS, "background"), MAX_PIXELS)

    params = validate(compose([f"paths.feedback={project}", f"paths.raw={tmp_path / 'project/raw'}",
                               "data.eval_guard.enabled=false"]))  # fmt: skip
    rows, ingested = feedback_manifest(params)
    assert rows["kind"].eq("region").all() and rows["source"].eq("feedback").all() and rows["id"].is_unique
    by_image = {Path(p).stem: label for p, label in zip(rows["relpath"], rows["label"], strict=True)}
    assert by_image == {ids[0]: "mask", ids[1]: "background", ids[2]: "incorrect"}
    assert (rows["split"] == [fb.split_of(h, 0.15, 0.15) for h in rows["sha256"]]).all()
    assert ingested.scene_faces == 3 and sum(sum(c.values()) for c in ingested.per_split.values()) == 3
    box = rows.iloc[0][["x1", "y1", "x2", "y2"]].to_numpy(dtype=float)  # the face's box, in the image's pixels
    assert (box >= 0).all() and box[2] <= rows.iloc[0]["width"] and box[3] <= rows.iloc[0]["height"]
    # a scene's split is its own: more reviews leave it where it was; over many scenes the shares hold
    digests = [hashlib.sha256(str(k).encode()).hexdigest() for k in range(4000)]
    shares = {s: np.mean([fb.split_of(h, 0.15, 0.15) == s for h in digests]) for s in ("train", "val", "test")}
    assert abs(shares["test"] - 0.15) < 0.02 and abs(shares["val"] - 0.15) < 0.02, shares
