"""Scene metrics against hand-worked boxes, and reading real and malformed VOC annotations."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from facemask.boxes import match
from facemask.data.voc import SceneError, load_scenes
from facemask.scenes.average_precision import Prediction, scene_metrics, size_bin

LABELS = ["mask", "no_mask", "incorrect"]
A = [10, 10, 50, 50]  # 40 px: medium
B = [100, 10, 120, 30]  # 20 px: small
C = [200, 100, 330, 230]  # 130 px: large


def pred(boxes, labels, scores=None, conf=None) -> Prediction:
    n = len(labels)
    return Prediction(
        np.array(boxes, dtype=np.float32).reshape(-1, 4),
        labels,
        np.array(scores or [0.9] * n, dtype=np.float32),
        np.array(conf or [0.9] * n, dtype=np.float32),
    )


def gt(boxes, labels):
    return np.array(boxes, dtype=np.float32).reshape(-1, 4), labels


def test_perfect_prediction_gives_ap_one():
    gts = [gt([A, B], ["mask", "no_mask"]), gt([C], ["incorrect"])]
    preds = [pred([A, B], ["mask", "no_mask"]), pred([C], ["incorrect"])]
    r = scene_metrics(gts, preds, LABELS)
    assert r["ap"] == {"mask": pytest.approx(1.0), "no_mask": pytest.approx(1.0), "incorrect": pytest.approx(1.0)}
    assert r["map"] == pytest.approx(1.0)
    assert r["detector_recall"] == 1.0 and r["detector_precision"] == 1.0 and r["matched_accuracy"] == 1.0
    assert r["false_positives"] == dict.fromkeys(LABELS, 0)


def test_a_missed_face_lowers_recall_exactly():
    # two no_mask faces, one found: recall 1/2, precision stays 1, so AP is exactly 0.5 (101-point)
    gts = [gt([A, C], ["no_mask", "no_mask"])]
    r = scene_metrics(gts, [pred([A], ["no_mask"])], LABELS)
    assert r["recall_by_size"]["no_mask"]["all"] == {"found": 1, "total": 2, "recall": 0.5}
    assert r["recall_by_size"]["no_mask"]["medium"]["recall"] == 1.0
    assert r["recall_by_size"]["no_mask"]["large"]["recall"] == 0.0
    assert r["confusion"]["no_mask"]["missed"] == 1
    assert r["ap"]["no_mask"] == pytest.approx(51 / 101)  # precision 1 at recall 0..0.5: 51 of 101 points
    assert r["detector_recall"] == 0.5


def test_wrong_class_is_both_a_miss_and_a_false_positive():
    gts = [gt([A], ["mask"]), gt([C], ["no_mask"])]
    preds = [pred([A], ["no_mask"], scores=[0.9]), pred([C], ["no_mask"], scores=[0.8])]
    r = scene_metrics(gts, preds, LABELS)
    assert r["ap"]["mask"] == pytest.approx(0.0)  # its only face was called no_mask: a miss
    # no_mask: the false positive (A) ranks first, then the true positive (C): precision 1/2 at
    # recall 1 is the best at every recall point, so all 101 points are 0.5
    assert r["ap"]["no_mask"] == pytest.approx(0.5)
    # ranked the other way round, precision is 1 up to recall 1: AP 1
    flipped = [pred([A], ["no_mask"], scores=[0.8]), pred([C], ["no_mask"], scores=[0.9])]
    assert scene_metrics(gts, flipped, LABELS)["ap"]["no_mask"] == pytest.approx(1.0)
    assert r["detector_recall"] == 1.0  # the detector itself found both faces
    assert r["confusion"]["mask"]["no_mask"] == 1 and r["matched_accuracy"] == 0.5
    assert r["false_positives"]["no_mask"] == 0  # class-agnostic: A is matched, just wrongly labelled


def test_detection_on_nothing_is_a_false_positive():
    r = scene_metrics([gt([A], ["mask"])], [pred([A, C], ["mask", "mask"], scores=[0.9, 0.8])], LABELS)
    assert r["false_positives"]["mask"] == 1
    assert r["detector_precision"] == 0.5
    assert r["ap"]["mask"] == pytest.approx(1.0)  # the false one ranks below the true one


def test_recall_at_precision_is_the_best_operating_point_on_the_ranking():
    # ranked: A true (0.9), nothing (0.8), C true (0.7), nothing (0.6), B true (0.5); 3 faces + 1 never found
    D = [400, 400, 440, 440]
    gts = [gt([A, B, C, D], ["mask"] * 4)]
    far = [[600, 600, 640, 640], [700, 700, 740, 740]]
    preds = [pred([A, far[0], C, far[1], B], ["mask"] * 5, scores=[0.9, 0.8, 0.7, 0.6, 0.5])]
    # precision after each answer: 1, 1/2, 2/3, 2/4, 3/5
    r = scene_metrics(gts, preds, LABELS, operating_precision=0.6)
    assert r["recall_at_precision"] == {"precision": 0.6, "recall": 0.75, "min_score": pytest.approx(0.5)}
    r = scene_metrics(gts, preds, LABELS, operating_precision=0.65)
    assert r["recall_at_precision"]["recall"] == 0.5 and r["recall_at_precision"]["min_score"] == pytest.approx(0.7)
    r = scene_metrics(gts, [pred([far[0]], ["mask"])], LABELS)  # nothing right at any threshold
    assert r["recall_at_precision"] == {"precision": 0.8, "recall": 0.0, "min_score": None}


def test_ap_by_size_sets_other_sizes_and_their_answers_aside():
    # A mask (medium) found, B no_mask (small) found below a false small box, C mask (large) missed
    false_small = [400, 400, 412, 412]
    gts = [gt([A, B, C], ["mask", "no_mask", "mask"])]
    preds = [pred([A, B, false_small], ["mask", "no_mask", "no_mask"], scores=[0.9, 0.8, 0.95])]
    by = scene_metrics(gts, preds, LABELS)["ap_by_size"]
    assert by["small"]["faces"] == 1 and by["small"]["ap"] == {"no_mask": pytest.approx(0.5)}
    assert by["small"]["map"] == pytest.approx(0.5)  # the false small box ranks above B: precision 1/2
    assert by["medium"]["ap"] == {"mask": pytest.approx(1.0)}  # B and the false box are not medium
    assert by["large"]["ap"] == {"mask": pytest.approx(0.0)} and by["large"]["faces"] == 1
    empty = scene_metrics([gt([A], ["mask"])], [pred([A], ["mask"])], LABELS)["ap_by_size"]
    assert empty["small"] == {"map": None, "ap": {}, "faces": 0}


def test_matching_is_one_to_one_and_respects_iou():
    boxes = np.array([A], dtype=np.float32)
    twice = np.array([A, [12, 12, 52, 52]], dtype=np.float32)
    assert match(boxes, twice, np.array([0.5, 0.9]), 0.5) == {0: 1}  # the higher-ranked duplicate wins
    shifted = np.array([[40, 40, 80, 80]], dtype=np.float32)
    assert match(boxes, shifted, np.array([0.9]), 0.5) == {}


def test_size_bins():
    assert [size_bin(np.array(b), (32, 96)) for b in (B, A, C)] == ["small", "medium", "large"]


def test_real_voc_scenes_load(shared):
    label_map = {"with_mask": "mask", "without_mask": "no_mask", "mask_weared_incorrect": "incorrect"}
    scenes = load_scenes(shared / "datasets" / "face-mask-scenes-dev", label_map)
    assert len(scenes) == 200
    assert sum(len(s.labels) for s in scenes) == 867
    first = scenes[0]
    assert first.name == "maksssksksss0" and first.labels == ["no_mask", "mask", "no_mask"]
    assert first.boxes[0].tolist() == [79, 105, 109, 142]


def test_malformed_annotation_is_named(shared, tmp_path):
    src = shared / "datasets" / "face-mask-scenes-dev"
    (tmp_path / "images").mkdir()
    (tmp_path / "annotations").mkdir()
    shutil.copy(src / "images" / "maksssksksss0.jpg", tmp_path / "images")
    bad = tmp_path / "annotations" / "maksssksksss0.xml"
    bad.write_text(
        (src / "annotations" / "maksssksksss0.xml").read_text().replace("<xmax>109</xmax>", "<xmax>x</xmax>")
    )
    with pytest.raises(SceneError, match=r"maksssksksss0\.xml.*bndbox/xmax"):
        load_scenes(tmp_path, {"without_mask": "no_mask", "with_mask": "mask"})
    bad.write_text("<annotation><object>")
    with pytest.raises(SceneError, match="not valid XML"):
        load_scenes(tmp_path, {"without_mask": "no_mask"})
    with pytest.raises(SceneError, match="needs images/ and annotations/"):
        load_scenes(tmp_path / "images", {"without_mask": "no_mask"})


@pytest.mark.slow
def test_one_command_evaluates_a_new_scene_folder(shared, tmp_path):
    """`python -m facemask.scenes scenes.dir=...` on a folder of the same format: the table is
    printed and the reports written; a folder that is not VOC is a clear error (exit 2)."""
    import subprocess
    import sys

    from .conftest import REPO

    src = shared / "datasets" / "face-mask-scenes-dev"
    for sub in ("images", "annotations"):
        (tmp_path / "set" / sub).mkdir(parents=True)
    for n in (0, 1, 2):
        shutil.copy(src / "images" / f"maksssksksss{n}.jpg", tmp_path / "set/images")
        shutil.copy(src / "annotations" / f"maksssksksss{n}.xml", tmp_path / "set/annotations")
    env = {**__import__("os").environ, "FACEMASK_MIRROR": str(shared)}
    cmd = [sys.executable, "-m", "facemask.scenes", f"scenes.dir={tmp_path / 'set'}", "--out", str(tmp_path / "out"),
           "--classifier", str(REPO / "models/classifier.pt")]  # fmt: skip
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "3 scenes, " in proc.stdout and "mAP" in proc.stdout and "no_mask" in proc.stdout
    assert (tmp_path / "out/metrics.json").is_file() and (tmp_path / "out/worst_errors.png").is_file()

    cmd[3] = f"scenes.dir={tmp_path / 'set/images'}"
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "needs images/ and annotations/" in proc.stderr
    cmd[3] = "scenes.iou_threshold=2"
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "scenes.iou_threshold" in proc.stderr
    # a Dask scheduler nobody runs (the discard port): one line naming it, no traceback
    cmd[3:4] = [f"scenes.dir={tmp_path / 'set'}", "engine.scheduler=tcp://127.0.0.1:9", "engine.connect_timeout_s=3"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1].startswith("scenes: cannot reach the Dask scheduler tcp://127.0.0.1:9")
    assert "Traceback" not in proc.stderr


def test_box_fit_maps_a_box_by_hand_worked_numbers():
    from facemask.config import BoxFit
    from facemask.pipeline import fit_box

    box = np.array([100, 100, 140, 150])  # 40 x 50, centre (120, 125)
    assert fit_box(box, BoxFit()).tolist() == pytest.approx([100, 100, 140, 150])
    fitted = fit_box(box, BoxFit(scale_w=1.5, scale_h=0.8, shift_x=0.25, shift_y=0.1))
    # centre (120 + 10, 125 + 5), sides 60 x 40
    assert fitted.tolist() == pytest.approx([100, 110, 160, 150])


def test_calibration_recovers_a_known_box_convention():
    """Detections drawn from annotated boxes by a known shift and scale give that fit back, and the
    fit lifts recall at IoU 0.75 from what the raw boxes reach to every face."""
    from facemask.config import BoxFit
    from facemask.data.voc import Scene
    from facemask.pipeline import fit_box
    from facemask.scenes.calibrate import measure, recall

    truth = BoxFit(scale_w=1.1, scale_h=0.8, shift_x=0.05, shift_y=0.2)
    rng = np.random.default_rng(0)
    scenes, detections = [], []
    for i in range(20):
        x, y, w, h = rng.uniform(0, 300), rng.uniform(0, 300), rng.uniform(15, 80), rng.uniform(15, 80)
        # the detector's box d satisfies fit_box(d, truth) == the annotated box
        dw, dh = w / truth.scale_w, h / truth.scale_h
        dcx, dcy = x + w / 2 - truth.shift_x * dw, y + h / 2 - truth.shift_y * dh
        det = [dcx - dw / 2, dcy - dh / 2, dcx + dw / 2, dcy + dh / 2, 0.9]
        scenes.append(Scene(image=f"s{i}.jpg", boxes=np.array([[x, y, x + w, y + h]], np.float32), labels=["mask"]))
        detections.append(np.array([det], np.float32))
    fit, pairs = measure(scenes, detections)
    assert pairs == 20
    assert fit.model_dump() == pytest.approx(truth.model_dump(), abs=2e-3)
    assert recall(scenes, detections, 0.75, BoxFit()) < 0.5
    assert recall(scenes, detections, 0.75, fit) == 1.0
    assert fit_box(detections[0][0, :4], fit) == pytest.approx(scenes[0].boxes[0], abs=0.5)


def test_calibration_without_any_overlap_is_an_error():
    from facemask.data.voc import Scene
    from facemask.scenes.calibrate import measure

    scene = Scene(image="s.jpg", boxes=np.array([[0, 0, 10, 10]], np.float32), labels=["mask"])
    with pytest.raises(ValueError, match="nothing to calibrate"):
        measure([scene], [np.array([[100, 100, 120, 120, 0.9]], np.float32)])


def test_every_class_ranking_finds_a_misclassified_face_lower_down():
    """Face A is mask but the classifier says no_mask (0.7) with mask second (0.3); face B is
    no_mask, said right (0.9). Top-1: mask AP 0 (its face was called no_mask) and no_mask AP with a
    false positive ranked first. Every class: A is also a mask detection (score 0.3), the only one,
    so mask AP is 1; no_mask keeps the false positive above B."""
    probs = np.array([[0.3, 0.7, 0.0], [0.05, 0.9, 0.05]], dtype=np.float32)
    p = Prediction(
        np.array([A, B], np.float32), ["no_mask", "no_mask"], np.array([1.0, 1.0], np.float32), probs.max(1), probs
    )
    r = scene_metrics([gt([A, B], ["mask", "no_mask"])], [p], LABELS)
    assert r["ap_top1"]["mask"] == pytest.approx(0.0)
    assert r["ap"]["mask"] == pytest.approx(1.0)
    # no_mask: B (0.9) ranks above the false A (0.7) in both views: precision 1 up to recall 1
    assert r["ap"]["no_mask"] == pytest.approx(1.0) and r["ap_top1"]["no_mask"] == pytest.approx(1.0)
    assert r["map_top1"] == pytest.approx(0.5) and r["map"] == pytest.approx(1.0)
    # the class-agnostic views are those of the served (top-1) labels
    assert r["confusion"]["mask"]["no_mask"] == 1 and r["false_positives"] == dict.fromkeys(LABELS, 0)


@pytest.mark.slow
def test_the_threshold_sweeps_choose_on_validation_data_and_refuse_the_test_split(shared):
    """`python -m facemask.scenes.threshold_sweep`: with NMS at 0.1 no two kept boxes overlap at IoU
    0.15, so no val photo can show a face boxed twice; the score sweep refits the rejection per
    candidate threshold and names the largest within the tolerance of the best val mAP; the test
    split and a missing classifier are clear errors."""
    import os
    import subprocess
    import sys

    from .conftest import REPO, pipeline_output

    pipeline_output("models/classifier.pt")  # the sweep judges the models dvc.lock records
    env = {**os.environ, "FACEMASK_MIRROR": str(shared)}

    def sweep(*args: str) -> subprocess.CompletedProcess:
        cmd = [sys.executable, "-m", "facemask.scenes.threshold_sweep", *args]
        return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)

    proc = sweep("nms", "--thresholds", "0.1")
    assert proc.returncode == 0, proc.stderr[-2000:]
    row = next(line for line in proc.stdout.splitlines() if line.startswith("|") and "0.1 " in line)
    twice, photos = row.split("|")[2].strip().split("/")
    assert twice == "0" and int(photos) > 500, row

    proc = sweep("score", "--thresholds", "0.5", "0.1")
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [line.split("|")[1:-1] for line in proc.stdout.splitlines() if line.startswith("|") and "---" not in line]
    header, *values = rows
    table = {float(v[0]): dict(zip((h.strip() for h in header), (float(c) for c in v), strict=True)) for v in values}
    assert sorted(table) == [0.1, 0.5]
    assert all(0 < r["val mAP"] < 1 and 0.3 <= r["reject_min_probability"] <= 1 for r in table.values())
    chosen = float(proc.stdout.strip().splitlines()[-1].rsplit(":", 1)[1])
    best = max(r["val mAP"] for r in table.values())
    assert chosen == max(t for t, r in table.items() if r["val mAP"] >= best - 0.002)

    assert sweep("nms", "--split", "test").returncode == 2
    proc = sweep("score", "--thresholds", "0.3", "--classifier", "/nonexistent/classifier.pt")
    assert proc.returncode == 2 and "/nonexistent/classifier.pt" in proc.stderr and "Traceback" not in proc.stderr
