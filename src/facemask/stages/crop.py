"""Stage 2, crop: detect the face in every manifest image and write an aligned crop.

Outputs: ``data/crops/<id>.jpg``, ``data/interim/crops.csv`` (one row per manifest image with the
detection outcome, score and face box) and ``reports/crop.json`` (detection rate per label/split).
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
from tqdm import tqdm

from facemask.config import Crop, Params
from facemask.data.fetch import resolve_weights
from facemask.detection import Face, FaceDetector, build_detector
from facemask.detection.align import crop_face
from facemask.imageio import ImageError, read_image
from facemask.stages._runner import run_stage, write_json

log = logging.getLogger("facemask.crop")

_worker: dict = {}


def prepare(image: np.ndarray, cfg: Crop) -> tuple[np.ndarray, float, tuple[float, float]]:
    """Upscale small images and pad every side so tight face photos keep context for the detector.

    Returns the prepared image, the scale applied and the (x, y) offset of the original in it.
    """
    h, w = image.shape[:2]
    scale = max(1.0, cfg.min_side / max(h, w))
    if scale > 1.0:
        image = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_CUBIC)
    pad = round(cfg.pad * max(image.shape[:2]))
    if pad:
        image = cv2.copyMakeBorder(image, pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=(0, 0, 0))
    return image, scale, (float(pad), float(pad))


def choose_face(faces: list[Face], policy: str) -> tuple[Face | None, str]:
    """Pick the face that carries the image's label; returns (face, status)."""
    if not faces:
        return None, "no_face"
    if len(faces) == 1:
        return faces[0], "ok"
    if policy == "drop":
        return None, "multi_face"
    return max(faces, key=lambda f: f.area), "multi_face_largest"


def process(detector: FaceDetector, path: Path, out: Path, cfg: Crop, max_pixels: int) -> dict:
    """Detect, choose, align and write one crop; returns the row describing the outcome."""
    try:
        image = read_image(path, max_pixels)
    except (ImageError, OSError) as err:
        return {"status": "unreadable", "error": str(err)}
    prepared, scale, offset = prepare(image, cfg)
    faces = [f for f in detector.detect(prepared) if f.score >= cfg.min_score]
    face, status = choose_face(faces, cfg.multi_face)
    row = {"status": status, "n_faces": len(faces)}
    if face is None:
        return row
    crop = crop_face(prepared, face, cfg.size, cfg.margin, cfg.align)
    if not cv2.imwrite(str(out), crop, [cv2.IMWRITE_JPEG_QUALITY, cfg.jpeg_quality]):
        return {**row, "status": "write_failed"}
    x1, y1, x2, y2 = face.transformed(scale, offset).box.tolist()
    return {**row, "score": round(face.score, 4), "x1": x1, "y1": y1, "x2": x2, "y2": y2}


def _init_worker(params: Params, weights: Path | None) -> None:
    cv2.setNumThreads(1)
    _worker.update(params=params, weights=weights, detector=None)


def _work(item: tuple[str, str, str]) -> dict:
    image_id, path, out = item
    params: Params = _worker["params"]
    if _worker["detector"] is None:  # built lazily so that a failure reaches the parent, not a respawn loop
        _worker["detector"] = build_detector(params.detector, _worker["weights"])
    row = process(_worker["detector"], Path(path), Path(out), params.crop, params.data.max_image_pixels)
    return {"id": image_id, **row}


def run_all(params: Params, items: list[tuple[str, str, str]]) -> Iterator[dict]:
    """Process items over `crop.workers` processes (in-process when 1), with a progress bar."""
    weights = resolve_weights(params.detector.weights) if params.detector.name == "yunet" else None
    workers = min(params.crop.workers, max(1, len(items)))
    bar = dict(total=len(items), desc=f"crop faces ({params.detector.name})", unit="img")
    if workers == 1:
        _init_worker(params, weights)
        yield from tqdm(map(_work, items), **bar)
        return
    ctx = mp.get_context("spawn")
    with ctx.Pool(workers, initializer=_init_worker, initargs=(params, weights)) as pool:
        yield from tqdm(pool.imap(_work, items, chunksize=16), **bar)


def detection_report(rows: pd.DataFrame) -> dict:
    """Detection rate (a crop was written) overall, per label and per split."""
    found = rows["status"].isin(["ok", "multi_face_largest"])

    def rate(mask: pd.Series) -> float:
        return round(float(found[mask].mean()), 4) if mask.any() else 0.0

    return {
        "images": len(rows),
        "crops": int(found.sum()),
        "detection_rate": rate(pd.Series(True, index=rows.index)),
        "detection_rate_per_label": {lb: rate(rows["label"] == lb) for lb in sorted(rows["label"].unique())},
        "detection_rate_per_split": {s: rate(rows["split"] == s) for s in sorted(rows["split"].unique())},
        "status_counts": {k: int(v) for k, v in rows["status"].value_counts().items()},
        "mean_score": round(float(rows.loc[found, "score"].mean()), 4) if found.any() else 0.0,
    }


def crop(params: Params) -> None:
    manifest = pd.read_csv(params.paths.interim / "manifest.csv")
    out_dir = params.paths.crops
    tmp_dir = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp_dir, ignore_errors=True)
    tmp_dir.mkdir(parents=True)
    items = [
        (r.id, str(params.paths.raw / r.source / r.relpath), str(tmp_dir / f"{r.id}.jpg"))
        for r in manifest.itertuples()
    ]
    results = pd.DataFrame(list(run_all(params, items)))
    rows = manifest[["id", "label", "split", "source"]].merge(results, on="id", how="left")
    found = rows["status"].isin(["ok", "multi_face_largest"])
    rows["crop"] = np.where(found, rows["id"] + ".jpg", "")
    shutil.rmtree(out_dir, ignore_errors=True)
    tmp_dir.replace(out_dir)
    rows.to_csv(params.paths.interim / "crops.csv", index=False)
    report = detection_report(rows)
    write_json(params.paths.reports / "crop.json", report)
    log.info("crops: %d of %d images (rate %.3f)", report["crops"], report["images"], report["detection_rate"])
    log.info("detection rate per label: %s", report["detection_rate_per_label"])


def main(argv: list[str] | None = None) -> int:
    return run_stage("crop", crop, argv)


if __name__ == "__main__":
    sys.exit(main())
