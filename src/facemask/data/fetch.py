"""Fetching datasets and weights: an offline mirror when configured, else a verified, cached download.

One setting decides: the environment variable ``FACEMASK_MIRROR`` names a folder laid out as
``datasets/<mirror_dir>`` and ``models/<mirror_path>`` (``../shared`` on CI). Without it, files are
downloaded by `pooch` (checksum against the configured SHA-256, cache under ``~/.cache/facemask`` or
``$FACEMASK_CACHE``, atomic write, progress bar) over a session that retries transient failures
(urllib3 ``Retry``). Nothing falls back silently: a missing mirror is an error.

Each upstream archive is turned into the mirror's layout, so the rest of the project sees one
layout per kind of source: label folders (an archive of label folders, or one folder labelled by
file-name suffix, like MaskON's MaskedFace-Net images), or VOC scenes (``images/`` +
``annotations/``, whatever the upstream folders are called).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import zipfile
from pathlib import Path

import pooch
import requests
from requests.adapters import HTTPAdapter
from tqdm import tqdm
from urllib3.util.retry import Retry

from facemask.config import ConfigError, Source, Weights
from facemask.errors import FacemaskError

log = logging.getLogger(__name__)

MIRROR_ENV = "FACEMASK_MIRROR"
CACHE_ENV = "FACEMASK_CACHE"
KAGGLE_SETTINGS = "KAGGLE_USERNAME and KAGGLE_KEY (or ~/.kaggle/kaggle.json, or $KAGGLE_CONFIG_DIR/kaggle.json)"
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}


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


def kaggle_credentials(environ=os.environ) -> tuple[str, str]:
    """(username, key) of the Kaggle API token; a ConfigError naming the settings when there is none."""
    if environ.get("KAGGLE_USERNAME") and environ.get("KAGGLE_KEY"):
        return environ["KAGGLE_USERNAME"], environ["KAGGLE_KEY"]
    token = Path(environ.get("KAGGLE_CONFIG_DIR", Path.home() / ".kaggle")).expanduser() / "kaggle.json"
    if token.is_file():
        try:
            data = json.loads(token.read_text())
            return str(data["username"]), str(data["key"])
        except (ValueError, KeyError, TypeError):
            raise ConfigError(f"{token} is not a Kaggle API token (needs username and key)") from None
    raise ConfigError(
        f"this source is on Kaggle, whose downloads need an API token: set {KAGGLE_SETTINGS} "
        f"(kaggle.com > Settings > API > Create New Token), or set {MIRROR_ENV} to an offline mirror"
    )


class RetryingDownloader:
    """A pooch downloader over one requests session that retries connection errors and 429/5xx
    answers with exponential back-off (urllib3 `Retry`); progress on a tqdm bar."""

    def __init__(self, auth: tuple[str, str] | None = None, retries: int = 4, timeout: float = 60.0):
        self.session = requests.Session()
        retry = Retry(total=retries, backoff_factor=1.0, status_forcelist=(429, 500, 502, 503, 504))
        self.session.mount("http://", HTTPAdapter(max_retries=retry))
        self.session.mount("https://", HTTPAdapter(max_retries=retry))
        self.session.auth, self.timeout = auth, timeout

    def __call__(self, url: str, output_file, pooch_obj=None) -> None:
        with self.session.get(url, stream=True, timeout=self.timeout) as resp:
            resp.raise_for_status()
            total = int(resp.headers.get("content-length", 0)) or None
            name = url.rstrip("/").rsplit("/", 1)[-1][:40]
            with open(output_file, "wb") as out, tqdm(total=total, unit="B", unit_scale=True, desc=name) as bar:
                for block in resp.iter_content(1 << 16):
                    out.write(block)
                    bar.update(len(block))


def download(url: str, dest: Path, sha256: str | None, auth: tuple[str, str] | None = None) -> Path:
    """`url` at `dest`, verified against `sha256`: a verified cached copy is reused, a changed one
    downloaded again; nothing is left behind on failure. Without a pinned digest the downloaded
    file's digest is logged (pin it)."""
    try:
        path = pooch.retrieve(
            url,
            known_hash=f"sha256:{sha256}" if sha256 else None,
            fname=dest.name,
            path=dest.parent,
            downloader=RetryingDownloader(auth),
        )
    except requests.RequestException as err:
        status = getattr(getattr(err, "response", None), "status_code", None)
        if auth is not None and status in (401, 403):
            raise FetchError(f"{url} refused the credentials ({status}): check {KAGGLE_SETTINGS}") from None
        raise FetchError(
            f"cannot download {url}: {err}. Without internet, set {MIRROR_ENV} to an offline mirror."
        ) from None
    except ValueError as err:  # pooch: the downloaded file does not match known_hash (it is removed)
        raise FetchError(f"checksum mismatch for {url}: {err}") from None
    if sha256 is None:
        log.warning("no sha256 configured for %s; it has sha256 %s (pin it)", url, sha256_of(Path(path)))
    return Path(path)


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


def _label_root(tree: Path, labels: set[str]) -> Path:
    """The folder inside an extracted archive that holds all the `labels` subfolders."""
    for folder in sorted([tree, *(p for p in tree.rglob("*") if p.is_dir())], key=lambda p: len(p.parts)):
        if labels <= {p.name for p in folder.iterdir() if p.is_dir()}:
            return folder
    raise FetchError(f"no folder under {tree} holds the label folders {sorted(labels)}")


def _link(target: Path, link: Path) -> None:
    if not link.exists():
        link.symlink_to(target.resolve())


def _fresh(name: str) -> Path:
    folder = cache_root() / "extracted" / f"{name}-layout"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    return folder


def _folders_layout(name: str, trees: list[Path], labels: set[str]) -> Path:
    """The label folders of one archive, or of several joined (the first archive's file wins)."""
    roots = [_label_root(tree, labels) for tree in trees]
    if len(roots) == 1:
        return roots[0]
    merged = _fresh(name)
    for label in sorted(labels):
        (merged / label).mkdir()
        for root in roots:
            for path in sorted((root / label).iterdir()):
                _link(path, merged / label / path.name)
    return merged


def _suffix_layout(name: str, trees: list[Path], suffixes: dict[str, str]) -> Path:
    """Label folders built from images named `<id><suffix>.<ext>` (longest suffix first)."""
    out = _fresh(name)
    by_length = sorted(suffixes, key=len, reverse=True)
    counts = dict.fromkeys(sorted(set(suffixes.values())), 0)
    for folder in counts:
        (out / folder).mkdir()
    for tree in trees:
        for path in sorted(p for p in tree.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES):
            suffix = next((s for s in by_length if path.stem.endswith(s)), None)
            if suffix is not None:
                _link(path, out / suffixes[suffix] / path.name)
                counts[suffixes[suffix]] += 1
    if not any(counts.values()):
        raise FetchError(f"no image under {trees} ends with one of the suffixes {by_length}")
    log.info("source %s: sorted by file-name suffix into %s", name, counts)
    return out


def _voc_layout(name: str, trees: list[Path]) -> Path:
    """`images/` + `annotations/` joined from every VOC file of the archives: each `*.xml` under a
    folder named annotations (any case) with the image of the same stem anywhere in its archive."""
    out = _fresh(name)
    (out / "images").mkdir()
    (out / "annotations").mkdir()
    found = 0
    for tree in trees:
        images = {p.stem: p for p in sorted(tree.rglob("*")) if p.suffix.lower() in IMAGE_SUFFIXES}
        for xml in sorted(tree.rglob("*.xml")):
            if xml.parent.name.lower() != "annotations" or xml.stem not in images:
                continue
            if not (out / "annotations" / xml.name).exists():
                _link(xml, out / "annotations" / xml.name)
                _link(images[xml.stem], out / "images" / images[xml.stem].name)
                found += 1
    if not found:
        raise FetchError(f"no annotations/*.xml with a matching image under {trees}")
    log.info("source %s: %d annotated scenes", name, found)
    return out


def resolve_source(name: str, source: Source, key: str | None = None) -> Path:
    """Local folder of a source in the mirror's layout: the mirror copy, or the downloaded archives
    (`url`, one or several) rearranged: label folders, file-name suffixes sorted into label folders
    (`suffix_folders`), or VOC scenes. `key` names the config entry in errors."""
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
    auth = kaggle_credentials() if source.auth == "kaggle" else None
    trees = []
    for i, (url, digest) in enumerate(zip(source.urls, source.checksums, strict=True)):
        part = name if len(source.urls) == 1 else f"{name}-{i}"
        archive = download(url, cache_root() / "downloads" / f"{part}.zip", digest, auth)
        trees.append(_extract(archive, cache_root() / "extracted" / part))
    if source.kind == "scenes":
        return _voc_layout(name, trees)
    if source.suffix_folders:
        return _suffix_layout(name, trees, source.suffix_folders)
    return _folders_layout(name, trees, set(source.label_map))


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
