"""The download path, source by source, for a user with internet and no mirror.

A loopback HTTP server serves archives laid out exactly like each upstream (GitHub's codeload zips
with their `<repo>-<commit>/` top folder; Kaggle's zip behind HTTP Basic auth), built from real
images of the shared slice; the real ingest stage runs with FACEMASK_MIRROR unset and must turn
each layout into the same manifest the mirror gives: label folders, MaskON's one folder labelled by
file-name suffix, VOC scenes whose image folder is called JPEGImages or Images, and Kaggle scenes
that need an API token (its absence is a clear error naming the setting).
"""

from __future__ import annotations

import base64
import functools
import http.server
import json
import os
import subprocess
import sys
import threading
import zipfile
from pathlib import Path

import cv2
import pandas as pd
import pytest
import yaml

from facemask.config import compose, write_params

KAGGLE_USER, KAGGLE_KEY = "someone", "0123456789abcdef"
MASKON = "MaskON-a332fc10bf292fed5e03d5dcaf11560da58fcf81"
ILC = "face-mask-dataset-ilc-2021-{}"
SUFFIXES = {
    "_Mask": "mask",
    "_Mask_Mouth_Chin": "incorrect",
    "_Mask_Chin": "incorrect",
    "_Mask_Nose_Mouth": "incorrect",
}


class Handler(http.server.SimpleHTTPRequestHandler):
    """Static files; everything under /kaggle/ asks for Kaggle's Basic auth."""

    def do_GET(self):
        if self.path.startswith("/kaggle/"):
            token = base64.b64encode(f"{KAGGLE_USER}:{KAGGLE_KEY}".encode()).decode()
            if self.headers.get("Authorization") != f"Basic {token}":
                self.send_response(401)
                self.send_header("WWW-Authenticate", 'Basic realm="kaggle"')
                self.end_headers()
                return
        super().do_GET()

    def log_message(self, *args):
        pass


def every(folder: Path, n: int, step: int = 37, start: int = 0) -> list[Path]:
    """`n` images spread over a folder (far apart: the manifest drops near-duplicates)."""
    return sorted(folder.glob("*.jpg"))[start::step][:n]


@pytest.fixture(scope="module")
def upstream(shared, tmp_path_factory):
    """The four upstream archives on a loopback server; yields (base url, what each one holds)."""
    www = tmp_path_factory.mktemp("www")
    ds = shared / "datasets"
    held: dict[str, object] = {}
    with zipfile.ZipFile(www / "face-mask-2class.zip", "w") as zf:  # codeload of chandrikadeb7 @7e50074
        for folder in ("with_mask", "without_mask"):
            for img in every(ds / "face-mask-2class" / folder, 5):
                zf.write(img, f"Face-Mask-Detection-7e50074/dataset/{folder}/{img.name}")
        zf.writestr("Face-Mask-Detection-7e50074/README.md", "# Face Mask Detection")
    held["face-mask-2class"] = {"mask": 5, "no_mask": 5}
    with zipfile.ZipFile(www / "maskon.zip", "w") as zf:  # one folder, the label in the file name
        correct, incorrect = (
            every(ds / "maskedface-net-sample/correct", 3),
            every(ds / "maskedface-net-sample/incorrect", 6),
        )
        named = [(p, "_Mask") for p in correct] + list(
            zip(incorrect, ["_Mask_Mouth_Chin", "_Mask_Chin", "_Mask_Nose_Mouth"] * 2, strict=True)
        )
        for k, (img, suffix) in enumerate(named):
            zf.write(img, f"{MASKON}/archive/images/{k:05d}{suffix}.jpg")
            zf.writestr(f"{MASKON}/archive/annotations/{k:05d}{suffix}.xml", "<annotation/>")
    held["maskedface-net-sample"] = {"mask": 3, "incorrect": 6}
    train = ds / "face-mask-scenes-train"
    faces = 0
    for i, (commit, image_dir) in enumerate((("1178de48", "JPEGImages"), ("abd2a431", "Images"))):
        with zipfile.ZipFile(www / f"ilc-{i}.zip", "w") as zf:
            for img in every(train / "images", 3, step=211, start=100 * i):
                xml = (train / "annotations" / f"{img.stem}.xml").read_text()
                faces += xml.count("<object>")
                zf.write(img, f"{ILC.format(commit)}/{image_dir}/{img.name}")
                zf.writestr(
                    f"{ILC.format(commit)}/annotations/{img.stem}.xml",
                    xml.replace("mask_weared_incorrect", "with_incorrect_mask"),
                )
    held["face-mask-scenes-train"] = faces
    (www / "kaggle").mkdir()
    with zipfile.ZipFile(www / "kaggle" / "face-mask-detection.zip", "w") as zf:  # Kaggle: PNG images at the root
        dev = ds / "face-mask-scenes-dev"
        for k in range(4):
            _, png = cv2.imencode(".png", cv2.imread(str(dev / f"images/maksssksksss{k}.jpg")))
            zf.writestr(f"images/maksssksksss{k}.png", png.tobytes())
            zf.write(dev / f"annotations/maksssksksss{k}.xml", f"annotations/maksssksksss{k}.xml")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(www)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", held
    server.shutdown()


def run_ingest(project: Path, url: str, **env_extra: str) -> subprocess.CompletedProcess:
    project.mkdir(exist_ok=True)
    overrides = [
        f"data.sources.face-mask-2class.url={url}/face-mask-2class.zip",
        f"data.sources.maskedface-net-sample.url={url}/maskon.zip",
        f"data.sources.face-mask-scenes-train.url=[{url}/ilc-0.zip,{url}/ilc-1.zip]",
        f"scenes.source.url={url}/kaggle/face-mask-detection.zip",
    ]
    write_params(compose(overrides), project / "params.yaml")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FACEMASK_MIRROR", "KAGGLE_"))}
    env.update(FACEMASK_CACHE=str(project / "cache"), HOME=str(project), **env_extra)
    return subprocess.run(
        [sys.executable, "-m", "facemask.stages.ingest"], cwd=project, env=env, capture_output=True, text=True,
        timeout=600,
    )  # fmt: skip


def test_every_upstream_layout_ingests_like_the_mirror(upstream, tmp_path):
    url, held = upstream
    proc = run_ingest(tmp_path / "p", url, KAGGLE_USERNAME=KAGGLE_USER, KAGGLE_KEY=KAGGLE_KEY)
    assert proc.returncode == 0, proc.stderr[-3000:]
    manifest = pd.read_csv(tmp_path / "p/data/interim/manifest.csv")
    counts = manifest[manifest["kind"] == "photo"].groupby(["source", "label"]).size().to_dict()
    assert counts == {
        ("face-mask-2class", "mask"): 5, ("face-mask-2class", "no_mask"): 5,
        ("maskedface-net-sample", "mask"): 3, ("maskedface-net-sample", "incorrect"): 6,
    }  # fmt: skip
    scenes = manifest[manifest["source"] == "face-mask-scenes-train"]
    assert len(scenes) == held["face-mask-scenes-train"] and scenes["relpath"].nunique() == 6
    assert "incorrect" in set(scenes["label"])  # upstream's with_incorrect_mask is mapped
    report = json.loads((tmp_path / "p/reports/ingest.json").read_text())
    assert report["evaluation_copies"] == 0 and report["scanned"] == 5 + 5 + 9 + 6
    # the evaluation scenes came through Kaggle's auth and are read as VOC scenes
    layout = tmp_path / "p/cache/extracted/scenes-layout"
    assert sorted(p.name for p in (layout / "images").iterdir()) == [f"maksssksksss{k}.png" for k in range(4)]
    # a second run downloads nothing (pooch's cache, verified) and gives the same manifest
    again = run_ingest(tmp_path / "p", url, KAGGLE_USERNAME=KAGGLE_USER, KAGGLE_KEY=KAGGLE_KEY)
    assert again.returncode == 0 and "Downloading data from" not in again.stderr
    assert pd.read_csv(tmp_path / "p/data/interim/manifest.csv").equals(manifest)


def test_kaggle_without_a_token_is_a_clear_error_and_a_wrong_one_is_refused(upstream, tmp_path):
    url, _ = upstream
    proc = run_ingest(tmp_path / "none", url)
    assert proc.returncode == 2
    assert "KAGGLE_USERNAME and KAGGLE_KEY" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "none/data/interim/manifest.csv").exists()
    wrong = run_ingest(tmp_path / "wrong", url, KAGGLE_USERNAME=KAGGLE_USER, KAGGLE_KEY="not-the-key")
    assert wrong.returncode == 2 and "refused the credentials (401)" in wrong.stderr
    token = tmp_path / "file" / ".kaggle" / "kaggle.json"  # the token file Kaggle's own tools write
    token.parent.mkdir(parents=True)
    token.write_text(json.dumps({"username": KAGGLE_USER, "key": KAGGLE_KEY}))
    assert run_ingest(tmp_path / "file", url).returncode == 0


def test_the_configured_upstreams_are_pinned():
    """Moving refs (a branch) would change the data under the same config: every GitHub archive
    names a commit."""
    params = yaml.safe_load(yaml.safe_dump(compose()))
    urls = [
        u for s in params["data"]["sources"].values() for u in ([s["url"]] if isinstance(s["url"], str) else s["url"])
    ]
    assert urls and not [u for u in urls if "refs/heads" in u or u.endswith(("/main", "/master"))]
    assert all(u.rsplit("/", 1)[-1].isalnum() for u in urls if "codeload.github.com" in u)
