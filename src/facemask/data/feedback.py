"""Reviewed alerts as training data: the folder a service writes (`stream.feedback`), pulled into
the project (`paths.feedback`, the `feedback` stage; from the folder, or from the running service
over HTTP) and read by the ingest stage as one more scene source.

A reviewed alert is a PASCAL VOC scene of the region kept around the alert's face (that face sharp,
every other face blurred). Its one object is the reviewed face, named with its right class, or
`not_a_face` for a detection that was no face (a sample of the classifier's rejection class). Only
that face is known in the region, so its rows are of kind `region`: the crop stage cuts that face
and takes no background from the rest, and the detector does not train on them.

Each scene's split is drawn from a digest of its image, so a scene keeps its split however many
corrections follow it, and the other sources' manifest and splits stay exactly as they were.
"""

from __future__ import annotations

import logging
import re
import tarfile
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

import requests

from facemask.atomic_files import write_atomic
from facemask.data.voc import SceneError, read_annotation
from facemask.errors import FacemaskError
from facemask.imageio import ImageError, image_size

log = logging.getLogger(__name__)

SOURCE = "feedback"  # the manifest's `source` of reviewed alerts
KIND = "region"  # the manifest's `kind` of their faces
NOT_A_FACE = "not_a_face"  # the object name (and verdict) of a detection that was no face
VERDICTS = ("right", "wrong_class", NOT_A_FACE)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
ARCHIVE_ROUTE = "/events/reviewed"  # a running service's stored verdicts, one gzipped tar
MEMBER = re.compile(r"(images|annotations)/[\w.-]+")  # what such an archive may hold


class FeedbackError(FacemaskError, ValueError):
    """A feedback folder that cannot be pulled (missing, or not a folder of reviewed scenes)."""


def label_map(labels: list[str], background: str) -> dict[str, str]:
    """Annotation names -> our labels: the face classes as they are, `not_a_face` the rejection class."""
    return {**{label: label for label in labels}, NOT_A_FACE: background}


def split_of(sha256: str, val: float, test: float) -> str:
    """The split of a reviewed scene, from its image's digest: the same every time it is read."""
    u = int(sha256[:16], 16) / float(1 << 64)
    return "test" if u < test else "val" if u < test + val else "train"


def scene_image(folder: Path, stem: str) -> Path | None:
    return next((p for s in IMAGE_SUFFIXES if (p := folder / "images" / f"{stem}{s}").is_file()), None)


def check_scene(annotation: Path, image: Path, names: dict[str, str], max_pixels: int) -> str:
    """The verdict of one reviewed scene, or SceneError / ImageError saying what is wrong with it:
    a `reviewed` block with a known verdict, one object of a known name, its box inside the image."""
    scene = read_annotation(annotation, image, names)
    verdict = ET.parse(annotation).getroot().findtext("reviewed/verdict")
    if verdict not in VERDICTS:
        raise SceneError(f"{annotation}: no reviewed/verdict (one of {', '.join(VERDICTS)}); not a reviewed alert")
    if scene.ignored:
        raise SceneError(f"{annotation}: object {scene.ignored[0]!r} is not a class (one of {', '.join(names)})")
    if len(scene.labels) != 1:
        raise SceneError(f"{annotation}: {len(scene.labels)} objects; a reviewed alert has one")
    try:
        width, height = image_size(image.read_bytes())
    except ImageError as err:
        raise ImageError(f"{image}: {err}") from None
    if width * height > max_pixels:
        raise ImageError(f"{image}: {width}x{height} is above data.max_image_pixels ({max_pixels})")
    if scene.size is not None and scene.size != (width, height):
        raise SceneError(f"{annotation}: drawn on {scene.size[0]}x{scene.size[1]}, the image is {width}x{height}")
    x1, y1, x2, y2 = scene.boxes[0].tolist()
    if not (0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height):
        raise SceneError(f"{annotation}: box {[x1, y1, x2, y2]} is not inside the {width}x{height} image")
    return verdict


def download(url: str, dest: Path, api_key: str | None) -> Path:
    """A running service's reviewed alerts (`GET <url>/events/reviewed`, behind its API key),
    unpacked into `dest/reviewed`: a folder `pull` takes. FeedbackError when the service does not
    answer, refuses, or sends anything but images/ and annotations/ files."""
    address = url.rstrip("/") + ARCHIVE_ROUTE
    try:
        resp = requests.get(address, headers={"X-API-Key": api_key} if api_key else {}, stream=True, timeout=(10, 300))
    except requests.RequestException as err:
        raise FeedbackError(f"{address}: no answer ({type(err).__name__}); is the service running there?") from None
    if resp.status_code != 200:
        hint = " (set FACEMASK_API_KEY to one of the service's keys)" if resp.status_code == 401 else ""
        raise FeedbackError(f"{address} answered {resp.status_code}{hint}: {resp.text[:300]}")
    archive = Path(dest) / "reviewed.tar.gz"
    with archive.open("wb") as fh:
        for block in resp.iter_content(1 << 20):
            fh.write(block)
    folder = Path(dest) / "reviewed"
    try:
        with tarfile.open(archive, "r:gz") as tar:
            odd = [m.name for m in tar.getmembers() if not (m.isfile() and MEMBER.fullmatch(m.name))]
            if odd:
                raise FeedbackError(f"{address} sent {odd[0]!r}: not a reviewed alert's image or annotation")
            tar.extractall(folder, filter="data")
    except (tarfile.TarError, EOFError, OSError) as err:
        raise FeedbackError(f"{address} sent no readable archive ({err})") from None
    for sub in ("images", "annotations"):  # a service with no verdict yet sends an empty archive
        (folder / sub).mkdir(parents=True, exist_ok=True)
    return folder


@dataclass
class PullReport:
    """What a pull took from a service's feedback folder."""

    source: str = ""
    found: int = 0
    added: int = 0
    replaced: int = 0  # a later verdict on an event pulled before
    unchanged: int = 0
    refused: list[dict[str, str]] = field(default_factory=list)  # {"scene", "reason"}: nothing written
    verdicts: dict[str, int] = field(default_factory=dict)
    total: int = 0  # reviewed scenes in the project's folder after the pull


def _same(a: Path, b: Path) -> bool:
    return b.is_file() and a.stat().st_size == b.stat().st_size and a.read_bytes() == b.read_bytes()


def pull(source: Path, dest: Path, names: dict[str, str], max_pixels: int) -> PullReport:
    """Copy the reviewed scenes of `source` (a service's feedback folder) into `dest`: each one
    checked first (`check_scene`), written image first then annotation; a scene that fails a check is
    refused and reported, and nothing of it is written. Scenes already pulled are kept."""
    source, dest = Path(source), Path(dest)
    if not (source / "annotations").is_dir() or not (source / "images").is_dir():
        raise FeedbackError(
            f"{source} is not a feedback folder: it needs images/ and annotations/ (a service writes them "
            "under stream.feedback.dir, or `feedback` beside its event file, once a reviewer judges an alert)"
        )
    if source.resolve() == dest.resolve():
        raise FeedbackError(f"{source} is the project's own feedback folder; pull from the service's")
    report = PullReport(source=str(source))
    for folder in ("images", "annotations"):
        (dest / folder).mkdir(parents=True, exist_ok=True)
    for annotation in sorted((source / "annotations").glob("*.xml")):
        report.found += 1
        image = scene_image(source, annotation.stem)
        try:
            if image is None:
                raise SceneError(f"{annotation}: no image {annotation.stem}.jpg in {source / 'images'}")
            verdict = check_scene(annotation, image, names, max_pixels)
        except (SceneError, ImageError, OSError, ET.ParseError) as err:
            report.refused.append({"scene": annotation.stem, "reason": str(err)})
            log.warning("refused %s: %s", annotation.name, err)
            continue
        report.verdicts[verdict] = report.verdicts.get(verdict, 0) + 1
        target_image, target_xml = dest / "images" / image.name, dest / "annotations" / annotation.name
        if _same(image, target_image) and _same(annotation, target_xml):
            report.unchanged += 1
            continue
        existed = target_xml.is_file()
        stale = scene_image(dest, annotation.stem)  # a replaced scene may come with another image type
        if stale is not None and stale.name != image.name:
            stale.unlink()
        write_atomic(target_image, image.read_bytes())  # the image first: an annotation always has its image
        write_atomic(target_xml, annotation.read_bytes())
        report.replaced += existed
        report.added += not existed
    report.total = len(list((dest / "annotations").glob("*.xml")))
    return report
