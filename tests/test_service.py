"""The BentoML service, built into a Bento from the pipeline's champion and served for real.

Needs the repository's own pipeline outputs (`make test` runs `dvc repro` first): the champion in
the project's MLflow registry is imported into a temporary BentoML store, built into a Bento with
`bentoml build`, served on a free port, and questioned over HTTP with real images.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import requests
import yaml
from PIL import Image

from .conftest import BIN, FPS, REPO, entrance_frames, entrance_video, free_port

pytestmark = pytest.mark.slow


def run(cmd: list[str], env: dict, timeout: int = 600) -> str:
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


@pytest.fixture(scope="session")
def bento_env(tmp_path_factory, shared):
    assert (REPO / "models/classifier.pt").is_file() and (REPO / "reports/promotion.json").is_file(), (
        "the service tests need the pipeline's champion: run `make test` (it runs `dvc repro` first)"
    )
    home = tmp_path_factory.mktemp("bentoml")
    env = {
        **os.environ,
        "BENTOML_HOME": str(home),
        "FACEMASK_MIRROR": str(shared),
        "BENTOML_DO_NOT_TRACK": "True",
        "FACEMASK_EVENTS": str(home / "events.jsonl"),
    }
    # the champion lives where the pipeline logged it, whatever other tests pointed MLflow at
    env["MLFLOW_TRACKING_URI"] = json.loads((REPO / "models/mlflow_run.json").read_text())["tracking_uri"]
    env["PATH"] = f"{BIN}{os.pathsep}{env['PATH']}"
    run([str(BIN / "python"), "-m", "facemask.serving.packaging"], env)
    return env


UV = [shutil.which("uv") or str(BIN / "uv")]  # uv is also a dev dependency, so it is in the venv


@pytest.fixture(scope="session")
def bento(bento_env):
    """`make bento`'s steps: pinned requirements, the project wheel, `bentoml build`; returns the tag."""
    run([*UV, "export", "--frozen", "--no-dev", "--no-hashes", "--no-emit-project", "-o", "service/requirements.txt"],
        bento_env)  # fmt: skip
    run([*UV, "build", "--wheel", "-o", "dist"], bento_env)
    out = run([str(BIN / "bentoml"), "build", "-f", "service/bentofile.yaml", ".", "--output", "tag"], bento_env)
    return out.strip().splitlines()[-1].removeprefix("__tag__:")


@pytest.fixture(scope="session")
def server(bento, bento_env):
    port = free_port()
    log = Path(bento_env["BENTOML_HOME"]) / "serve.log"
    with log.open("w") as fh:
        proc = subprocess.Popen(
            [str(BIN / "bentoml"), "serve", bento, "--host", "127.0.0.1", "--port", str(port)],
            cwd=REPO, env=bento_env, stdout=fh, stderr=subprocess.STDOUT,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 180
    while time.time() < deadline:
        assert proc.poll() is None, log.read_text()[-3000:]
        try:
            if requests.get(f"{url}/readyz", timeout=5).status_code == 200:
                break
        except requests.RequestException:  # not listening yet, or busy loading the models
            pass
        time.sleep(1)
    else:
        proc.kill()
        pytest.fail("the Bento did not become ready:\n" + log.read_text()[-3000:])
    yield url
    proc.terminate()
    proc.wait(timeout=30)


def post(url: str, api: str, data: bytes, content_type: str = "image/jpeg") -> requests.Response:
    return requests.post(f"{url}/{api}", files={"image": ("frame", data, content_type)}, timeout=60)


def held_out(shared, label: str, n: int) -> list[bytes]:
    """`n` images of `label` from the pipeline's test split (never trained on)."""
    manifest = pd.read_csv(REPO / "data/interim/manifest.csv")
    rows = manifest[(manifest["split"] == "test") & (manifest["label"] == label)]
    rows = rows[rows["source"] == "face-mask-2class"].sort_values("id").head(n)
    return [(REPO / "data/raw" / r.source / r.relpath).read_bytes() for r in rows.itertuples()]


def test_bento_pins_requirements_and_carries_both_models(bento, bento_env):
    info = subprocess.run(
        [str(BIN / "bentoml"), "get", bento, "-o", "yaml"], env=bento_env, capture_output=True, text=True, check=True
    ).stdout
    manifest = yaml.safe_load(info)
    names = {m["tag"].split(":")[0] for svc in manifest["services"] for m in svc["models"]}
    assert names == {"facemask-classifier", "facemask-detector"}
    requirements = (REPO / "service/requirements.txt").read_text().splitlines()
    pinned = [r for r in requirements if r and not r.startswith((" ", "#"))]
    assert pinned and all("==" in r for r in pinned)
    assert any(r.startswith("torch==") for r in pinned) and any(r.startswith("bentoml==") for r in pinned)


@pytest.mark.parametrize(("label", "expected"), [("mask", "mask"), ("no_mask", "no_mask")])
def test_detect_classifies_held_out_faces(server, shared, label, expected):
    images = held_out(shared, label, 12)
    right = 0
    for data in images:
        resp = post(server, "detect", data)
        assert resp.status_code == 200, resp.text
        body = resp.json()
        assert body["model_version"].startswith("facemask-classifier/v")
        if body["faces"]:
            top = max(body["faces"], key=lambda f: (f["box"][2] - f["box"][0]) * (f["box"][3] - f["box"][1]))
            assert abs(sum(top["probabilities"].values()) - 1) < 1e-3
            right += top["label"] == expected
    assert right >= 10, f"only {right}/12 held-out {label} photos classified {expected}"


def test_annotate_returns_a_jpeg_of_the_same_size(server, shared):
    data = held_out(shared, "no_mask", 1)[0]
    resp = post(server, "annotate", data)
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("image/jpeg")
    assert resp.headers["x-model-version"].startswith("facemask-classifier/v")
    out = cv2.imdecode(np.frombuffer(resp.content, np.uint8), cv2.IMREAD_COLOR)
    src = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert out.shape == src.shape
    assert int(resp.headers["x-faces"]) >= 1


def _jpeg(img: np.ndarray) -> bytes:
    return cv2.imencode(".jpg", img)[1].tobytes()


def test_gate_decisions(server, shared):
    blank = post(server, "gate", _jpeg(np.full((480, 640, 3), 120, np.uint8))).json()
    assert (blank["allow"], blank["reason"]) == (False, "no_face")
    assert blank["model_version"].startswith("facemask-classifier/v")

    faces = [cv2.imdecode(np.frombuffer(d, np.uint8), cv2.IMREAD_COLOR) for d in held_out(shared, "no_mask", 2)]
    pair = np.hstack([cv2.resize(f, (320, 400)) for f in faces])
    several = post(server, "gate", _jpeg(pair)).json()
    assert (several["allow"], several["reason"]) == (False, "several_faces")

    reasons = [post(server, "gate", d).json() for d in held_out(shared, "no_mask", 6)]
    assert not any(r["allow"] for r in reasons)
    assert sum(r["reason"] == "no_mask" for r in reasons) >= 4
    allowed = [post(server, "gate", d).json() for d in held_out(shared, "mask", 6)]
    assert sum(r["allow"] for r in allowed) >= 4


def _bomb() -> bytes:
    buf = io.BytesIO()
    Image.new("L", (10000, 10000)).save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def _zero_height_png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buf, format="PNG")
    data = bytearray(buf.getvalue())
    data[20:24] = (0).to_bytes(4, "big")  # IHDR height = 0
    return bytes(data)


@pytest.mark.parametrize(
    ("data", "content_type", "fragment"),
    [
        (b"\x00\x01garbage bytes", "image/jpeg", "not a decodable image"),
        (b"plain text, not an image", "text/plain", "Invalid content type"),
        (b"", "image/png", "empty input"),
        ("zero", "image/png", "not a decodable image"),
        ("bomb", "image/png", "over the limit"),
    ],
)
@pytest.mark.parametrize("api", ["detect", "annotate", "gate"])
def test_bad_input_is_a_clear_4xx_and_service_keeps_serving(server, shared, api, data, content_type, fragment):
    payload = {"zero": _zero_height_png, "bomb": _bomb}[data]() if isinstance(data, str) else data
    resp = post(server, api, payload, content_type)
    assert 400 <= resp.status_code < 500, resp.text
    assert fragment in resp.text
    ok = post(server, "detect", held_out(shared, "mask", 1)[0])
    assert ok.status_code == 200


def test_health_endpoints(server):
    for path in ("livez", "readyz", "healthz"):
        assert requests.get(f"{server}/{path}", timeout=5).status_code == 200
    info = requests.post(f"{server}/info", json={}, timeout=10).json()
    assert info["labels"] == ["mask", "no_mask", "incorrect"]
    assert info["detector"] == "yunet"


def stable_ids(answers: list[dict]) -> tuple[set, set]:
    left = {t["id"] for a in answers for t in a["tracks"] if t["box"][0] < 320}
    right = {t["id"] for a in answers for t in a["tracks"] if t["box"][0] >= 320}
    return left, right


def test_live_stream_over_websocket(server, shared, bento_env):
    """The entrance video at 10 fps over one WebSocket: stable tracks, one alert, a bad frame and a
    text message answered with an error while the stream goes on; the alert reaches the event
    file and the Prometheus metrics."""
    from websockets.sync.client import connect

    from facemask.imageio import encode_jpeg

    answers = []
    with connect(server.replace("http://", "ws://") + "/live/ws/door", max_size=2**22) as ws:
        for i, frame in enumerate(entrance_frames(shared)):
            start = time.perf_counter()
            if i == 30:
                ws.send(b"\xff\xd8 not a jpeg")
                assert "not a decodable image" in json.loads(ws.recv(timeout=30))["error"]
                ws.send("hello")
                assert "binary" in json.loads(ws.recv(timeout=30))["error"]
            ws.send(encode_jpeg(frame))
            answers.append(json.loads(ws.recv(timeout=30)))
            time.sleep(max(0.0, 1 / FPS - (time.perf_counter() - start)))
    assert len(answers) == 80 and all("error" not in a for a in answers)
    left, right = stable_ids(answers)
    assert len(left) == 1 and len(right) == 1, (left, right)
    alerts = [x for a in answers for x in a["alerts"]]
    assert len(alerts) == 1 and alerts[0]["track"] in right
    assert answers[-1]["compliance"] is not None and 0.5 < answers[-1]["compliance"] < 1.0

    events = [json.loads(line) for line in Path(bento_env["FACEMASK_EVENTS"]).read_text().splitlines()]
    assert [e["track"] for e in events if e["type"] == "alert"] == [alerts[0]["track"]]
    metrics = requests.get(f"{server}/metrics", timeout=10).text
    fired = re.findall(r'^facemask_alerts_total\{[^}]*camera="door"[^}]*\} (\S+)$', metrics, re.M)
    assert sum(float(v) for v in fired) == 1.0
    frames = re.findall(r'^facemask_frames_total\{[^}]*camera="door"[^}]*\} (\S+)$', metrics, re.M)
    assert sum(float(v) for v in frames) == 80.0
    assert re.search(r'^facemask_bad_frames_total\{camera="door"\} 1\.0$', metrics, re.M)
    shares = re.findall(r'^facemask_masked_share\{[^}]*camera="door"[^}]*\} (\S+)$', metrics, re.M)
    assert shares and 0.5 < float(shares[-1]) < 1.0, [ln for ln in metrics.splitlines() if "masked_share" in ln]


def test_live_stream_refuses_a_bad_camera_name(server):
    from websockets.exceptions import ConnectionClosed
    from websockets.sync.client import connect

    with (
        connect(server.replace("http://", "ws://") + "/live/ws/bad%20name!") as ws,
        pytest.raises(ConnectionClosed) as err,
    ):
        ws.recv(timeout=10)
    assert err.value.rcvd.code == 1008
    assert requests.get(f"{server}/readyz", timeout=10).status_code == 200


def chromium_binary() -> str:
    for candidate in ("/usr/lib/chromium/chromium", shutil.which("chromium") or ""):
        if candidate and Path(candidate).is_file():
            return candidate
    pytest.fail("Debian's chromium is missing: `make browser` (part of `make test`) installs it")


def test_camera_page_in_headless_chromium(server, shared, tmp_path):
    """The page at /live/ with Chromium's fake camera playing the entrance video: labelled boxes
    are drawn over the video and an alert appears."""
    from playwright.sync_api import sync_playwright

    y4m = entrance_video(shared, tmp_path / "entrance.y4m")
    args = ["--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
            f"--use-file-for-fake-video-capture={y4m}", "--no-sandbox"]  # fmt: skip
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium_binary(), headless=True, args=args)
        page = browser.new_page()
        messages: list[str] = []
        page.on("console", lambda m: messages.append(m.text))
        page.goto(f"{server}/live/?camera=browser")
        page.wait_for_function("window.facemask && window.facemask.answers > 10", timeout=60_000)
        labels = page.evaluate("window.facemask.tracks.map(t => t.label)")
        assert labels and set(labels) <= {"mask", "no_mask", "incorrect"}
        page.wait_for_selector("#alerts li.alert", timeout=90_000)
        text = page.inner_text("#alerts li.alert")
        assert "person #" in text and ("no mask" in text or "incorrect" in text)
        assert "% masked" in page.inner_text("#compliance")
        drawn = page.evaluate(
            "(() => { const c = document.getElementById('overlay');"
            " const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
            " let n = 0; for (let i = 3; i < d.length; i += 4) n += d[i] > 0; return n; })()"
        )
        browser.close()
    assert drawn > 500, f"no boxes drawn over the video; console: {messages[-5:]}"
