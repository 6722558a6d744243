"""Stage 2, crop: find the faces of every manifest image as the service does and write their crops.

Faces are found and cut by `FaceFinder` (the same detection call and crop function `MaskPipeline`
serves with). Close-up photos keep their main face. Annotated scenes are detected once; each
annotated face takes the detection that matches it (IoU of the detector's box mapped by
`detector.box_fit`), and a face the detector misses is cut from its annotated box mapped back into
the detector's convention. Detections that overlap no annotated face become `background` crops.

Outputs: ``data/crops/<id>.jpg``, ``data/interim/crops.csv`` (one row per sample with the detection
outcome, score and face box) and ``reports/crop.json`` (detection rate per label, split and source;
the scene report: matched, missed by the detector, false faces).
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import torch
from torchvision.ops import box_iou
from tqdm import tqdm

from facemask.config import Params
from facemask.data.fetch import resolve_weights
from facemask.detection import Face
from facemask.imageio import ImageError, read_image
from facemask.pipeline import FaceFinder, fit_box, unfit_box
from facemask.scenes.metrics import match
from facemask.stages._runner import run_stage, write_json

log = logging.getLogger("facemask.crop")
FOUND = ("ok", "multi_face_largest", "matched", "missed")

_worker: dict = {}


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
    finder: FaceFinder, image: np.ndarray, boxes: np.ndarray, params: Params
) -> tuple[list[tuple[dict, Face]], list[tuple[dict, Face]], int]:
    """An annotated scene: (one (row, face) per annotated box, in order; the background detections
    kept; the count of detections that matched no annotated face)."""
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
    if bg.enabled and unmatched:
        if len(boxes):
            iou = box_iou(torch.as_tensor(fitted[unmatched]), torch.as_tensor(boxes, dtype=torch.float32))
            overlap = iou.max(dim=1).values.numpy()
        else:
            overlap = np.zeros(len(unmatched))
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
    if samples[0]["kind"] == "scene":
        boxes = np.array([[s["x1"], s["y1"], s["x2"], s["y2"]] for s in samples], dtype=np.float32)
        annotated, background, false_faces = scene_faces(finder, image, boxes, params)
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


def _init_worker(params: Params, weights: Path | None, out_dir: Path) -> None:
    cv2.setNumThreads(1)
    torch.set_num_threads(1)
    _worker.update(params=params, weights=weights, out_dir=out_dir, finder=None)


def _work(item: tuple[str, list[dict]]) -> list[dict]:
    path, samples = item
    params: Params = _worker["params"]
    if _worker["finder"] is None:  # built lazily so that a failure reaches the parent, not a respawn loop
        from facemask.detection import build_detector

        _worker["finder"] = FaceFinder.from_params(params, build_detector(params.detector, _worker["weights"]))
    return process(_worker["finder"], Path(path), samples, _worker["out_dir"], params)


def run_all(params: Params, items: list[tuple[str, list[dict]]], out_dir: Path) -> Iterator[list[dict]]:
    """Process items (one per image) over `crop.workers` processes (in-process when 1), with a progress bar."""
    weights = resolve_weights(params.detector.weights) if params.detector.name != "retinaface" else None
    workers = min(params.crop.workers, max(1, len(items)))
    bar = dict(total=len(items), desc=f"crop faces ({params.detector.name})", unit="img")
    if workers == 1:
        _init_worker(params, weights, out_dir)
        yield from tqdm(map(_work, items), **bar)
        return
    ctx = mp.get_context("spawn")
    with ctx.Pool(workers, initializer=_init_worker, initargs=(params, weights, out_dir)) as pool:
        yield from tqdm(pool.imap(_work, items, chunksize=8), **bar)


def detection_report(rows: pd.DataFrame) -> dict:
    """Detection rate (a crop was written) overall, per label, split and source; the scene report."""
    faces = rows[rows["status"] != "background"]
    found = faces["status"].isin(FOUND)
    detected = faces[faces["status"].isin(["ok", "multi_face_largest", "matched"])]

    def rate(mask: pd.Series) -> float:
        return round(float(found[mask].mean()), 4) if mask.any() else 0.0

    report = {
        "samples": len(faces),
        "crops": int(found.sum()),
        "detection_rate": rate(pd.Series(True, index=faces.index)),
        "detection_rate_per_label": {lb: rate(faces["label"] == lb) for lb in sorted(faces["label"].unique())},
        "detection_rate_per_split": {s: rate(faces["split"] == s) for s in sorted(faces["split"].unique())},
        "detection_rate_per_source": {s: rate(faces["source"] == s) for s in sorted(faces["source"].unique())},
        "status_counts": {k: int(v) for k, v in rows["status"].value_counts().items()},
        "mean_score": round(float(detected["score"].mean()), 4) if len(detected) else 0.0,
    }
    scenes = faces[faces["kind"] == "scene"]
    if len(scenes):
        report["scenes"] = {
            "faces": len(scenes),
            "matched": int((scenes["status"] == "matched").sum()),
            "missed_by_detector": int((scenes["status"] == "missed").sum()),
            "detector_recall": round(float((scenes["status"] == "matched").mean()), 4),
            "missed_per_label": {
                str(k): int(v) for k, v in scenes.loc[scenes["status"] == "missed", "label"].value_counts().items()
            },
            "false_faces": int(rows["false_faces"].fillna(0).sum()) if "false_faces" in rows else 0,
            "background_crops": int((rows["status"] == "background").sum()),
        }
    return report


def crop(params: Params) -> None:
    manifest = pd.read_csv(params.paths.interim / "manifest.csv")
    if "kind" not in manifest:
        manifest["kind"] = "photo"
    out_dir = params.paths.crops
    tmp_dir = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp_dir, ignore_errors=True)
    tmp_dir.mkdir(parents=True)
    items = []
    for (source, relpath), part in manifest.groupby(["source", "relpath"], sort=True):
        path = str(params.paths.raw / source / relpath)
        items.append((path, part.sort_values("id").to_dict("records")))
    results = pd.DataFrame([row for rows in run_all(params, items, tmp_dir) for row in rows])
    meta = manifest[["id", "label", "split", "source", "kind"]]
    rows = meta.merge(results, on="id", how="left")
    background = results[results["status"] == "background"].copy()
    if len(background):
        scene_of = manifest.assign(base=manifest["id"].str.rsplit("-f", n=1).str[0]).drop_duplicates("base")
        scene_of = scene_of.set_index("base")[["split", "source"]]
        base = background["id"].str.rsplit("-b", n=1).str[0]
        background["split"] = scene_of.loc[base, "split"].to_numpy()
        background["source"] = scene_of.loc[base, "source"].to_numpy()
        background["label"], background["kind"] = params.crop.background.label, "scene"
        rows = pd.concat([rows, background[rows.columns.intersection(background.columns)]], ignore_index=True)
    rows["crop"] = rows["crop"].fillna("") if "crop" in rows else ""
    shutil.rmtree(out_dir, ignore_errors=True)
    tmp_dir.replace(out_dir)
    rows.to_csv(params.paths.interim / "crops.csv", index=False)
    report = detection_report(rows)
    write_json(params.paths.reports / "crop.json", report)
    log.info("crops: %d of %d samples (rate %.3f)", report["crops"], report["samples"], report["detection_rate"])
    log.info("detection rate per source: %s", report["detection_rate_per_source"])
    if "scenes" in report:
        log.info("scenes: %s", report["scenes"])


def main(argv: list[str] | None = None) -> int:
    return run_stage("crop", crop, argv)


if __name__ == "__main__":
    sys.exit(main())
