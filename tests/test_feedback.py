"""Review and correct: the entrance video's alert (an unmasked visitor beside a masked bystander,
`test_event_media`) with `stream.feedback` on keeps the visitor's region sharp and the bystander
blurred; a reviewer's verdict on it becomes a PASCAL VOC scene the pipeline's scene reader takes;
bad verdicts are refused before anything is written; with feedback off nothing is kept for review."""

from __future__ import annotations

import json
import os
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import cv2
import numpy as np
import pytest

from facemask.boxes import iou_matrix
from facemask.data.voc import load_scenes
from facemask.serving.events import EventNotFound, EventReview
from facemask.serving.feedback import BadReview, FeedbackOff, Review, scene_files
from facemask.stream.retention import MediaRetention

from .conftest import REPO
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

    # a corrected class and box replace the verdict; `not a face` leaves a scene without a face
    box = (1.0, 2.0, w - 1.0, h - 2.0)
    assert reviews.review(alert["id"], Review("wrong_class", other, box=box))["replaced"]
    [scene] = load_scenes(cfg.feedback_dir, IDENTITY)
    assert scene.labels == [other] and scene.boxes.tolist() == [list(box)]
    reviews.review(alert["id"], Review("not_a_face"))
    [scene] = load_scenes(cfg.feedback_dir, IDENTITY)
    assert scene.labels == [] and scene.boxes.shape == (0, 4)
    listed = reviews.list()
    assert listed["feedback"] and listed["labels"] == LABELS
    assert listed["events"][0]["review"]["verdict"] == "not_a_face"
    assert listed["events"][0]["region_url"] == f"/events/{alert['id']}/region"
    region_file.with_suffix(".json").unlink()  # where the face is, gone (a half-swept region): refused
    with pytest.raises(EventNotFound, match="deleted"):
        reviews.review(alert["id"], Review("right"))
    [scene] = load_scenes(cfg.feedback_dir, IDENTITY)
    assert scene.labels == []  # the stored verdict is untouched


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
