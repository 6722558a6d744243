"""Cutting the faces of one manifest image, as the service would find them.

Faces are found and cut by `FaceFinder` (the same detection call and crop function `MaskPipeline`
serves with). Close-up photos keep their main face. In an annotated scene each annotated face takes
the detection that matches it (`boxes.match` on the detector's box mapped by `detector.box_fit`);
a face the detector misses is cut from its annotated box mapped back into the detector's convention,
and detections that overlap no annotated face become `background` crops. A reviewed alert's region
(kind `region`, `facemask.data.feedback`) is cut the same way, without background crops. The crop stage runs
`process` over every image; the benchmarks time it.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from facemask.boxes import iou_matrix, match
from facemask.config import Params
from facemask.data.feedback import KIND as REGION
from facemask.detection import Face
from facemask.imageio import ImageError, read_image
from facemask.pipeline import FaceFinder, fit_box, unfit_box


def choose_face(faces: list[Face], policy: str) -> tuple[Face | None, str]:
    """Pick the face that carries a close-up photo's label; returns (face, status)."""
    if not faces:
        return None, "no_face"
    if len(faces) == 1:
        return faces[0], "ok"
    if policy == "drop":
        return None, "multi_face"
    return max(faces, key=lambda f: f.area), "multi_face_largest"


def face_row(face: Face, status: str, **extra) -> dict:
    x1, y1, x2, y2 = (round(float(v), 1) for v in face.box)
    return {"status": status, "score": round(face.score, 4), "x1": x1, "y1": y1, "x2": x2, "y2": y2, **extra}


def photo_faces(finder: FaceFinder, image: np.ndarray, params: Params) -> list[tuple[dict, Face | None]]:
    """A close-up photo: its main confident face (or why there is none)."""
    faces = [f for f in finder.detect(image) if f.score >= params.crop.min_score]
    face, status = choose_face(faces, params.crop.multi_face)
    if face is None:
        return [({"status": status, "n_faces": len(faces)}, None)]
    return [(face_row(face, status, n_faces=len(faces)), face)]


def scene_faces(
    finder: FaceFinder, image: np.ndarray, boxes: np.ndarray, params: Params, with_background: bool = True
) -> tuple[list[tuple[dict, Face]], list[tuple[dict, Face]], int]:
    """An annotated scene: (one (row, face) per annotated box, in order; the background detections
    kept, none unless `with_background`; the count of detections that matched no annotated face)."""
    fit, cfg = params.detector.box_fit, params.crop
    faces = finder.detect(image)
    fitted = np.array([fit_box(f.box, fit) for f in faces], dtype=np.float32).reshape(-1, 4)
    pairs = match(boxes, fitted, np.array([f.score for f in faces]), cfg.match_iou)
    annotated = []
    for g, box in enumerate(boxes):
        if g in pairs:
            annotated.append((face_row(faces[pairs[g]], "matched", n_faces=len(faces)), faces[pairs[g]]))
        else:
            face = Face(unfit_box(box, fit), 0.0, None)
            annotated.append((face_row(face, "missed", n_faces=len(faces)), face))
    unmatched = [i for i in range(len(faces)) if i not in set(pairs.values())]
    background: list[tuple[dict, Face]] = []
    bg = cfg.background
    if with_background and bg.enabled and unmatched:
        overlap = iou_matrix(fitted[unmatched], boxes).max(axis=1) if len(boxes) else np.zeros(len(unmatched))
        # a scene with a confident unmatched detection is not fully boxed: its rest may be real faces too
        complete = all(faces[i].score < bg.max_score for i in unmatched)
        chosen = [i for i, o in zip(unmatched, overlap, strict=True) if complete and o < bg.max_iou]
        chosen = sorted(chosen, key=lambda i: -faces[i].score)[: bg.max_per_scene]
        background = [(face_row(faces[i], "background", n_faces=len(faces)), faces[i]) for i in chosen]
    return annotated, background, len(unmatched)


def process(finder: FaceFinder, path: Path, samples: list[dict], out_dir: Path, params: Params) -> list[dict]:
    """Detect the faces of one image and write each sample's crop; one row per sample (and per
    background crop of a scene), with `id` and the outcome."""
    try:
        image = read_image(path, params.data.max_image_pixels)
    except (ImageError, OSError) as err:
        return [{"id": s["id"], "status": "unreadable", "error": str(err)} for s in samples]
    if samples[0]["kind"] in ("scene", REGION):
        boxes = np.array([[s["x1"], s["y1"], s["x2"], s["y2"]] for s in samples], dtype=np.float32)
        # a reviewed alert's region knows one face (the rest blurred): no background from the rest
        annotated, background, false_faces = scene_faces(finder, image, boxes, params, samples[0]["kind"] == "scene")
        found = [(s["id"], row, face) for s, (row, face) in zip(samples, annotated, strict=True)]
        base = samples[0]["id"].rsplit("-f", 1)[0]
        found += [(f"{base}-b{k:02d}", row, face) for k, (row, face) in enumerate(background)]
        found[0][1]["false_faces"] = false_faces
    else:
        found = [(samples[0]["id"], row, face) for row, face in photo_faces(finder, image, params)]
    rows = []
    faces = [f for _, _, f in found if f is not None]
    crops = iter(finder.crop(image, faces))
    for sample_id, row, face in found:
        if face is not None:
            name = f"{sample_id}.jpg"
            quality = [cv2.IMWRITE_JPEG_QUALITY, params.crop.jpeg_quality]
            if not cv2.imwrite(str(out_dir / name), next(crops), quality):
                row = {**row, "status": "write_failed"}
            else:
                row = {**row, "crop": name}
        rows.append({"id": sample_id, **row})
    return rows
