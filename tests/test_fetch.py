"""Downloads against a real HTTP server on loopback: progress, checksum, cache, clear failures."""

from __future__ import annotations

import functools
import hashlib
import http.server
import threading
import zipfile

import pytest

from facemask.config import ConfigError, Source, Weights
from facemask.data import fetch


@pytest.fixture
def http_root(tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@pytest.fixture(autouse=True)
def no_mirror(monkeypatch, tmp_path):
    monkeypatch.delenv("FACEMASK_MIRROR", raising=False)
    monkeypatch.setenv("FACEMASK_CACHE", str(tmp_path / "cache"))


def test_weights_download_verified_and_cached(http_root, yunet_weights):
    root, url = http_root
    data = yunet_weights.read_bytes()
    (root / "yunet.onnx").write_bytes(data)
    digest = hashlib.sha256(data).hexdigest()
    weights = Weights(file="yunet.onnx", url=f"{url}/yunet.onnx", sha256=digest)
    path = fetch.resolve_weights(weights)
    assert path.read_bytes() == data
    (root / "yunet.onnx").unlink()  # second call must come from the cache
    assert fetch.resolve_weights(weights) == path


def test_checksum_mismatch_leaves_nothing(http_root, tmp_path):
    root, url = http_root
    (root / "w.bin").write_bytes(b"tampered")
    weights = Weights(file="w.bin", url=f"{url}/w.bin", sha256="0" * 64)
    with pytest.raises(fetch.FetchError, match="checksum mismatch"):
        fetch.resolve_weights(weights)
    assert not list((tmp_path / "cache").rglob("w.bin*"))


def test_unreachable_url_says_how_to_go_offline(http_root):
    _, url = http_root
    with pytest.raises(fetch.FetchError, match="FACEMASK_MIRROR"):
        fetch.resolve_weights(Weights(file="x.bin", url=f"{url}/missing.bin"))


def test_source_archive_is_extracted_to_its_label_root(http_root, shared):
    root, url = http_root
    images = sorted((shared / "datasets/face-mask-2class/with_mask").glob("*.jpg"))[:2]
    with zipfile.ZipFile(root / "ds.zip", "w") as zf:
        for img in images:
            zf.write(img, f"Repo-abc123/dataset/with_mask/{img.name}")
            zf.write(img, f"Repo-abc123/dataset/without_mask/{img.name}")
        zf.writestr("Repo-abc123/README.md", "readme")
    source = Source(url=f"{url}/ds.zip", mirror_dir="x", label_map={"with_mask": "mask", "without_mask": "no_mask"})
    folder = fetch.resolve_source("demo", source)
    assert folder.name == "dataset"
    assert sorted(p.name for p in (folder / "with_mask").iterdir()) == sorted(i.name for i in images)


def test_mirror_must_exist(monkeypatch, tmp_path):
    monkeypatch.setenv("FACEMASK_MIRROR", str(tmp_path / "nowhere"))
    with pytest.raises(ConfigError, match="is not a folder"):
        fetch.mirror_root()
