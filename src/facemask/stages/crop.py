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
import pandas as pd
import torch
from tqdm import tqdm

from facemask.cli import run_stage, write_json
from facemask.config import Params
from facemask.data.fetch import resolve_weights
from facemask.face_crops import process
from facemask.pipeline import FaceFinder

log = logging.getLogger("facemask.crop")
FOUND = ("ok", "multi_face_largest", "matched", "missed")

_worker: dict = {}


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
