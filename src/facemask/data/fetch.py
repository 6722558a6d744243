"""Fetching datasets and weights: an offline mirror when configured, else a verified, cached download.

One setting decides: the environment variable ``FACEMASK_MIRROR`` names a folder laid out as
``datasets/<mirror_dir>`` and ``models/<mirror_path>`` (``../shared`` on CI). Without it, files are
downloaded over HTTPS with a progress bar into ``~/.cache/facemask`` (or ``$FACEMASK_CACHE``) and
checked against their configured SHA-256. Nothing falls back silently: a missing mirror is an error.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
import zipfile
from pathlib import Path

import requests
from tqdm import tqdm

from facemask.config import ConfigError, Source, Weights
from facemask.errors import FacemaskError

log = logging.getLogger(__name__)

MIRROR_ENV = "FACEMASK_MIRROR"
CACHE_ENV = "FACEMASK_CACHE"


class FetchError(FacemaskError, RuntimeError):
    """A download failed or its checksum did not match."""


def mirror_root() -> Path | None:
    value = os.environ.get(MIRROR_ENV)
    if not value:
        return None
    root = Path(value).expanduser()
    if not root.is_dir():
        raise ConfigError(f"{MIRROR_ENV}={value} is not a folder")
    return root


def cache_root() -> Path:
    return Path(os.environ.get(CACHE_ENV, Path.home() / ".cache" / "facemask")).expanduser()


def sha256_of(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def download(url: str, dest: Path, sha256: str | None, timeout: float = 60.0) -> Path:
    """Download `url` to `dest` (atomically, with progress), verify `sha256`; reuse a verified cache."""
    if dest.is_file():
        if sha256 is None or sha256_of(dest) == sha256:
            return dest
        log.warning("cached %s does not match its checksum; downloading again", dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        with requests.get(url, stream=True, timeout=timeout) as resp:
            resp.raise_for_status()
            total = int(resp.headers.get("content-length", 0)) or None
            with (
                tempfile.NamedTemporaryFile(dir=dest.parent, delete=False, suffix=".part") as tmp,
                tqdm(total=total, unit="B", unit_scale=True, desc=f"download {dest.name}") as bar,
            ):
                for block in resp.iter_content(1 << 16):
                    tmp.write(block)
                    bar.update(len(block))
    except requests.RequestException as err:
        raise FetchError(
            f"cannot download {url}: {err}. Without internet, set {MIRROR_ENV} to an offline mirror."
        ) from err
    part = Path(tmp.name)
    digest = sha256_of(part)
    if sha256 is not None and digest != sha256:
        part.unlink(missing_ok=True)
        raise FetchError(f"checksum mismatch for {url}: expected {sha256}, got {digest}")
    if sha256 is None:
        log.warning("no sha256 configured for %s; downloaded file has sha256 %s (pin it)", url, digest)
    part.replace(dest)
    return dest


def _label_root(tree: Path, labels: set[str]) -> Path:
    """The folder inside an extracted archive that holds all the `labels` subfolders (for scenes:
    `images` and `annotations`)."""
    for folder in sorted([tree, *(p for p in tree.rglob("*") if p.is_dir())], key=lambda p: len(p.parts)):
        if labels <= {p.name for p in folder.iterdir() if p.is_dir()}:
            return folder
    raise FetchError(f"no folder under {tree} holds the label folders {sorted(labels)}")


def _extract(archive: Path, extracted: Path) -> Path:
    """Unpack a zip archive once into `extracted` (atomically)."""
    if not extracted.is_dir():
        extracted.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=extracted.parent, prefix=f".{extracted.name}-"))
        try:
            with zipfile.ZipFile(archive) as zf:
                zf.extractall(tmp)
        except zipfile.BadZipFile as err:
            shutil.rmtree(tmp, ignore_errors=True)
            raise FetchError(f"{archive} is not a zip archive: {err}") from err
        tmp.replace(extracted)
    return extracted


def _merge(name: str, roots: list[Path], markers: set[str]) -> Path:
    """One folder of links joining the `markers` subfolders of several extracted archives (the
    branches of a scene set); a file name present twice keeps the first archive's copy."""
    merged = cache_root() / "extracted" / f"{name}-merged"
    shutil.rmtree(merged, ignore_errors=True)
    for marker in sorted(markers):
        (merged / marker).mkdir(parents=True)
        for root in roots:
            for path in sorted((root / marker).iterdir()):
                link = merged / marker / path.name
                if not link.exists():
                    link.symlink_to(path.resolve())
    return merged


def resolve_source(name: str, source: Source, key: str | None = None, markers: set[str] | None = None) -> Path:
    """Local folder of a source: the mirror copy, or the folder of the extracted download that holds
    the `markers` subfolders (default: one per `label_map` key; `images` and `annotations` for
    scenes). Several urls are downloaded each and merged. `key` names the config entry in errors."""
    key = key or f"data.sources.{name}"
    mirror = mirror_root()
    if mirror is not None:
        folder = mirror / "datasets" / source.mirror_dir
        if not folder.is_dir():
            raise ConfigError(f"{key}.mirror_dir: {folder} does not exist in {MIRROR_ENV}={mirror}")
        log.info("source %s: offline mirror %s", name, folder)
        return folder
    if not source.urls:
        raise ConfigError(f"{key}.url is empty and {MIRROR_ENV} is not set")
    if markers is None:
        markers = {"images", "annotations"} if source.kind == "scenes" else set(source.label_map)
    roots = []
    for i, (url, digest) in enumerate(zip(source.urls, source.checksums, strict=True)):
        part = name if len(source.urls) == 1 else f"{name}-{i}"
        archive = download(url, cache_root() / "downloads" / f"{part}.zip", digest)
        roots.append(_label_root(_extract(archive, cache_root() / "extracted" / part), markers))
    return roots[0] if len(roots) == 1 else _merge(name, roots, markers)


def resolve_weights(weights: Weights, key: str = "detector.weights") -> Path:
    """Local path of a weights file: its own `path`, else the mirror copy, else a verified cached download."""
    if weights.path:
        path = Path(weights.path)
        if not path.is_file():
            raise ConfigError(f"{key}.path: {path} does not exist (a pipeline output? run `dvc repro`)")
        return path
    mirror = mirror_root()
    if mirror is not None and weights.mirror_path:
        path = mirror / "models" / weights.mirror_path
        if not path.is_file():
            raise ConfigError(f"{key}.mirror_path: {path} does not exist in {MIRROR_ENV}={mirror}")
        if weights.sha256 and sha256_of(path) != weights.sha256:
            raise FetchError(f"{path} does not match {key}.sha256")
        return path
    if not weights.url:
        raise ConfigError(f"{key}.url is empty and no mirror copy is configured")
    return download(weights.url, cache_root() / "weights" / weights.file, weights.sha256)
