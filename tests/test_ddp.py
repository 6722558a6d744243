"""Data-parallel training (conf/trainer/ddp.yaml) on this CPU: two processes over gloo train one
model as well as one process does. Both train the same small network for the same epochs on the
pipeline's real crops (`make test` builds them first), each logs to a real MLflow server of its
own, and both are scored on the same test crops."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest
from mlflow.tracking import MlflowClient

from facemask.classification_metrics import face_macro_f1
from facemask.classifier import MaskClassifier
from facemask.config import Params, compose, validate, write_params
from facemask.crop_scoring import face_score, split_crops

from .conftest import BIN, REPO, start_mlflow, stop

pytestmark = pytest.mark.slow
# Measured on the pipeline's crops, test face macro-F1 (lcnet at 64 px; best constant answer 0.213):
#   2 epochs of 2000 crops, seeds 42 / 7 / 123: one process 0.385 / 0.329 / 0.234, DDP 0.343 / 0.297 / 0.316
#   3 epochs of 3000 crops (used here), seeds 42 / 7: one process 0.329 / 0.360, DDP 0.396 / 0.344
# One process alone spreads up to 0.15 across seeds, and one seed's |one - DDP| reached 0.082, so
# the stated tolerance for one seed is 0.1; both must beat the best constant answer by LEARNED.
F1_TOLERANCE = 0.1
LEARNED = 0.08
SETTINGS = [
    "model=lcnet", "model.input_size=64", "trainer.max_epochs=3", "trainer.epoch_samples=3000",
    "trainer.batch_size=32", "trainer.num_workers=0", "trainer.callbacks.early_stopping.patience=5",
]  # fmt: skip


def train(tmp_path, name: str, overrides: list[str]) -> tuple[float, Params]:
    root = tmp_path / name
    assert (REPO / "data/interim/crops.csv").is_file(), "run `make test` (it builds the crops first)"
    paths = [f"paths.interim={REPO / 'data/interim'}", f"paths.crops={REPO / 'data/crops'}",
             f"paths.models={root / 'models'}", f"paths.reports={root / 'reports'}"]  # fmt: skip
    params_file = root / "params.yaml"
    (root / "models").mkdir(parents=True)
    (root / "reports").mkdir()
    shutil.copy(REPO / "models/augment.json", root / "models/augment.json")  # the augment stage's outputs
    shutil.copy(REPO / "reports/augment_preview.png", root / "reports/augment_preview.png")
    write_params(compose([*SETTINGS, *paths, *overrides]), params_file)
    (root / "mlflow").mkdir()
    proc, url = start_mlflow(root / "mlflow")
    try:
        run = subprocess.run(
            [str(BIN / "python"), "-m", "facemask.stages.train", "--params", str(params_file)],
            cwd=root, env={**os.environ, "MLFLOW_TRACKING_URI": url}, capture_output=True, text=True,
            timeout=900,
        )  # fmt: skip
        assert run.returncode == 0, run.stderr[-3000:]
        client = MlflowClient(url)
        runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
        assert len(runs) == 1, "one MLflow run, from rank zero alone"
        assert len(client.get_metric_history(runs[0].info.run_id, "val/macro_f1")) == 3  # per epoch, once
        assert runs[0].data.params["trainer.lightning.strategy"] == ("ddp" if "trainer=ddp" in overrides else "auto")
    finally:
        stop(proc)
    params = validate(compose([*SETTINGS, *paths, *overrides]))
    assert json.loads((root / "reports/train.json").read_text())["epochs"] == 3
    score, _ = face_score(MaskClassifier.load(root / "models/classifier.pt"), params)
    return score, params


def test_two_process_ddp_matches_one_process_macro_f1(tmp_path):
    one, params = train(tmp_path, "one", [])
    two, _ = train(tmp_path, "ddp", ["trainer=ddp"])
    labels = split_crops(params, "test")["label"].tolist()
    constant = max(face_macro_f1(labels, [c] * len(labels), params.data.labels) for c in params.data.labels)
    print(f"test face macro-F1: one process {one:.4f}, two DDP processes {two:.4f}, best constant {constant:.4f}")
    # both learned: two models that learned nothing would match trivially
    assert one > constant + LEARNED and two > constant + LEARNED, (one, two, constant)
    assert abs(one - two) <= F1_TOLERANCE, (one, two)
