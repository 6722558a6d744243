"""`make bench-front` (facemask.bench.front): detectors x input sizes x precisions and the peer in one
table and one plot, on a real slice (dev scenes, val-split training scenes, test-split close-ups), and
the front computed as the rows no other row beats on both accuracy and time."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import cv2
import pandas as pd
import pytest

from facemask.bench.front import on_front

from .conftest import REPO, pipeline_output


def test_the_front_keeps_exactly_the_rows_no_other_beats():
    table = pd.DataFrame({"frame_ms_median": [10, 12, 12, 20, 30, 30], "dev_map": [0.5, 0.6, 0.55, 0.7, 0.65, 0.7]})
    assert on_front(table) == [True, True, False, True, False, False]  # (30, 0.7) is beaten by (20, 0.7)


@pytest.mark.slow
def test_detectors_sizes_precisions_and_the_peer_in_one_table(shared, tmp_path):
    """Four dev scenes, four val scenes, two photos a label; the fine-tuned detector in fp32 and int8,
    YuNet in fp32 only (OpenCV runs it, said on stderr), at two sizes; the peer's row first."""
    for path in ("models/classifier.pt", "models/detector/detector.onnx", "data/interim/manifest.csv"):
        pipeline_output(path)  # the models and split dvc.lock records
    env = {**os.environ, "FACEMASK_MIRROR": str(shared)}
    cmd = [sys.executable, "-m", "facemask.bench.front", "--scenes", "4", "--val-scenes", "4", "--photos", "2",
           "--sizes", "320", "640", "--detectors", "retinaface_ft", "yunet", "--out", str(tmp_path),
           "--no-mlflow"]  # fmt: skip
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "yunet is not run by ONNX Runtime: no int8 rows" in proc.stderr
    table = pd.read_csv(tmp_path / "front.csv")
    rows = list(table[["detector", "precision", "detect_long_side"]].itertuples(index=False, name=None))
    assert rows == [("aizoo (peer)", "fp32", 260),
                    ("retinaface_ft", "fp32", 320), ("retinaface_ft", "fp32", 640),
                    ("retinaface_ft", "int8", 320), ("retinaface_ft", "int8", 640),
                    ("yunet", "fp32", 320), ("yunet", "fp32", 640)]  # fmt: skip
    assert (table["scenes"] == 4).all() and (table["val_scenes"] == 4).all() and (table["photos"] > 0).all()
    assert (table["frame_ms_p95"] >= table["frame_ms_median"]).all() and (table["frame_ms_median"] > 0).all()
    assert table["val_map"].iloc[1:].between(0, 1).all() and pd.isna(table["val_map"].iloc[0])  # the peer: dev only
    assert table["closeup_f1"].between(0, 1).all() and table["ap_incorrect"].iloc[0] == 0  # the peer has no such class
    ours = table.iloc[1:]
    assert ours["on_front"].any() and not table["on_front"].iloc[0]
    assert on_front(ours) == ours["on_front"].tolist()
    assert table["ms_ratio_to_peer"].iloc[0] == 1
    plot = cv2.imread(str(tmp_path / "front.png"))
    assert plot is not None and plot.shape[0] > 300
    assert json.loads((tmp_path / "front.json").read_text())[0]["detector"] == "aizoo (peer)"


def test_an_unknown_detector_is_a_clear_error(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "facemask.bench.front", "--detectors", "nosuch", "--out",
                           str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 2 and "unknown detectors ['nosuch']" in proc.stderr and "Traceback" not in proc.stderr
    assert not any(tmp_path.iterdir())  # nothing written
