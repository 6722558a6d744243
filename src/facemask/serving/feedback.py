"""Reviewers' verdicts on served alerts, stored as training data.

A verdict on an alert's face (right, wrong class and which one, or not a face) turns the region kept
for review (`stream.feedback`: the face sharp, every other face blurred) into a PASCAL VOC scene in
the feedback folder: ``images/<event id>.jpg`` and ``annotations/<event id>.xml``, the face's box
named with its right class (or `not_a_face`), and who judged it and when in its ``reviewed`` block.
`make retrain` pulls the folder into the pipeline as one more scene source (`facemask.data.feedback`).
A later verdict on the same event replaces it.
"""

from __future__ import annotations

import json
import math
import tarfile
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from facemask.atomic_files import write_atomic
from facemask.data.feedback import NOT_A_FACE, VERDICTS, scene_image
from facemask.data.voc import annotation_xml
from facemask.errors import FacemaskError

SOURCE = "facemask feedback"  # the annotations' source/database: a reviewed alert
MAX_REVIEWER = 64


class FeedbackOff(FacemaskError, PermissionError):
    """This deployment keeps no pixels for review (`stream.feedback.enabled` is false)."""


class BadReview(FacemaskError, ValueError):
    """A verdict that cannot be stored: the message says which field and why."""


@dataclass(frozen=True)
class Review:
    """One reviewer's verdict on an alert's face. `label`: the right class (wrong_class only);
    `box`: x1, y1, x2, y2 in the region image's pixels when the face's box needs correcting."""

    verdict: str
    label: str | None = None
    box: tuple[float, float, float, float] | None = None
    reviewer: str | None = None
    key_id: str | None = None  # which API key sent it (a digest, never the key)

    def checked(self, labels: list[str], served: str) -> Review:
        """Itself, or BadReview naming what is wrong (before anything is written)."""
        if self.verdict not in VERDICTS:
            raise BadReview(f"verdict {self.verdict!r}: one of {', '.join(VERDICTS)}")
        if self.verdict == "wrong_class":
            if self.label not in labels:
                raise BadReview(f"label {self.label!r} is not a class: one of {', '.join(labels)}")
            if self.label == served:
                raise BadReview(f"the alert was served as {served!r}: that verdict is `right`")
        elif self.label is not None:
            raise BadReview(f"a label goes with the verdict wrong_class only, not {self.verdict}")
        if self.reviewer is not None and (
            not self.reviewer.strip() or len(self.reviewer) > MAX_REVIEWER or not self.reviewer.isprintable()
        ):
            raise BadReview(f"reviewer: a name of 1-{MAX_REVIEWER} printable characters")
        return self

    def face_box(self, stored: list[float], width: int, height: int) -> list[float]:
        """The box to annotate: the corrected one if given (it must lie inside the region image),
        else the one the detector found."""
        if self.box is None:
            return list(stored)
        box = list(self.box)
        if len(box) != 4 or not all(isinstance(v, int | float) and math.isfinite(v) for v in box):
            raise BadReview(f"box {self.box!r}: four numbers x1, y1, x2, y2")
        x1, y1, x2, y2 = box
        if not (0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height):
            raise BadReview(f"box {box} is not a box inside the region image (0, 0, {width}, {height})")
        return box


def scene_files(folder: Path, event_id: str) -> tuple[Path, Path]:
    """The image and the annotation an alert's verdict is stored in."""
    return Path(folder, "images", f"{event_id}.jpg"), Path(folder, "annotations", f"{event_id}.xml")


def store(folder: Path, event: dict, region: Path, review: Review, labels: list[str]) -> dict:
    """The verdict on `event` as a VOC scene of its `region` image (from `region.json`: the face's
    box and the region's size); nothing is written when the verdict is refused."""
    served = event["class"]
    review = review.checked(labels, served)
    about = json.loads(region.with_suffix(".json").read_text(encoding="utf-8"))
    width, height = int(about["width"]), int(about["height"])
    box = review.face_box(about["box"], width, height)
    label = {"right": served, "wrong_class": review.label, NOT_A_FACE: None}[review.verdict]
    at = datetime.now(UTC).isoformat(timespec="seconds")
    source = {"database": SOURCE, "camera": event["camera"], "event": event["id"], "served": served,
              "alert_time": event["time"], "frame_box": " ".join(f"{v:g}" for v in about["frame_box"])}  # fmt: skip
    reviewed = {"verdict": review.verdict, "by": review.reviewer or "", "key": review.key_id or "", "at": at}
    xml = annotation_xml(f"{event['id']}.jpg", width, height, [(label or NOT_A_FACE, box)], source,
                         {"reviewed": reviewed})  # fmt: skip
    image, annotation = scene_files(folder, event["id"])
    replaced = annotation.is_file()
    write_atomic(image, region.read_bytes())  # the image first: an annotation always has its image
    write_atomic(annotation, xml)
    return {"event": event["id"], "verdict": review.verdict, "label": label, "box": box, "reviewed_at": at,
            "reviewer": review.reviewer, "replaced": replaced,
            "scene": {"image": str(image), "annotation": str(annotation)}}  # fmt: skip


def stored_verdict(folder: Path, event_id: str) -> dict | None:
    """The verdict stored for an alert (verdict, label, by, at), or None."""
    _, annotation = scene_files(folder, event_id)
    try:
        root = ET.parse(annotation).getroot()
    except (OSError, ET.ParseError):
        return None
    verdict, name = root.findtext("reviewed/verdict"), root.findtext("object/name")
    return {"verdict": verdict, "label": None if verdict == NOT_A_FACE else name,
            "by": root.findtext("reviewed/by") or None, "at": root.findtext("reviewed/at")}  # fmt: skip


def archive(folder: Path, out: Path) -> int:
    """The reviewed scenes of `folder` (each annotation with its image, the folder's layout) as a
    gzipped tar written to `out`: what `make retrain FROM=<the service's URL>` downloads. How many."""
    count = 0
    with tarfile.open(out, "w:gz") as tar:
        for annotation in sorted(Path(folder, "annotations").glob("*.xml")):
            image = scene_image(Path(folder), annotation.stem)
            if image is None:  # an annotation is written after its image: none yet, or swept
                continue
            tar.add(image, arcname=f"images/{image.name}")
            tar.add(annotation, arcname=f"annotations/{annotation.name}")
            count += 1
    return count
