"""Validation that looks like the cameras (facemask.bench.camera_like): real val-split scenes shrunk
so their faces fall to 8-64 px, the same way in every run, and every profile scored on both views."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from facemask.bench.camera_like import FACES, shrink_factor, shrunk
from facemask.data.manifest import split_scenes
from facemask.imageio import read_image

from .conftest import MAX_PIXELS, REPO, pipeline_output


def val_scenes(count: int):
    manifest = pipeline_output("data/interim/manifest.csv")  # the split dvc.lock records
    return split_scenes(manifest, REPO / "data/raw", "val")[:count]


def test_val_scenes_shrink_to_camera_sized_faces_alike_in_every_run():
    """Each scene's median face lands in 8-64 px (never enlarged: a scene already that small stays as
    it is); its boxes scale with the pixels, and the draw depends on the image alone."""
    for scene in val_scenes(12):
        image = read_image(scene.image, MAX_PIXELS)
        small_scene, small = shrunk(scene, image)
        factor = shrink_factor(scene)
        assert factor == shrink_factor(scene) and 0 < factor <= 1
        median = float(np.median(scene.boxes[:, 3] - scene.boxes[:, 1]))
        after = float(np.median(small_scene.boxes[:, 3] - small_scene.boxes[:, 1]))
        if median <= FACES[0]:
            assert small is image and small_scene is scene
            continue
        assert FACES[0] - 1 <= after <= max(FACES[1], median) + 1e-3
        h, w = image.shape[:2]
        assert small.shape[:2] == (round(h * factor), round(w * factor)) or factor == 1
        assert small_scene.size == (small.shape[1], small.shape[0]) or factor == 1
        box, small_box = scene.boxes[0], small_scene.boxes[0]
        assert np.allclose(small_box, box * ([small.shape[1] / w, small.shape[0] / h] * 2), atol=1e-3)
        assert small_scene.labels == scene.labels


@pytest.mark.slow
def test_each_profile_is_scored_as_the_val_split_is_and_as_cameras_see_it(shared, tmp_path):
    for path in ("models/classifier.pt", "models/detector/detector.onnx"):
        pipeline_output(path)  # the models dvc.lock records
    env = {**os.environ, "FACEMASK_MIRROR": str(shared)}
    cmd = [sys.executable, "-m", "facemask.bench.camera_like", "--scenes", "6", "--profiles", "door", "crowd",
           "--out", str(tmp_path)]  # fmt: skip
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = pd.read_csv(tmp_path / "camera_like.csv")
    assert table["profile"].tolist() == ["door", "crowd"]
    assert table["detect_long_side"].tolist() == [320, 640]
    for view in ("val", "camera_like", "dev"):
        assert table[f"{view}_map"].between(0, 1).all() and (table[f"{view}_ms"] > 0).all()
    assert (table["camera_like_face_px_median"] < table["val_face_px_median"]).all()
    assert (table["camera_like_under_16px"] > table["val_under_16px"]).all()
    assert (table["val_scenes"] == 6).all() and (table["faces"] == "8-64").all()
    assert "camera_like_map" in proc.stdout and "under 16" in proc.stdout


@pytest.mark.parametrize(
    "args, message",
    [(["--profiles", "nosuch"], "unknown detection profile 'nosuch': one of crowd, door, hall"),
     (["--faces", "0", "64"], "--faces 0 64: two sizes with 0 < MIN <= MAX")],
)  # fmt: skip
def test_bad_arguments_are_clear_errors(args, message, tmp_path):
    cmd = [sys.executable, "-m", "facemask.bench.camera_like", *args, "--out", str(tmp_path)]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr
    assert not any(tmp_path.iterdir())  # nothing written
