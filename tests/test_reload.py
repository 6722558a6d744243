"""Hot reload against a real MLflow registry under load: the service (from source, its models imported
from a registry of the test's own as `make serve` does) follows the champion alias. A promoted new
version is swapped in within the poll interval while two WebSocket streams and an HTTP client keep
going (no failed frame or request; every answer names the version that gave it, and after the switch
the new one); a corrupt version is refused with its reason on /info while the old one keeps answering.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import mlflow
import pytest
import requests
from mlflow.tracking import MlflowClient

from facemask.config import load_params
from facemask.imageio import encode_jpeg
from facemask.subprocesses import stop

from .conftest import API_KEY, BIN, REPO, entrance_frames, pipeline_output, run, start_bento, start_mlflow

pytestmark = pytest.mark.slow
KEY = {"X-API-Key": API_KEY}
POLL_S = 2


def register(client: MlflowClient, name: str, file: Path, alias: str = "champion") -> str:
    """`file` logged in a run and registered as a new version of `name`, which takes `alias`."""
    with mlflow.start_run() as active:
        mlflow.log_artifact(str(file), "model")
    if not client.search_registered_models(f"name='{name}'"):
        client.create_registered_model(name)
    version = client.create_model_version(name, f"runs:/{active.info.run_id}/model", run_id=active.info.run_id)
    client.set_registered_model_alias(name, alias, version.version)
    return version.version


def reload_state(url: str) -> dict:
    return requests.post(f"{url}/info", json={}, headers=KEY, timeout=10).json()["reload"]


class Load:
    """Two WebSocket cameras and one HTTP client, each recording every answer's model version."""

    def __init__(self, url: str, frames: list[bytes]):
        self.url, self.frames = url, frames
        self.answers: dict[str, list[str]] = {"cam-a": [], "cam-b": [], "http": []}
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._stream, args=(c,)) for c in ("cam-a", "cam-b")]
        self._threads.append(threading.Thread(target=self._http))

    def _stream(self, camera: str) -> None:
        from websockets.sync.client import connect

        try:
            with connect(f"{self.url.replace('http', 'ws', 1)}/live/ws/{camera}", additional_headers=KEY) as ws:
                i = 0
                while not self._stop.is_set():
                    ws.send(self.frames[i % len(self.frames)])
                    answer = json.loads(ws.recv(timeout=30))
                    if "error" in answer:
                        self.failures.append(f"{camera}: {answer['error']}")
                    self.answers[camera].append(answer["model_version"])
                    i += 1
                    time.sleep(0.1)
        except Exception as err:  # a dropped stream is a failure of the reload
            self.failures.append(f"{camera}: {type(err).__name__}: {err}")

    def _http(self) -> None:
        i = 0
        while not self._stop.is_set():
            files = {"image": ("frame.jpg", self.frames[i % len(self.frames)], "image/jpeg")}
            try:
                resp = requests.post(f"{self.url}/detect", files=files, headers=KEY, timeout=30)
            except requests.RequestException as err:
                self.failures.append(f"http: {err}")
                continue
            if resp.status_code != 200:
                self.failures.append(f"http: {resp.status_code} {resp.text[:200]}")
            else:
                self.answers["http"].append(resp.json()["model_version"])
            i += 7
            time.sleep(0.2)

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(60)

    def until_all(self, predicate, timeout: float, what: str) -> None:
        deadline = time.time() + timeout
        while not all(a and predicate(a[-1]) for a in self.answers.values()):
            assert not self.failures, self.failures[:5]
            assert time.time() < deadline, f"{what}: last answers {[a[-1:] for a in self.answers.values()]}"
            time.sleep(0.2)


def test_a_promoted_champion_is_swapped_in_under_load_and_a_corrupt_one_refused(bento_env, shared, tmp_path):
    params = load_params(REPO / "params.yaml")
    classifier_name, detector_name = params.mlflow.registered_model, params.mlflow.registered_detector
    (tmp_path / "mlflow").mkdir()
    mlflow_proc, registry = start_mlflow(tmp_path / "mlflow")
    env = {**bento_env, "BENTOML_HOME": str(tmp_path / "bentoml"), "MLFLOW_TRACKING_URI": registry,
           "FACEMASK_RELOAD_POLL_S": str(POLL_S), "FACEMASK_EVENTS": str(tmp_path / "events.jsonl")}  # fmt: skip
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(registry)
    proc = None
    try:
        client = MlflowClient(registry)
        mlflow.set_experiment("hot-reload")
        classifier = pipeline_output("models/classifier.pt")
        v1 = register(client, classifier_name, classifier)
        if params.detector.name == params.detector_train.target:  # the fine-tuned detector ships from the registry
            register(client, detector_name, pipeline_output(params.detector.weights.path))
        run([str(BIN / "python"), "-m", "facemask.serving.packaging"], env)  # `make bento-models`
        proc, url = start_bento("service.service:FaceMask", env, tmp_path / "serve.log")  # `make serve`
        info = requests.post(f"{url}/info", json={}, headers=KEY, timeout=10).json()
        assert info["model_version"] == f"{classifier_name}/v{v1}" and info["reload"]["poll_s"] == POLL_S

        frames = [encode_jpeg(f) for f in list(entrance_frames(shared))[::4]]
        with Load(url, frames) as load:
            load.until_all(lambda v: v == f"{classifier_name}/v{v1}", 60, "answers flowing")
            v2 = register(client, classifier_name, classifier)  # a new version promoted
            promoted = time.time()
            # the next poll, then the download, two pipelines loaded and warmed up (slower machines: more)
            load.until_all(lambda v: v == f"{classifier_name}/v{v2}", POLL_S + 90, f"v{v2} answering")
            switch_s = time.time() - promoted
            bad = tmp_path / "corrupt" / "classifier.pt"
            bad.parent.mkdir()
            bad.write_bytes(classifier.read_bytes()[: classifier.stat().st_size // 3])  # truncated
            v3 = register(client, classifier_name, bad)
            deadline = time.time() + POLL_S + 60
            while (refused := reload_state(url)["refused"]) is None:
                assert time.time() < deadline, "the corrupt version was never refused"
                time.sleep(0.5)
            counts = {k: len(v) for k, v in load.answers.items()}
            load.until_all(lambda v: True, 10, "still answering")
            time.sleep(2)
        assert not load.failures, load.failures[:5]
        for name, versions in load.answers.items():  # each client: v1, then only v2, never v3
            switched = versions.index(f"{classifier_name}/v{v2}")
            assert set(versions[:switched]) == {f"{classifier_name}/v{v1}"}, (name, versions)
            assert set(versions[switched:]) == {f"{classifier_name}/v{v2}"}, (name, versions)
            assert len(versions) > counts[name] + 3  # kept answering after the refusal
        print(f"v{v2} answered everywhere {switch_s:.1f} s after its promotion (poll every {POLL_S} s)")
        assert refused["version"].startswith(f"{classifier_name}/v{v3}")
        assert "cannot load the classifier model" in refused["reason"]

        assert requests.post(f"{url}/admin/reload", timeout=10).status_code == 401
        now = requests.post(f"{url}/admin/reload", headers=KEY, timeout=60).json()
        assert now["reloaded"] is False and now["serving"]["model_version"] == f"{classifier_name}/v{v2}"
        client.set_registered_model_alias(classifier_name, "champion", v1)  # a roll-back, asked for at once
        now = requests.post(f"{url}/admin/reload", headers=KEY, timeout=60).json()
        assert now["reloaded"] is True and now["serving"]["model_version"] == f"{classifier_name}/v{v1}"
        assert reload_state(url)["reloads"] == 2
        log = (tmp_path / "serve.log").read_text()
        assert f"refused {classifier_name}/v{v3}" in log and "keeps serving" in log
    finally:
        if proc is not None:
            stop(proc)
        stop(mlflow_proc)
        mlflow.set_tracking_uri(previous)
