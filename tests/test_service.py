"""The BentoML service, built into a Bento from the pipeline's champion and served for real.

Needs the repository's own pipeline outputs (`make test` runs `dvc repro` first): the champion in
the project's MLflow registry is imported into a temporary BentoML store, built into a Bento with
`bentoml build`, served on a free port, and questioned over HTTP with real images.
"""

from __future__ import annotations

import io
import json
import os
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

from .conftest import BIN, REPO, free_port

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
    env = {**os.environ, "BENTOML_HOME": str(home), "FACEMASK_MIRROR": str(shared), "BENTOML_DO_NOT_TRACK": "True"}
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
