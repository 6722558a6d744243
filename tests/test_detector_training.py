"""Fine-tuning the face detector: anchor matching and box coding, the training loop on real
scenes, the ONNX export against PyTorch, and the detector promotion gate on a real MLflow server."""

from __future__ import annotations

import cv2
import mlflow
import numpy as np
import onnx
import pandas as pd
import pytest
import pytorch_lightning as pl
import torch
from mlflow.tracking import MlflowClient

from facemask.config import BoxFit, LowResolution, compose, validate
from facemask.data.voc import load_scenes
from facemask.detection.retinaface_mnet import (
    RetinaFaceMobileNet,
    RetinaFaceMobileNetDetector,
    RetinaFaceOnnxDetector,
    decode,
    encode,
    load_state,
    prior_boxes,
)
from facemask.detector_training.export import export_onnx
from facemask.detector_training.module import DetectorModule
from facemask.detector_training.multibox import build_targets, match_anchors, multibox_loss
from facemask.detector_training.scene_data import SceneDataModule, collate, low_resolution, manifest_scenes
from facemask.imageio import read_image
from facemask.registry import detector_file, promote_detector
from facemask.scenes.detection import detector_scores

from .conftest import MAX_PIXELS, train_scene_stems
from .test_registry import restore_tracking_uri  # noqa: F401  (fixture)

WEIGHTS = "models/retinaface-mobilenet0.25/mobilenet0.25_Final.pth"
LABELS = {"with_mask": "mask", "without_mask": "no_mask", "mask_weared_incorrect": "incorrect"}


def test_box_coding_round_trips():
    priors = prior_boxes(320, 320)
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 0.8, (50, 2))
    boxes = torch.tensor(np.hstack([xy, xy + rng.uniform(0.02, 0.2, (50, 2))]), dtype=torch.float32)
    anchors = priors[rng.integers(len(priors), size=50)]
    back, _ = decode(encode(boxes, anchors), torch.zeros(50, 10), anchors)
    assert torch.allclose(back, boxes, atol=1e-5)


@pytest.mark.parametrize("height, width", [(320, 320), (264, 352), (37, 53)])
def test_anchors_follow_the_network_outputs_cell_by_cell(height, width):
    """One anchor per network output, in its order: per level (strides 8, 16, 32), row by row,
    column by column, each cell's two sizes; built for any frame size (a stream's regions, photos)."""
    priors = prior_boxes(height, width)
    with torch.no_grad():
        loc, _, _ = RetinaFaceMobileNet().eval()(torch.zeros(1, 3, height, width))
    assert priors.shape == (loc.shape[1], 4) and priors.dtype == torch.float32
    cols = -(-width // 8)
    expected = [
        (0.5 * 8 / width, 0.5 * 8 / height, 16 / width, 16 / height),  # first cell, both sizes
        (0.5 * 8 / width, 0.5 * 8 / height, 32 / width, 32 / height),
        (1.5 * 8 / width, 0.5 * 8 / height, 16 / width, 16 / height),  # the next column
    ]
    if cols > 1:
        assert torch.equal(priors[:3], torch.tensor(expected, dtype=torch.float32))
    second_row = 2 * cols  # stride 8, first column of the second row
    assert priors[second_row, 1].item() == pytest.approx(1.5 * 8 / height)
    fh, fw = -(-height // 32), -(-width // 32)
    last = ((fw - 0.5) * 32 / width, (fh - 0.5) * 32 / height, 512 / width, 512 / height)
    assert torch.equal(priors[-1], torch.tensor(last, dtype=torch.float32))


def test_every_face_gets_an_anchor_even_a_tiny_one():
    priors = prior_boxes(320, 320)
    boxes = torch.tensor([[0.10, 0.10, 0.40, 0.45], [0.70, 0.70, 0.715, 0.72], [0.5, 0.1, 0.6, 0.22]])
    loc, positive = match_anchors(boxes, priors, 0.35)
    assert positive.sum() > 3
    decoded, _ = decode(loc[positive], torch.zeros(int(positive.sum()), 10), priors[positive])
    # every positive anchor decodes onto one of the faces, and each face (the 3-px one too) has one
    hits = [(decoded - b).abs().max(dim=1).values < 1e-5 for b in boxes]
    assert all(h.any() for h in hits)
    assert torch.stack(hits).any(dim=0).all()
    empty_loc, empty_pos = match_anchors(torch.zeros(0, 4), priors, 0.35)
    assert not empty_pos.any() and empty_loc.shape == (len(priors), 4)


def test_unboxed_confident_faces_are_ignored_not_negatives():
    """An anchor the teacher is sure of but that overlaps no box is excluded from the negatives."""
    priors = prior_boxes(64, 64)
    boxes = [torch.tensor([[0.05, 0.05, 0.45, 0.45]])]
    teacher = torch.zeros(1, len(priors))
    far = int(((priors[:, 0] - 0.8).abs() + (priors[:, 1] - 0.8).abs()).argmin())
    teacher[0, far] = 0.95
    targets = build_targets(boxes, priors, teacher, 0.35, 0.7)
    assert targets.ignored[0, far] and not targets.positive[0, far]
    logits = torch.zeros(1, len(priors), 2)
    logits[0, far, 1] = 8.0  # a confident "face" there would be the hardest negative of all
    zeros = torch.zeros(1, len(priors), 10)
    with_ignore = multibox_loss(torch.zeros(1, len(priors), 4), logits, zeros, targets, zeros, 7, 16, 1.0)
    targets.ignored[:] = False
    without = multibox_loss(torch.zeros(1, len(priors), 4), logits, zeros, targets, zeros, 7, 16, 1.0)
    # the mined negatives differ by that anchor only (log(1 + e^8)) against a neutral one (log 2)
    n_pos = int(targets.positive.sum())
    assert float(without["cls"] - with_ignore["cls"]) == pytest.approx((8.000335 - 0.693147) / n_pos, rel=1e-3)


@pytest.fixture(scope="module")
def scene_project(shared, tmp_path_factory):
    """A manifest of 10 real training scenes (8 train, 2 val) and the params of a tiny run."""
    root = tmp_path_factory.mktemp("detector")
    folder = shared / "datasets/face-mask-scenes-train"
    scenes = load_scenes(folder, LABELS)
    keep = set(train_scene_stems(shared, 10))
    rows = []
    for k, scene in enumerate(s for s in scenes if s.name in keep):
        for (x1, y1, x2, y2), label in zip(scene.boxes, scene.labels, strict=True):
            split = "train" if k < 8 else "val"
            rows.append(dict(kind="scene", split=split, source="train-scenes", relpath=f"images/{scene.image.name}",
                             label=label, x1=x1, y1=y1, x2=x2, y2=y2))  # fmt: skip
    pd.DataFrame(rows).to_csv(root / "manifest.csv", index=False)
    (root / "raw").mkdir()
    (root / "raw/train-scenes").symlink_to(folder)
    params = validate(
        compose(["detector_train.epoch_samples=32", "detector_train.batch_size=8", "detector_train.num_workers=0"]),
        "test",
    )
    return root, params


def test_manifest_scenes_group_faces_per_image(scene_project):
    root, _ = scene_project
    train = manifest_scenes(root / "manifest.csv", root / "raw", "train")
    assert len(train) == 8 and all(s.path.is_file() and len(s.boxes) >= 1 for s in train)


def test_training_crops_keep_their_faces(scene_project):
    root, params = scene_project
    cfg = params.detector_train
    dm = SceneDataModule(root / "manifest.csv", root / "raw", cfg, 640, params.data.max_image_pixels, seed=1)
    items = [dm.train_set[(0, i)] for i in range(24)]
    assert all(x.shape == (3, cfg.input_size, cfg.input_size) for x, _ in items)
    boxes = torch.cat([b for _, b in items])
    assert len(boxes) >= 20  # face-centred crops carry faces
    assert (boxes >= 0).all() and (boxes <= 1).all() and (boxes[:, 2:] > boxes[:, :2]).all()
    again = dm.train_set[(0, 3)]
    assert torch.equal(again[0], items[3][0])  # (epoch, index) -> the same crop
    assert not torch.equal(dm.train_set[(1, 3)][0], items[3][0])


def test_low_resolution_crops_lose_detail_and_keep_their_size(scene_project):
    """A degraded crop looks like a small frame enlarged to the input: same size and mean, less
    high-frequency detail (Laplacian variance) than the sharp crop; p = 0 leaves crops untouched."""
    root, params = scene_project
    scene = manifest_scenes(root / "manifest.csv", root / "raw", "train")[0]
    image = read_image(scene.path, MAX_PIXELS)
    sharpness = lambda im: cv2.Laplacian(cv2.cvtColor(im, cv2.COLOR_BGR2GRAY), cv2.CV_64F).var()  # noqa: E731
    always = params.detector_train.model_copy(update={"low_resolution": LowResolution(p=1.0, min_scale=0.35)})
    rng = np.random.default_rng(0)
    degraded = [low_resolution(image, always, rng) for _ in range(8)]
    assert all(d.shape == image.shape and d.dtype == np.uint8 for d in degraded)
    assert all(abs(d.mean() - image.mean()) < 2 for d in degraded)
    assert max(sharpness(d) for d in degraded) < 0.9 * sharpness(image)
    never = params.detector_train.model_copy(update={"low_resolution": LowResolution(p=0.0, min_scale=0.35)})
    assert low_resolution(image, never, rng) is image


def test_validation_scores_the_way_the_promotion_gate_does(shared, scene_project):
    """The fine-tuning's val/recall, precision and AP are the gate's `detector_scores` of the same
    detections, boxes through the detector's box_fit: a fit that moves every box down by 45 % of its
    height (IoU below 0.5 with its own face) takes most of the recall with it."""
    root, params = scene_project
    dm = SceneDataModule(root / "manifest.csv", root / "raw", params.detector_train, 640, 10**8, seed=0)
    assert dm.val_scenes and all(len(s.labels) == len(s.boxes) for s in dm.val_scenes)
    stock = params.detectors["retinaface_ft"]
    logged = {}
    for name, cfg in (("as fitted", stock), ("moved", stock.model_copy(update={"box_fit": BoxFit(shift_y=0.45)}))):
        net = load_state(RetinaFaceMobileNet(), shared / WEIGHTS).eval()
        module = DetectorModule(net, params.detector_train, cfg, params.pipeline, dm.val_scenes, 10**8, params.scenes)
        module.log = lambda key, value, _name=name, **_: logged.setdefault(_name, {}).__setitem__(key, value)
        module.on_validation_epoch_start()
        module.validation_step(torch.arange(len(dm.val_scenes)), 0)
        found = module._found
        module.on_validation_epoch_end()
        gate = detector_scores(dm.val_scenes, found, params.scenes.iou_threshold, params.scenes.size_bins, cfg.box_fit)
        assert logged[name] == {f"val/{k}": pytest.approx(gate[k]) for k in ("recall", "precision", "ap")}
    assert logged["as fitted"]["val/recall"] >= 0.6  # the stock net finds most of these faces (measured 0.8)
    assert logged["moved"]["val/recall"] < 0.5 * logged["as fitted"]["val/recall"]  # measured 0.2


def test_fine_tuning_lowers_the_loss_on_real_scenes(shared, scene_project):
    root, params = scene_project
    pl.seed_everything(0)
    cfg = params.detector_train
    dm = SceneDataModule(root / "manifest.csv", root / "raw", cfg, 640, params.data.max_image_pixels, seed=0)
    net = load_state(RetinaFaceMobileNet(), shared / WEIGHTS)
    module = DetectorModule(net, cfg, params.detectors["retinaface_ft"], params.pipeline, dm.val_scenes, 10**8,
                            params.scenes)  # fmt: skip
    fixed = collate([dm.train_set[(99, i)] for i in range(16)])

    def loss() -> dict[str, float]:
        images, boxes = fixed
        module.network.eval()
        with torch.no_grad():
            _, tconf, tlms = module.teacher(images)
            loc, logits, lms = module.network.heads(images)
        targets = build_targets(boxes, module._priors, tconf[..., 1], cfg.match_iou, cfg.unboxed_min_score)
        return {k: float(v) for k, v in multibox_loss(loc, logits, lms, targets, tlms, 7, 16, 1.0).items()}

    before = loss()
    assert before["landmarks"] == 0.0  # the student starts as the teacher
    trainer = pl.Trainer(max_epochs=3, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)  # fmt: skip
    trainer.fit(module, datamodule=dm)
    after = loss()
    # the detection loss (boxes + face/background) falls on crops it did not train on; the landmark
    # term, zero at the start, stays a small drift (about a unit of 5% of an anchor per point)
    assert after["box"] + after["cls"] < 0.85 * (before["box"] + before["cls"]), (before, after)
    assert after["landmarks"] < 20, after
    assert {"val/recall", "val/precision", "val/ap", "train/loss"} <= set(trainer.callback_metrics)
    recall, ap = float(trainer.callback_metrics["val/recall"]), float(trainer.callback_metrics["val/ap"])
    assert recall >= 0.6 and ap >= 0.5, (recall, ap)  # measured 0.80 / 0.79: the pretrained net finds most faces
    assert ap <= recall + 1e-6  # AP integrates precision (<= 1) over recall up to the recall reached


def test_exported_network_agrees_with_pytorch(shared, tmp_path):
    net = load_state(RetinaFaceMobileNet(), shared / WEIGHTS)
    with torch.no_grad():  # a fine-tuned-like network: the stock weights, slightly moved
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.002)
    path = export_onnx(net, tmp_path / "detector.onnx")
    onnx.checker.check_model(onnx.load(str(path)))
    eager = RetinaFaceMobileNetDetector(net, 0.5, 0.4, 750, 8)
    exported = RetinaFaceOnnxDetector(path, 0.5, 0.4, 750, 8)
    images = sorted((shared / "datasets/face-mask-scenes-train/images").glob("*.jpg"))[:6]
    total = 0
    for image in images:
        frame = read_image(image, MAX_PIXELS)
        frame = frame[: frame.shape[0] - 7]  # an odd size the example input did not have
        a, b = eager.detect(frame), exported.detect(frame)
        assert len(a) == len(b), image.name
        for fa, fb in zip(a, b, strict=True):
            assert np.abs(fa.box - fb.box).max() < 0.5 and abs(fa.score - fb.score) < 1e-3
            assert np.abs(fa.landmarks - fb.landmarks).max() < 0.5
        total += len(a)
    assert total >= 6


def log_detector(uri: str, path) -> tuple[str, str]:
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment("detector-gate-test")
    with mlflow.start_run() as run:
        info = mlflow.onnx.log_model(onnx.load(str(path)), name="detector", save_as_external_data=False)
    return run.info.run_id, info.model_uri


@pytest.mark.slow
def test_detector_gate_both_outcomes(shared, mlflow_server, tmp_path, restore_tracking_uri):  # noqa: F811
    client = MlflowClient(mlflow_server)
    name = "detector-gate-test"
    path = export_onnx(load_state(RetinaFaceMobileNet(), shared / WEIGHTS), tmp_path / "detector.onnx")
    run1, uri1 = log_detector(mlflow_server, path)
    first = promote_detector(client, name, uri1, run1, {"recall": 0.80, "precision": 0.85}, "champion", "dev-a")
    assert first.promoted and first.reason == "no champion yet"

    run2, uri2 = log_detector(mlflow_server, path)  # more recall, but less precision: kept out
    second = promote_detector(client, name, uri2, run2, {"recall": 0.90, "precision": 0.84}, "champion", "dev-a")
    assert not second.promoted and "does not beat" in second.reason
    assert client.get_model_version_by_alias(name, "champion").version == first.candidate_version
    assert client.get_model_version(name, second.candidate_version).tags["promotion"] == "rejected"

    run3, uri3 = log_detector(mlflow_server, path)  # measured on other dev scenes: the champion is re-scored
    rescored = []

    def rescore(version: str) -> dict[str, float]:
        rescored.append(version)
        return {"recall": 0.70, "precision": 0.85}

    third = promote_detector(
        client, name, uri3, run3, {"recall": 0.75, "precision": 0.85}, "champion", "dev-b", rescore
    )
    assert third.promoted and third.champion_rescored and rescored == [first.candidate_version]
    champion = client.get_model_version_by_alias(name, "champion")
    assert champion.version == third.candidate_version
    assert champion.tags["dev_scenes"] == "dev-b" and float(champion.tags["dev_recall"]) == 0.75
    shipped = onnx.load(str(detector_file(f"models:/{name}@champion")))
    assert len(shipped.graph.node) == len(onnx.load(str(path)).graph.node)
