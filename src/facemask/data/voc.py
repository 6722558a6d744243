"""PASCAL VOC scene folders: `images/*` with `annotations/<stem>.xml`, one box per face; read for
training and evaluation, written for the scenes reviewers make of served alerts."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from facemask.config import Scenes
from facemask.data.fetch import resolve_source
from facemask.errors import FacemaskError
from facemask.imageio import ImageError, image_file_size


class SceneError(FacemaskError, ValueError):
    """A scene folder or annotation file is malformed; the message names the file."""


@dataclass
class Scene:
    """One annotated image: boxes (N, 4) x1, y1, x2, y2 in pixels and our label per box."""

    image: Path
    boxes: np.ndarray
    labels: list[str]
    ignored: list[str] = field(default_factory=list)  # annotated names outside the label map
    size: tuple[int, int] | None = None  # (width, height) the annotation was drawn on

    @property
    def name(self) -> str:
        return self.image.stem

    def scaled_to(self, width: int, height: int) -> Scene:
        """The same scene with boxes in the pixels of an image of `width` x `height` (an image
        resized after annotation, e.g. a mirror capped at 960 px); itself when sizes agree."""
        if self.size is None or self.size == (width, height):
            return self
        sx, sy = width / self.size[0], height / self.size[1]
        boxes = self.boxes * np.array([sx, sy, sx, sy], dtype=np.float32)
        return Scene(self.image, boxes, self.labels, self.ignored, (width, height))


def _number(obj: ET.Element, tag: str, path: Path) -> float:
    node = obj.find(f"bndbox/{tag}")
    try:
        return float(node.text)  # type: ignore[union-attr, arg-type]
    except (AttributeError, TypeError, ValueError):
        raise SceneError(f"{path}: an object has no numeric bndbox/{tag}") from None


def read_annotation(path: Path, image: Path, label_map: dict[str, str]) -> Scene:
    """One VOC XML file; names outside `label_map` are counted in `ignored`, not silently kept."""
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as err:
        raise SceneError(f"{path}: not valid XML ({err})") from None
    size = None
    if root.find("size") is not None:
        try:
            size = (int(float(root.findtext("size/width"))), int(float(root.findtext("size/height"))))  # type: ignore[arg-type]
        except (TypeError, ValueError):
            raise SceneError(f"{path}: size/width and size/height must be numbers") from None
        if size[0] <= 0 or size[1] <= 0:
            size = None  # some tools write 0x0: the boxes are then taken as drawn on the image itself
    boxes, labels, ignored = [], [], []
    for obj in root.iter("object"):
        name = (obj.findtext("name") or "").strip()
        if name not in label_map:
            ignored.append(name)
            continue
        x1, y1, x2, y2 = (_number(obj, t, path) for t in ("xmin", "ymin", "xmax", "ymax"))
        if x2 <= x1 or y2 <= y1:
            raise SceneError(f"{path}: empty box {x1, y1, x2, y2} for {name!r}")
        boxes.append((x1, y1, x2, y2))
        labels.append(label_map[name])
    return Scene(image, np.asarray(boxes, dtype=np.float32).reshape(-1, 4), labels, ignored, size)


def annotation_xml(
    filename: str, width: int, height: int, objects: list[tuple[str, tuple[float, ...]]],
    source: dict[str, str] | None = None, extra: dict[str, dict[str, str]] | None = None,
) -> bytes:  # fmt: skip
    """One VOC annotation: the image's name and size, an `object` per (name, x1 y1 x2 y2 box), a
    `source` block and any further blocks of text fields (e.g. `reviewed`: who and when)."""
    root = ET.Element("annotation")
    ET.SubElement(root, "folder").text = "images"
    ET.SubElement(root, "filename").text = filename
    for tag, fields in (("source", source or {}), *(extra or {}).items()):
        block = ET.SubElement(root, tag)
        for key, value in fields.items():
            ET.SubElement(block, key).text = str(value)
    size = ET.SubElement(root, "size")
    for key, value in (("width", width), ("height", height), ("depth", 3)):
        ET.SubElement(size, key).text = str(value)
    for name, box in objects:
        obj = ET.SubElement(root, "object")
        ET.SubElement(obj, "name").text = name
        for key, value in (("pose", "Unspecified"), ("truncated", 0), ("difficult", 0)):
            ET.SubElement(obj, key).text = str(value)
        bndbox = ET.SubElement(obj, "bndbox")
        for key, value in zip(("xmin", "ymin", "xmax", "ymax"), box, strict=True):
            ET.SubElement(bndbox, key).text = f"{value:g}"
    ET.indent(root)
    return ET.tostring(root, encoding="utf-8", xml_declaration=True) + b"\n"


def load_scenes(folder: Path, label_map: dict[str, str]) -> list[Scene]:
    """Every image of `folder/images` that has an annotation, sorted by name."""
    images, notes = Path(folder) / "images", Path(folder) / "annotations"
    if not images.is_dir() or not notes.is_dir():
        raise SceneError(f"{folder} is not a VOC scene folder: it needs images/ and annotations/")
    by_stem = {p.stem: p for p in images.iterdir() if p.suffix.lower() in {".jpg", ".jpeg", ".png", ".bmp"}}
    scenes = []
    for xml in sorted(notes.glob("*.xml"), key=lambda p: (len(p.stem), p.stem)):
        if xml.stem not in by_stem:
            raise SceneError(f"{xml}: no image {xml.stem}.* in {images}")
        scene = read_annotation(xml, by_stem[xml.stem], label_map)
        try:
            scenes.append(scene.scaled_to(*image_file_size(scene.image)))
        except ImageError as err:
            raise SceneError(str(err)) from None
    if not scenes:
        raise SceneError(f"{notes} holds no annotation (*.xml)")
    return scenes


def evaluation_folder(cfg: Scenes) -> Path:
    """The evaluation scenes: `scenes.dir` when set, else the mirror copy or verified download of
    `scenes.source`."""
    if cfg.dir is not None:
        if not Path(cfg.dir).is_dir():
            raise FileNotFoundError(f"scenes.dir: {cfg.dir} is not a folder")
        return Path(cfg.dir)
    return resolve_source("scenes", cfg.source, key="scenes.source")
