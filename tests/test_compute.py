"""Where the per-image work runs (facemask.compute) and the crop stage on it: a real Dask local
cluster and a real process pool give the same ordered results, build each worker's context once,
keep a bounded number of items in flight, pass a failing item's error on, and name a scheduler
that cannot be reached. The crop stage streams its manifest and writes the same crops and table
on either engine, from real photos and scenes, and the scene evaluation predicts the same on both."""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from facemask.compute import EngineError, ordered_map
from facemask.config import Engine, compose, validate, write_params
from facemask.errors import FacemaskError
from facemask.stages.crop import count_images, images

from .conftest import BIN, REPO, copy_scenes, dev_scene_stems, make_mirror


def engine(**settings) -> Engine:
    """conf/engine's settings with these changed."""
    return Engine.model_validate({**validate(compose()).engine.model_dump(), **settings})


def build(spec: str) -> dict:
    return {"spec": spec, "pid": os.getpid(), "built": time.monotonic_ns()}


def work(context: dict, item: int) -> tuple[int, int, int]:
    if item == 13 and context["spec"] == "fail":
        raise ValueError("item 13 is bad")
    time.sleep(random.random() / 100)  # finishing out of order
    return item * item, context["pid"], context["built"]


@pytest.mark.parametrize("kind", ["dask", "pool"])
def test_ordered_map_keeps_order_builds_once_per_worker_and_bounds_what_is_in_flight(kind):
    pulled: list[int] = []

    def items():
        for i in range(60):
            pulled.append(i)
            yield i

    results = ordered_map(work, items(), build, "ok", 2, engine(kind=kind, in_flight=3, batch=2))
    first = next(results)
    assert len(pulled) <= 3 * 2 + 2, "more items were taken than the window holds"  # one batch being filled
    rest = list(results)
    assert [r[0] for r in [first, *rest]] == [i * i for i in range(60)]
    workers = {pid: built for _, pid, built in [first, *rest]}
    assert len(workers) == 2 and os.getpid() not in workers
    for pid, built in workers.items():  # one context per process, reused for every item it ran
        assert {b for _, p, b in [first, *rest] if p == pid} == {built}


@pytest.mark.parametrize("kind", ["dask", "pool"])
def test_a_failing_item_raises_its_error(kind):
    with pytest.raises(ValueError, match="item 13 is bad"):
        list(ordered_map(work, range(40), build, "fail", 2, engine(kind=kind)))


def test_one_worker_runs_in_this_process():
    results = list(ordered_map(work, range(5), build, "ok", 1, engine()))
    assert [r[0] for r in results] == [0, 1, 4, 9, 16] and {r[1] for r in results} == {os.getpid()}
    assert engine().in_process(1) and not engine(kind="pool").in_process(2)
    assert not engine(scheduler="tcp://127.0.0.1:9").in_process(1)  # a named cluster runs it, one worker or not


def test_an_unreachable_scheduler_is_named():
    # the discard port: nothing listens there
    unreachable = engine(kind="dask", scheduler="tcp://127.0.0.1:9", connect_timeout_s=3)
    with pytest.raises(EngineError, match=r"tcp://127.0.0.1:9"):
        list(ordered_map(work, range(3), build, "ok", 2, unreachable))


def test_a_scheduler_that_is_no_address_is_refused_by_the_config():
    with pytest.raises(FacemaskError, match=r"engine\.scheduler"):
        validate(compose(["engine.scheduler=my-cluster"]))
    with pytest.raises(FacemaskError, match="needs kind: dask"):
        validate(compose(["engine.scheduler=tcp://10.0.0.5:8786", "engine.kind=pool"]))


def test_manifest_streaming_groups_an_image_and_refuses_rows_apart(tmp_path):
    rows = [
        {"id": "a-1", "source": "s", "relpath": "x.jpg", "kind": "scene"},
        {"id": "a-2", "source": "s", "relpath": "x.jpg", "kind": "scene"},
        {"id": "b", "source": "s", "relpath": "y.jpg", "kind": "photo"},
    ]
    path = tmp_path / "manifest.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    reviewed = tmp_path / "feedback.csv"  # the reviewed alerts' manifest follows the sources'
    pd.DataFrame([{"id": "feedback-1-f00", "source": "feedback", "relpath": "images/e.jpg", "kind": "region"}]).to_csv(
        reviewed, index=False
    )
    got = list(images([path, reviewed], tmp_path / "raw"))
    assert [(Path(p).name, [r["id"] for r in rs]) for p, rs in got] == [
        ("x.jpg", ["a-1", "a-2"]), ("y.jpg", ["b"]), ("e.jpg", ["feedback-1-f00"])
    ]  # fmt: skip
    assert count_images([path, reviewed]) == 3
    pd.DataFrame([*rows, {"id": "c", "source": "s", "relpath": "x.jpg", "kind": "scene"}]).to_csv(path, index=False)
    with pytest.raises(FacemaskError, match=r"s/x\.jpg are apart"):
        list(images([path], tmp_path / "raw"))


@pytest.fixture(scope="module")
def ingested(tmp_path_factory, shared):
    """Real photos of every label folder and 12 real training scenes, ingested."""
    root = tmp_path_factory.mktemp("crop-engines")
    mirror = make_mirror(shared, root / "mirror", per_folder=8, scene_count=4, train_scenes=12)
    env = {**os.environ, "FACEMASK_MIRROR": str(mirror), "FACEMASK_CACHE": str(root / "cache")}
    # the stock YuNet from the mirror: the engines are under test, not a model this project trains
    paths = [f"paths.{k}={root / k}" for k in ("raw", "interim", "models", "reports", "feedback")] + ["detector=yunet"]
    write_params(compose(paths), root / "params.yaml")
    stage(root / "params.yaml", "ingest", env)
    return root, env, paths


def stage(params: Path, name: str, env: dict) -> str:
    """Run a stage script; its log (stderr)."""
    proc = subprocess.run([str(BIN / "python"), "-m", f"facemask.stages.{name}", "--params", str(params)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stderr


@pytest.mark.slow
def test_crop_stage_writes_the_same_crops_on_dask_and_on_a_process_pool(ingested):
    root, env, paths = ingested
    out = {}
    for kind in ("pool", "dask"):
        params = root / f"params-{kind}.yaml"
        overrides = [f"paths.crops={root / kind}", f"paths.interim={root / kind}-i", f"engine.kind={kind}",
                     "crop.workers=2", "engine.batch=3"]  # fmt: skip
        write_params(compose([*paths, *overrides]), params)
        (root / f"{kind}-i").mkdir()
        shutil.copy(root / "interim/manifest.csv", root / f"{kind}-i/manifest.csv")
        log = stage(params, "crop", env)
        assert "Traceback" not in log and "CommClosedError" not in log, log[-3000:]  # a quiet shutdown
        out[kind] = pd.read_csv(root / f"{kind}-i/crops.csv", keep_default_na=False)
    manifest = pd.read_csv(root / "interim/manifest.csv")
    pool, dask = out["pool"], out["dask"]
    assert pool.equals(dask)
    assert set(manifest["id"]) <= set(pool["id"]) and (pool["status"] == "background").any()
    assert list(pool["id"][pool["status"] != "background"]) == sorted(manifest["id"])  # manifest order
    written = sorted(p.name for p in (root / "pool").iterdir())
    assert written == sorted(p.name for p in (root / "dask").iterdir()) == sorted(pool["crop"][pool["crop"] != ""])
    for name in written[:: max(1, len(written) // 10)]:
        assert (root / "pool" / name).read_bytes() == (root / "dask" / name).read_bytes()
    report = json.loads((root / "reports/crop.json").read_text())
    assert report["samples"] == len(manifest) and report["crops"] == len(written) - report["scenes"]["background_crops"]


@pytest.mark.slow
def test_scene_evaluation_predicts_the_same_in_process_on_a_pool_and_on_dask(tmp_path, shared):
    """The `scenes` stage's per-scene work on the engine: 16 real dev scenes, the pipeline's own
    classifier (`make test` trains it first), the same detections and classes wherever they ran."""
    from facemask.config import validate
    from facemask.scenes.evaluate import evaluate_scenes

    classifier = REPO / "models/classifier.pt"
    assert classifier.is_file(), "run `make test` (it trains the classifier first)"
    copy_scenes(shared / "datasets/face-mask-scenes-dev", tmp_path / "scenes", dev_scene_stems(16))
    runs = {}
    for kind, workers in (("pool", 1), ("pool", 2), ("dask", 2)):
        params = validate(compose([f"scenes.dir={tmp_path / 'scenes'}", f"scenes.workers={workers}",
                                   f"engine.kind={kind}", "engine.batch=3"]))  # fmt: skip
        runs[kind, workers], result = evaluate_scenes(params, classifier)
        assert result["scenes"] == 16 and result["faces"] > 30
    one = runs["pool", 1]
    assert len(one.predictions) == 16 and sum(len(p.labels) for p in one.predictions) > 0
    for key, run in runs.items():
        assert [s.name for s in run.scenes] == [s.name for s in one.scenes], key
        assert (run.detect_ms > 0).all() and len(run.detect_ms) == 16, key
        for a, b in zip(one.predictions, run.predictions, strict=True):
            assert a.labels == b.labels, key
            assert np.allclose(a.boxes, b.boxes, atol=0.5) and np.allclose(a.scores, b.scores, atol=1e-3), key
            assert np.allclose(a.probabilities, b.probabilities, atol=1e-3), key
