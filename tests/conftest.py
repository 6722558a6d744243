"""Shared fixtures: the offline mirror (../shared or FACEMASK_MIRROR), small real slices of it,
a real MLflow tracking server on a free loopback port, and the pipeline's champion built into a
Bento and served (with an API key and small upload limits)."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import requests
import yaml

from facemask.subprocesses import free_port, stop, wait_ready
from facemask.tracking_server import JOB_EXECUTION, tracking_server

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
# the decoder's pixel limit, read from the one place it is defined (conf/data: data.max_image_pixels)
MAX_PIXELS = int(__import__("yaml").safe_load((REPO / "conf/data/default.yaml").read_text())["max_image_pixels"])


def _shared_root() -> Path:
    root = Path(os.environ.get("FACEMASK_MIRROR") or REPO.parent / "shared")
    assert (root / "datasets").is_dir(), (
        f"the offline mirror {root} is missing: set FACEMASK_MIRROR to a folder with datasets/ and models/"
    )
    return root


# `make test` runs two test processes, each taking a whole file at a time (pytest-xdist --dist loadfile
# --no-loadscope-reorder: files go out in collection order). Files go out longest first (seconds of a
# whole run with --durations=0, machine E, 2026-12-07: 258 s down to 3 s), so the last to start are
# the shortest and neither process runs alone for long at the end; files not listed follow.
LONGEST_FIRST = [
    "test_pipeline.py", "test_ddp.py", "test_faults.py", "test_scene_metrics.py", "test_service.py",
    "test_compute.py", "test_cameras.py", "test_quickstart.py", "test_deploy.py", "test_downloads.py",
    "test_stream.py", "test_reload.py", "test_numerics.py", "test_pretrained.py", "test_feedback.py",
    "test_detector_training.py", "test_camera_like.py", "test_front.py", "test_scene_training.py",
    "test_peers.py", "test_drift.py", "test_config.py", "test_centerface.py", "test_event_media.py",
    "test_detection.py", "test_batching.py",
]  # fmt: skip


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the other files keep their order


@pytest.fixture(scope="session")
def shared() -> Path:
    return _shared_root()


@pytest.fixture(scope="session")
def yunet_weights(shared: Path) -> Path:
    return shared / "models" / "yunet" / "face_detection_yunet.onnx"


def real_images(shared: Path, folder: str, n: int) -> list[Path]:
    """The first `n` images (sorted) of a dataset folder of the mirror."""
    files = sorted((shared / "datasets" / folder).glob("*.jpg"))[:n]
    assert len(files) == n, f"expected {n} images in {folder}"
    return files


def copy_scenes(src: Path, dest: Path, stems: list[str]) -> Path:
    """The named scenes (image + VOC annotation) of a scene folder, same layout."""
    for stem in stems:
        for sub, name in (("annotations", f"{stem}.xml"), ("images", f"{stem}.jpg")):
            (dest / sub).mkdir(parents=True, exist_ok=True)
            shutil.copy(src / sub / name, dest / sub / name)
    return dest


def train_scene_stems(shared: Path, n: int) -> list[str]:
    """The first `n` annotated training scenes (sorted by name)."""
    return [p.stem for p in sorted((shared / "datasets/face-mask-scenes-train/annotations").glob("*.xml"))[:n]]


def make_mirror(shared: Path, dest: Path, per_folder: int, scene_count: int = 12, train_scenes: int = 16) -> Path:
    """A slice of the offline mirror: `per_folder` real images per label folder, the first
    `train_scenes` annotated training scenes, the first `scene_count` dev scenes and the weights of
    the detectors the default configuration names (CenterFace: the `hall` profile), same layout."""
    for source, folders in {
        "face-mask-2class": ["with_mask", "without_mask"],
        "maskedface-net-sample": ["correct", "incorrect"],
    }.items():
        for folder in folders:
            out = dest / "datasets" / source / folder
            out.mkdir(parents=True)
            for f in real_images(shared, f"{source}/{folder}", per_folder):
                shutil.copy(f, out / f.name)
    (dest / "models" / "yunet").mkdir(parents=True)
    shutil.copy(shared / "models/yunet/face_detection_yunet.onnx", dest / "models/yunet")
    shutil.copytree(shared / "models/retinaface-mobilenet0.25", dest / "models/retinaface-mobilenet0.25")
    shutil.copytree(shared / "models/centerface", dest / "models/centerface")
    copy_scenes(
        shared / "datasets/face-mask-scenes-train",
        dest / "datasets/face-mask-scenes-train",
        train_scene_stems(shared, train_scenes),
    )
    copy_scenes(
        shared / "datasets/face-mask-scenes-dev", dest / "datasets/face-mask-scenes-dev", dev_scene_stems(scene_count)
    )
    return dest


def dev_scene_stems(n: int) -> list[str]:
    """The first `n` dev scenes in their numeric order (maksssksksss0, 1, 2, ...)."""
    return [f"maksssksksss{i}" for i in range(n)]


@pytest.fixture(scope="session")
def mini_mirror(shared: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_mirror(shared, tmp_path_factory.mktemp("mirror"), per_folder=24)


def start_mlflow(root: Path, port: int | None = None) -> tuple[subprocess.Popen, str]:
    """A real `mlflow server` (sqlite backend, local artifacts in `root`), waited for until healthy."""
    port = port or free_port()
    cmd = [
        str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
        "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
        "--artifacts-destination", str(root / "artifacts"), "--workers", "1",
    ]  # fmt: skip
    log = (root / "server.log").open("a")
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": JOB_EXECUTION}  # as the team server
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=root, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(
            proc,
            lambda: requests.get(f"{url}/health", timeout=1).ok,
            90,
            lambda: (root / "server.log").read_text()[-2000:],
        )
    except RuntimeError as err:
        pytest.fail(f"mlflow server: {err}")
    return proc, url


@pytest.fixture(scope="session")
def team_tracking_server(tmp_path_factory: pytest.TempPathFactory):
    """The team set-up `make mlflow-server` starts: a real MLflow server on a free loopback port,
    its backend store a real PostgreSQL cluster (loopback, password), artifacts proxied over HTTP.
    The whole pipeline test and the registry gates run against it."""
    with tracking_server(tmp_path_factory.mktemp("mlflow-team")) as server:
        yield server


@pytest.fixture(scope="session")
def mlflow_server(team_tracking_server) -> str:
    return team_tracking_server.url


API_KEY = "test-key-" + "0123456789abcdef"  # the served Bento's key in the tests


def pipeline_output(path: str) -> Path:
    """A file the pipeline made (e.g. models/classifier.pt), checked against dvc.lock: the tests that
    judge a model judge the one `dvc repro` built from the committed params, not whatever a hand-run
    stage or an experiment left in the working tree."""
    lock = yaml.safe_load((REPO / "dvc.lock").read_text())
    recorded = {o["path"]: o["md5"] for stage in lock["stages"].values() for o in stage.get("outs", [])}
    assert path in recorded, f"dvc.lock records no {path}"
    assert (REPO / path).is_file(), f"{path} is missing: run `make test` (it runs `dvc repro` first)"
    digest = hashlib.md5((REPO / path).read_bytes()).hexdigest()
    assert digest == recorded[path], f"{path} is not the file dvc.lock records: run `dvc repro` (make pipeline)"
    return REPO / path


def run(cmd: list[str], env: dict, timeout: int = 600) -> str:
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


@pytest.fixture(scope="session")
def bento_env(tmp_path_factory, shared):
    # the classifier and detector dvc.lock records, as registered by the pipeline's promote stages
    for path in ("models/classifier.pt", "models/detector/detector.onnx", "reports/promotion.json"):
        pipeline_output(path)
    home = tmp_path_factory.mktemp("bentoml")
    env = {
        **os.environ,
        "BENTOML_HOME": str(home),
        "FACEMASK_MIRROR": str(shared),
        "BENTOML_DO_NOT_TRACK": "True",
        "FACEMASK_EVENTS": str(home / "events.jsonl"),
        "FACEMASK_API_KEYS": API_KEY,
        "FACEMASK_FEEDBACK": "on",  # alerts keep their face's region for review (test_service, test_cameras)
        "FACEMASK_MAX_UPLOAD_BYTES": "3000000",
        "FACEMASK_MAX_FRAME_BYTES": "1000000",
    }
    # the champion lives where the pipeline logged it, whatever other tests pointed MLflow at
    env["MLFLOW_TRACKING_URI"] = json.loads((REPO / "models/mlflow_run.json").read_text())["tracking_uri"]
    env["PATH"] = f"{BIN}{os.pathsep}{env['PATH']}"
    # the model this pipeline run trained (not whatever champion the registry holds): the quality
    # tests judge it on photos of the manifest's test split, which it never saw
    env["FACEMASK_TEST_MODEL_VERSION"] = str(
        json.loads((REPO / "reports/promotion.json").read_text())["candidate_version"]
    )
    run([str(BIN / "python"), "-m", "facemask.serving.packaging", "--classifier-version",
         env["FACEMASK_TEST_MODEL_VERSION"]], env)  # fmt: skip
    return env


UV = [shutil.which("uv") or str(BIN / "uv")]  # uv is also a dev dependency, so it is in the venv


@pytest.fixture(scope="session")
def bento(bento_env):
    """`make bento`'s steps: pinned requirements, the project wheel, `bentoml build`; returns the tag.
    They write into the repository (service/requirements.txt, dist/): one test process at a time
    (`make test` runs two, pytest-xdist)."""
    (REPO / "dist").mkdir(exist_ok=True)
    with (REPO / "dist/.bento-build.lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        run([*UV, "export", "--frozen", "--no-dev", "--no-hashes", "--no-emit-project", "-o",
             "service/requirements.txt"], bento_env)  # fmt: skip
        run([*UV, "build", "--wheel", "-o", "dist"], bento_env)
        out = run([str(BIN / "bentoml"), "build", "-f", "service/bentofile.yaml", ".", "--output", "tag"], bento_env)
    return out.strip().splitlines()[-1].removeprefix("__tag__:")


def start_bento(bento: str, env: dict, log: Path, port: int | None = None) -> tuple[subprocess.Popen, str]:
    """`bentoml serve` of the built Bento, waited for until ready; returns the process and its URL."""
    port = port or free_port()
    with socket.socket() as probe:  # a restart on the same port: nothing may still answer there
        assert probe.connect_ex(("127.0.0.1", port)) != 0, f"port {port} is still served"
    with log.open("a") as fh:
        proc = subprocess.Popen(
            [str(BIN / "bentoml"), "serve", bento, "--host", "127.0.0.1", "--port", str(port)],
            cwd=REPO, env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(
            proc,
            lambda: requests.get(f"{url}/readyz", timeout=5).status_code == 200,
            180,
            lambda: log.read_text()[-3000:],
        )
    except RuntimeError as err:
        pytest.fail(f"the Bento: {err}")
    return proc, url


@pytest.fixture(scope="session")
def server(bento, bento_env):
    proc, url = start_bento(bento, bento_env, Path(bento_env["BENTOML_HOME"]) / "serve.log")
    yield url
    stop(proc)


def screenshot(page, name: str) -> None:
    """The page as the documentation shows it (`make screenshots` sets FACEMASK_SCREENSHOTS to
    docs/img): taken from the real page by the browser test that drives it; otherwise nothing."""
    if folder := os.environ.get("FACEMASK_SCREENSHOTS"):
        Path(folder).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(folder) / name))


def chromium_binary() -> str:
    for candidate in ("/usr/lib/chromium/chromium", shutil.which("chromium") or ""):
        if candidate and Path(candidate).is_file():
            return candidate
    pytest.fail("Debian's chromium is missing: `make browser` (part of `make test`) installs it")


def prometheus_binary(name: str = "prometheus") -> str:
    """Debian's `prometheus` or `promtool` (`make prometheus`, part of `make test`, installs them)."""
    found = shutil.which(name) or (f"/usr/bin/{name}" if Path(f"/usr/bin/{name}").is_file() else None)
    if found is None:
        pytest.fail(f"Debian's {name} is missing: `make prometheus` (part of `make test`) installs it")
    return found


def start_prometheus(root: Path, config: dict) -> tuple[subprocess.Popen, str]:
    """A real Prometheus server on a free loopback port with `config` (its data in `root`), waited for
    until ready; returns the process and its URL."""
    port = free_port()
    (root / "prometheus.yml").write_text(yaml.safe_dump(config))
    cmd = [
        prometheus_binary(), f"--config.file={root / 'prometheus.yml'}", f"--storage.tsdb.path={root / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
    ]  # fmt: skip
    log = (root / "prometheus.log").open("a")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=root, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(proc, lambda: requests.get(f"{url}/-/ready", timeout=1).ok, 60,
                   lambda: (root / "prometheus.log").read_text()[-2000:])  # fmt: skip
    except RuntimeError as err:
        pytest.fail(f"prometheus: {err}")
    return proc, url


FPS = 10


def _paste(frame, photo, x: int, y: int, height: int) -> None:
    import cv2

    img = cv2.resize(photo, (round(photo.shape[1] * height / photo.shape[0]), height), interpolation=cv2.INTER_AREA)
    frame[y : y + img.shape[0], x : x + img.shape[1]] = img


def entrance_frames(shared: Path):
    """A real-photo scene at 10 fps, 640x480, 8 s: a masked person stands on the left the whole
    time; an unmasked person enters on the right at 2 s and leaves at 6.5 s."""
    import cv2
    import numpy as np

    correct = sorted((shared / "datasets/maskedface-net-sample/correct").glob("*.jpg"))
    masked = cv2.imread(str(correct[3]))
    unmasked = next(
        img for p in sorted((shared / "datasets/face-mask-2class/without_mask").glob("*.jpg"))
        if min((img := cv2.imread(str(p))).shape[:2]) >= 220
    )  # fmt: skip
    rng = np.random.default_rng(0)
    for i in range(8 * FPS):
        t = i / FPS
        frame = np.full((480, 640, 3), 120, np.uint8)
        frame += rng.integers(0, 3, frame.shape, dtype=np.uint8)  # sensor noise: frames are never identical
        _paste(frame, masked, 40 + (i % 4), 110, 240)  # stands still, sways a little
        if 2.0 <= t < 6.5:
            _paste(frame, unmasked, 380 - int((t - 2.0) * 6), 120, 230)  # walks in slowly
        yield frame


def entrance_video(shared: Path, path: Path) -> Path:
    """`entrance_frames` as an mp4 file (OpenCV's mp4v), or as Y4M for Chromium's fake camera."""
    import cv2

    if path.suffix == ".y4m":
        with path.open("wb") as f:
            f.write(f"YUV4MPEG2 W640 H480 F{FPS}:1 Ip A1:1 C420jpeg\n".encode())
            for frame in entrance_frames(shared):
                f.write(b"FRAME\n" + cv2.cvtColor(frame, cv2.COLOR_BGR2YUV_I420).tobytes())
        return path
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), FPS, (640, 480))
    for frame in entrance_frames(shared):
        writer.write(frame)
    writer.release()
    return path


class Broker:
    """A real MQTT broker (Debian's mosquitto) on a loopback port, with persistence, so subscribers'
    sessions and their queued QoS 1 messages survive a stop and a start (`make test` installs it)."""

    def __init__(self):
        exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        assert Path(exe).is_file(), "mosquitto is not installed: `make mqtt-broker` (apt-get install mosquitto)"
        # its own folder straight under the temp dir: run as root, mosquitto drops to the `mosquitto`
        # user, which cannot enter pytest's private tmp_path (its store and log would be lost silently)
        root = Path(tempfile.mkdtemp(prefix="facemask-mosquitto-"))
        self.exe, self.root, self.port, self.proc = exe, root, free_port(), None
        self.config = root / "mosquitto.conf"
        self.config.write_text(
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence true\n"
            f"persistence_location {root}/\nautosave_interval 1\nlog_dest file {root / 'mosquitto.log'}\n"
        )
        if os.getuid() == 0:  # the `mosquitto` user writes the store and the log
            shutil.chown(root, user="mosquitto")
            os.chmod(root, 0o755)

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.proc = subprocess.Popen([self.exe, "-c", str(self.config)], start_new_session=True)
        deadline = time.time() + 20
        while True:
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            assert self.proc.poll() is None and time.time() < deadline, "mosquitto did not start"
            time.sleep(0.1)

    def stop(self) -> None:
        if self.proc is not None:
            stop(self.proc)
            self.proc = None

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)


class Subscriber:
    """A paho client that records every message on `topic` (QoS 1, a persistent session)."""

    def __init__(self, url: str, topic: str = "facemask/#", name: str = "test-subscriber"):
        import threading

        import paho.mqtt.client as mqtt

        self.messages: list[tuple[str, dict | str, bool]] = []
        self.lock = threading.Lock()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=name, clean_session=False)
        self.client.on_connect = lambda c, *_: c.subscribe(topic, qos=1)
        self.client.on_message = self._record
        self.client.reconnect_delay_set(0.2, 1)
        host, port = url.removeprefix("mqtt://").split(":")
        self.client.connect(host, int(port))
        self.client.loop_start()

    def _record(self, _client, _userdata, message) -> None:
        text = message.payload.decode()
        payload = json.loads(text) if text.startswith("{") else text
        with self.lock:
            self.messages.append((message.topic, payload, bool(message.retain)))

    def on(self, topic: str) -> list:
        with self.lock:
            return [payload for t, payload, _ in self.messages if t == topic]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def broker():
    b = Broker()
    b.start()
    yield b
    assert (b.root / "mosquitto.log").stat().st_size > 0, "the broker could not write its log"
    b.remove()


@pytest.fixture(scope="module")
def video(shared, tmp_path_factory) -> Path:
    """The entrance scene (`entrance_frames`) as an mp4 file."""
    return entrance_video(shared, tmp_path_factory.mktemp("video") / "entrance.mp4")


@pytest.fixture(autouse=True)
def _mlflow_tracking_uri_restored():
    """`mlflow.set_tracking_uri` (a test's own, or a stage's run in-process) also exports
    MLFLOW_TRACKING_URI: both are restored after each test, so that no later test's subprocess logs
    to a tracking server an earlier test has stopped."""
    import mlflow
    from mlflow.tracking._tracking_service import utils  # the set URI (None: unset), as mlflow's own
    # _use_tracking_uri saves it

    env, uri = os.environ.get("MLFLOW_TRACKING_URI"), utils._tracking_uri
    yield
    mlflow.set_tracking_uri(uri)  # None unsets it
    if env is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = env


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as mp:
        yield mp


@pytest.fixture(scope="module")
def pipeline(monkeypatch_module, shared):
    """The pipeline's own classifier and detector (the ones dvc.lock records) in a `MaskPipeline`."""
    from facemask.config import load_params
    from facemask.pipeline import MaskPipeline

    monkeypatch_module.setenv("FACEMASK_MIRROR", str(shared))
    params = load_params(REPO / "params.yaml")
    if params.detector.weights.path:  # a detector the pipeline trains: the one dvc.lock records
        pipeline_output(params.detector.weights.path)
    return MaskPipeline.from_params(params, pipeline_output("models/classifier.pt"))
