"""Data-parallel training (conf/trainer/ddp.yaml) on this CPU. Two gloo processes with half a batch
each compute what one process computes on the whole batch (outputs, gradients, BatchNorm
statistics): that is the equivalence, checked step by step. Then two processes train on the
pipeline's real crops (`make test` builds them first): rank zero alone logs one MLflow run to the
team tracking server, fits the rejection threshold and writes the model, which must have learnt."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import numpy as np
import pytest
import timm
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from mlflow.tracking import MlflowClient

from facemask.classifier import MaskClassifier
from facemask.config import compose, validate, write_params
from facemask.crop_scoring import face_score
from facemask.training.batchnorm_sync import GlobalBatchNorm

from .conftest import BIN, REPO, free_port

# Test face macro-F1 on the pipeline's crops with these settings, seeds 42 / 7 / 123 (measured once,
# 10 epochs of 3,000 crops each; the whole-run comparison cost a second 7-min training per `make test`):
#   one process                                    0.547 / 0.550 / 0.452
#   DDP, BatchNorm over the global batch (used)    0.517 / 0.595 / 0.549
#   DDP, BatchNorm per process                     0.620 / 0.652 / 0.454
# Each step computes what one process computes (the test below), yet whole runs drift apart as two
# seeds do (float summation order, dropout masks, the class-weighted loss normalised per process),
# so the run is held to having learnt, as every measured run did, not to one process's score.
# Four epochs (seed 42, crops of 3fa95d0, this test as written): DDP 0.534 (three: 0.474, two: 0.257; six
# with the int8 graph: 0.601). The int8 graph is not what this test is about (test_pretrained): without it
# the run takes 118 s against 151 for six epochs with it, on machine E. A global batch of 64 (half the
# steps: each step all-reduces every BatchNorm layer over gloo) scored 0.441 against 0.534 for 32, in
# 124 s against 195 (132 CPU-seconds against 188; machine E, beside a test run).
EPOCHS = 4
SETTINGS = [
    "model=lcnet", "model.input_size=64", f"trainer.max_epochs={EPOCHS}", "trainer.epoch_samples=3000",
    "trainer.batch_size=64", "trainer.num_workers=0", f"trainer.callbacks.early_stopping.patience={EPOCHS}",
    "model.int8_calibration=0", "pipeline.classifier_runtime=onnxruntime",
]  # fmt: skip
CONSTANT = 0.213  # the best constant answer's face macro-F1 on these crops


def train_ddp(tmp_path, tracking: str) -> float:
    """Train with trainer=ddp against the tracking server; the test face macro-F1 of the model."""
    root, name = tmp_path / "ddp", "ddp"
    assert (REPO / "data/interim/crops.csv").is_file(), "run `make test` (it builds the crops first)"
    # raw: the train stage fits the rejection threshold on the pipeline's val-split scenes, through the
    # pipeline's detector (the one that cut the crops)
    paths = [f"paths.interim={REPO / 'data/interim'}", f"paths.crops={REPO / 'data/crops'}",
             f"paths.raw={REPO / 'data/raw'}", f"paths.models={root / 'models'}",
             f"paths.reports={root / 'reports'}",
             f"paths.detector_onnx={REPO / 'models/detector/detector.onnx'}"]  # fmt: skip
    config = [*SETTINGS, *paths, f"mlflow.experiment=ddp-test-{name}", "trainer=ddp"]
    (root / "models").mkdir(parents=True)
    (root / "reports").mkdir()
    shutil.copy(REPO / "models/augment.json", root / "models/augment.json")  # the augment stage's outputs
    shutil.copy(REPO / "reports/augment_preview.png", root / "reports/augment_preview.png")
    write_params(compose(config), root / "params.yaml")
    run = subprocess.run(
        [str(BIN / "python"), "-m", "facemask.stages.train", "--params", str(root / "params.yaml")],
        cwd=root, env={**os.environ, "MLFLOW_TRACKING_URI": tracking}, capture_output=True, text=True, timeout=1800,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    client = MlflowClient(tracking)
    runs = client.search_runs([client.get_experiment_by_name(f"ddp-test-{name}").experiment_id])
    assert len(runs) == 1, "one MLflow run, from rank zero alone"
    assert len(client.get_metric_history(runs[0].info.run_id, "val/macro_f1")) == EPOCHS  # per epoch, once
    assert runs[0].data.params["trainer.lightning.strategy"] == "ddp"
    summary = json.loads((root / "reports/train.json").read_text())
    assert summary["epochs"] == EPOCHS
    assert 0 < summary["reject_min_probability"] <= 1  # rank zero fitted it after the group was torn down
    score, _ = face_score(MaskClassifier.load(root / "models/classifier.pt"), validate(compose(config)))
    return score


def network() -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model("lcnet_075", num_classes=4, drop_rate=0.0).train()  # BatchNormAct2d layers


def half_batch_step(rank: int, port: int, batch: torch.Tensor, out) -> None:
    """One DDP process: its half of the batch through the network, the loss of the whole batch."""
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        model = GlobalBatchNorm().apply(network())
        logits = model(batch.chunk(2)[rank])
        (logits.sum() / len(batch)).backward()
        grads = torch.cat([p.grad.flatten() for p in model.parameters()])
        dist.all_reduce(grads)  # what DDP's gradient averaging sums
        GlobalBatchNorm().revert(model)
        if rank == 0:
            kinds = sorted({type(m).__name__ for m in model.modules() if "Norm" in type(m).__name__})
            out.put((logits.detach().numpy(), grads.numpy(), [b.numpy().copy() for b in model.buffers()], kinds))
    finally:
        dist.destroy_process_group()


def test_two_gloo_processes_with_global_batchnorm_compute_what_one_process_does():
    torch.manual_seed(1)
    batch = torch.randn(8, 3, 64, 64)
    one = network()
    logits = one(batch)
    (logits.sum() / len(batch)).backward()
    grads = torch.cat([p.grad.flatten() for p in one.parameters()]).numpy()
    spawn = mp.get_context("spawn")
    out, port = spawn.SimpleQueue(), free_port()
    procs = [spawn.Process(target=half_batch_step, args=(r, port, batch, out)) for r in (0, 1)]
    for proc in procs:
        proc.start()
    two_logits, two_grads, two_buffers, kinds = out.get()
    for proc in procs:
        proc.join(60)
        assert proc.exitcode == 0
    assert np.allclose(logits[:4].detach().numpy(), two_logits, atol=1e-4)  # rank zero's half
    assert np.linalg.norm(grads - two_grads) < 1e-4 * np.linalg.norm(grads)
    for a, b in zip(one.buffers(), two_buffers, strict=True):  # running means, variances, counts
        assert np.allclose(a.numpy(), b, atol=1e-5)
    assert kinds == ["BatchNormAct2d"]  # reverted: the saved model holds timm's own layers


@pytest.mark.slow
@pytest.mark.timeout(2400)  # one two-process training: about 2 min on machine E, 4 on the slower C
def test_two_process_ddp_trains_learns_and_logs_one_run(tmp_path, mlflow_server):
    score = train_ddp(tmp_path, mlflow_server)
    print(f"test face macro-F1 after DDP training: {score:.4f}")
    assert score > CONSTANT + 0.1, "the two-process run must have learnt (0.441 measured as set, seed 42)"
