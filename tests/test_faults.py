"""Faults, each done for real: the served Bento stopped (SIGTERM) and killed (SIGKILL) in the
middle of a camera stream, a corrupt or missing model in the BentoML store, and the MLflow server
down while the promote stage runs. (A DVC stage killed midway: test_pipeline.)"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from mlflow.tracking import MlflowClient

from facemask.config import compose, write_params
from facemask.imageio import encode_jpeg
from facemask.registry import promote
from facemask.serving.packaging import ModelLoadError, load_pipeline
from facemask.serving.startup import EXIT_CODE
from facemask.stream.client import StreamClient
from facemask.stream.delivery import read_jsonl

from .conftest import API_KEY, FPS, REPO, Subscriber, entrance_frames, free_port, start_bento, start_mlflow, stop
from .test_registry import log_candidate

pytestmark = pytest.mark.slow


def paced(client: StreamClient, frames: list[bytes]) -> list[dict]:
    """Frames sent at the camera's 10 fps (alerts wait for seconds of real time)."""
    answers = []
    for jpeg in frames:
        start = time.perf_counter()
        answers.append(client.ask(jpeg))
        time.sleep(max(0.0, 1 / FPS - (time.perf_counter() - start)))
    return answers


def test_a_stopped_then_killed_service_loses_no_event(bento, bento_env, broker, shared, tmp_path):
    """SIGTERM after 2 s of video: the camera's partial stats window reaches the event file, the MQTT
    broker (retained) and says `offline`, and every event the dead webhook did not take is in the
    pending file. Restarted, the same client reconnects and streams on; killed (SIGKILL) right after
    an alert, every alert it had been told about is in the event file, the broker announces the
    service `offline` by its last will, and after a second restart the stream carries on."""
    events = tmp_path / "events.jsonl"
    env = {
        **bento_env, "FACEMASK_EVENTS": str(events), "FACEMASK_WEBHOOK_URL": f"http://127.0.0.1:{free_port()}/",
        "FACEMASK_MQTT_URL": broker.url,
    }  # fmt: skip
    subscriber = Subscriber(broker.url)
    log, port = tmp_path / "serve.log", free_port()
    frames = [encode_jpeg(f) for f in entrance_frames(shared)]
    client = StreamClient(f"ws://127.0.0.1:{port}/live/ws/door", max_wait_s=180, api_key=API_KEY)

    proc, _ = start_bento(bento, env, log, port)
    first = paced(client, frames[:20])
    proc.terminate()  # SIGTERM to the server's main process, as `docker stop` does
    assert proc.wait(timeout=60) == 0, log.read_text()[-3000:]
    written = read_jsonl(events)
    stats = [e for e in written if e["type"] == "stats" and e["camera"] == "door"]
    assert [e["frames"] for e in stats] == [20], "the last stats window was not flushed on SIGTERM"
    assert sum(e[f"faces_{lb}"] for e in stats for lb in ("mask", "no_mask", "incorrect")) >= 18
    pending = read_jsonl(events.with_suffix(".pending.jsonl"))
    assert [e["id"] for e in pending] == [e["id"] for e in written], "events the webhook never took were lost"
    assert [c["id"] for c in subscriber.on("facemask/door/compliance")] == [stats[0]["id"]]
    assert subscriber.on("facemask/availability") == ["online", "offline"]

    proc, _ = start_bento(bento, env, log, port)
    second = []
    for i in range(20, 80):  # the unmasked visitor is in view from frame 20: an alert comes ~2 s later
        second += paced(client, frames[i : i + 1])
        if second[-1]["alerts"]:
            break
    told = [a for answer in first + second for a in answer["alerts"]]
    assert told, "no alert within the clip"
    assert subscriber.on("facemask/availability")[-1] == "online"
    stop(proc, signal.SIGKILL)  # no shutdown hook runs
    assert {a["id"] for a in told} <= {e["id"] for e in read_jsonl(events) if e["type"] == "alert"}
    deadline = time.time() + 30
    while subscriber.on("facemask/availability")[-1] != "offline":  # the broker's last will for it
        assert time.time() < deadline, subscriber.on("facemask/availability")
        time.sleep(0.1)
    subscriber.close()

    proc, _ = start_bento(bento, env, log, port)
    try:
        rest = paced(client, frames[20 + len(second) :])
    finally:
        stop(proc)
    assert rest and all("tracks" in a for a in rest)
    assert client.reconnects >= 2
    assert sum(e["frames"] for e in read_jsonl(events) if e["type"] == "stats") >= 20 + len(rest)


def test_a_corrupt_or_missing_model_is_a_clear_startup_error(bento, bento_env, tmp_path):
    home = tmp_path / "bentoml"
    shutil.copytree(
        bento_env["BENTOML_HOME"], home, ignore=shutil.ignore_patterns("*.log", "events*", "prometheus_multiproc_dir")
    )
    env = {**bento_env, "BENTOML_HOME": str(home), "FACEMASK_EVENTS": str(tmp_path / "events.jsonl")}
    classifier = next(home.glob("models/facemask-classifier/*/classifier.pt"))  # the store the Bento serves from
    intact = classifier.read_bytes()
    classifier.write_bytes(intact[: len(intact) // 3])  # truncated, as by a full disk

    def startup_error(expected: str, env: dict = env) -> str:
        log = tmp_path / f"serve-{expected.split()[0]}.log"
        port = free_port()
        proc = subprocess.Popen(
            [str(Path(sys.executable).parent / "bentoml"), "serve", bento, "--port", str(port)],
            cwd=REPO, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        try:  # the whole server ends with the reason and exit code 3; no worker restarted in a loop
            assert proc.wait(timeout=120) == EXIT_CODE, log.read_text()[-3000:]
        finally:
            stop(proc, signal.SIGKILL)
        with pytest.raises(requests.RequestException):  # nothing left serving
            requests.get(f"http://127.0.0.1:{port}/readyz", timeout=5)
        text = log.read_text()
        assert f"facemask: the service could not start: {expected}" in text
        assert text.count("the service cannot start") == 1, text[-3000:]  # one worker tried, once
        return text

    text = startup_error("cannot load the classifier model")
    assert f"cannot load the classifier model {classifier}" in text

    classifier.write_bytes(intact)
    weights = next(home.glob("models/facemask-detector/*/*.onnx"))
    weights.unlink()
    text = startup_error("cannot load the face detector model")
    assert f"cannot load the face detector model {weights}" in text
    with pytest.raises(ModelLoadError, match="face detector model"):
        load_pipeline(classifier.parent, weights.parent)

    shutil.copy(bento_weights := next(Path(bento_env["BENTOML_HOME"]).glob("models/facemask-detector/*/*.onnx")),
                weights)  # fmt: skip
    assert bento_weights.name == weights.name
    cameras = tmp_path / "cameras.yaml"
    cameras.write_text("sources: [{name: door, source: 'rtsp://cam/1', fps: 0}]\n")
    startup_error("bad cameras config", {**env, "FACEMASK_CAMERAS_FILE": str(cameras)})
    assert "camera 'door' (sources[0]) fps: Input should be greater than 0" in (tmp_path / "serve-bad.log").read_text()


def test_mlflow_down_during_promote_stops_the_stage_and_moves_no_alias(tmp_path):
    """The registry server goes down before the promote stage: the stage fails with a clear message
    (exit 3), registers nothing and leaves the champion alias where it was; with the server back the
    same stage promotes the better candidate."""
    root = tmp_path / "mlflow"
    root.mkdir()
    proc, url = start_mlflow(root)
    port = int(url.rsplit(":", 1)[1])
    name = "faults-classifier"
    client = MlflowClient(url)
    run1, uri1 = log_candidate(url, 0.5)
    assert promote(client, name, uri1, run1, 0.5, "champion", margin=0.0, test_split="s").promoted
    run2, uri2 = log_candidate(url, 0.9)

    work = tmp_path / "work"
    (work / "models").mkdir(parents=True)
    (work / "reports").mkdir()
    (work / "models/mlflow_run.json").write_text(json.dumps({"run_id": run2, "model_uri": uri2, "tracking_uri": url}))
    (work / "reports/metrics.json").write_text(json.dumps({"face_macro_f1": 0.9, "test_split": "s"}))
    params = work / "params.yaml"
    write_params(
        compose([f"paths.models={work / 'models'}", f"paths.reports={work / 'reports'}",
                 f"mlflow.registered_model={name}", "mlflow.promotion_margin=0.0"]),
        params,
    )  # fmt: skip
    env = {**os.environ, "MLFLOW_TRACKING_URI": url, "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1"}
    cmd = [sys.executable, "-m", "facemask.stages.promote", "--params", str(params)]

    stop(proc)
    down = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert down.returncode == 3, down.stderr[-3000:]
    assert f"MLflow at {url} failed" in down.stderr and "no alias moved" in down.stderr
    assert "Traceback" not in down.stderr
    assert not (work / "reports/promotion.json").exists()

    proc, _ = start_mlflow(root, port)
    try:
        versions = client.search_model_versions(f"name='{name}'")
        assert [v.version for v in versions] == ["1"]
        assert client.get_model_version_by_alias(name, "champion").version == "1"
        up = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
        assert up.returncode == 0, up.stderr[-3000:]
        assert client.get_model_version_by_alias(name, "champion").version == "2"
    finally:
        stop(proc)
