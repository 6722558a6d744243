"""Reading a PASCAL VOC scene folder: `images/*` with `annotations/<stem>.xml`, one box per face."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


class SceneError(ValueError):
    """A scene folder or annotation file is malformed; the message names the file."""


@dataclass
class Scene:
    """One annotated image: boxes (N, 4) x1, y1, x2, y2 in pixels and our label per box."""

    image: Path
    boxes: np.ndarray
    labels: list[str]
    ignored: list[str] = field(default_factory=list)  # annotated names outside the label map

    @property
    def name(self) -> str:
        return self.image.stem


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
    return Scene(image, np.asarray(boxes, dtype=np.float32).reshape(-1, 4), labels, ignored)


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
        scenes.append(read_annotation(xml, by_stem[xml.stem], label_map))
    if not scenes:
        raise SceneError(f"{notes} holds no annotation (*.xml)")
    return scenes
