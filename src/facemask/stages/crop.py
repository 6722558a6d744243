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

import csv
import logging
import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import cv2
import pandas as pd
import torch
from tqdm import tqdm

from facemask.cli import run_stage, write_json
from facemask.compute import ordered_map
from facemask.config import Params
from facemask.data.feedback import KIND as REGION
from facemask.detection import detector_backend
from facemask.errors import FacemaskError
from facemask.face_crops import process
from facemask.numerics import reproducible_inference
from facemask.pipeline import FaceFinder

log = logging.getLogger("facemask.crop")
FOUND = ("ok", "multi_face_largest", "matched", "missed")
META = ["id", "label", "split", "source", "kind"]
COLUMNS = [*META, "status", "score", "x1", "y1", "x2", "y2", "n_faces", "crop", "false_faces", "error"]
CHUNK_ROWS = 4096  # manifest rows read at a time


def manifests(params: Params) -> list[Path]:
    """The ingest stage's manifests: the sources', then the reviewed alerts' (when it wrote one)."""
    reviewed = params.paths.feedback_manifest
    return [params.paths.manifest, *([reviewed] if reviewed.is_file() else [])]


def _chunks(paths: list[Path], **kwargs) -> Iterator[pd.DataFrame]:
    for path in paths:
        yield from (chunk for chunk in pd.read_csv(path, **kwargs) if len(chunk))


def images(paths: list[Path], raw: Path) -> Iterator[tuple[str, list[dict]]]:
    """(image path, its manifest rows) for each image, streamed from the manifests in chunks. A
    manifest is sorted by id and a scene's faces share its id's stem, so an image's rows are
    adjacent; rows of one image that come apart are an error."""
    key, rows, done = None, [], set()
    for chunk in _chunks(paths, chunksize=CHUNK_ROWS):
        if "kind" not in chunk:
            chunk["kind"] = "photo"
        for row in chunk.to_dict("records"):
            k = (row["source"], row["relpath"])
            if k != key:
                if rows:
                    yield str(raw / key[0] / key[1]), rows
                if hash(k) in done:
                    raise FacemaskError(f"{paths}: the rows of {k[0]}/{k[1]} are apart; re-run the ingest stage")
                if key is not None:
                    done.add(hash(key))
                key, rows = k, []
            rows.append(row)
    if rows:
        yield str(raw / key[0] / key[1]), rows


def count_images(paths: list[Path]) -> int:
    n, last = 0, None
    for chunk in _chunks(paths, usecols=["source", "relpath"], chunksize=CHUNK_ROWS * 4):
        keys = chunk["source"] + "/" + chunk["relpath"]
        n += int((keys != keys.shift(fill_value=last)).sum())
        last = keys.iloc[-1]
    return n


def build_finder(spec: tuple[Params, Path | None, Path]) -> tuple[FaceFinder, Params, Path]:
    """Once per worker process: the detector and crop function the service uses."""
    from facemask.detection import build_detector

    params, weights, out_dir = spec
    cv2.setNumThreads(1)  # one image per process at a time: the processes are the parallelism
    torch.set_num_threads(1)
    return FaceFinder.from_params(params, build_detector(params.detector, weights)), params, out_dir


def crop_image(context: tuple[FaceFinder, Params, Path], item: tuple[str, list[dict]]) -> list[dict]:
    """The rows of one image: its samples' outcomes (manifest columns included) and background crops."""
    finder, params, out_dir = context
    path, samples = item
    meta = {s["id"]: {k: s[k] for k in META} for s in samples}
    scene = {"split": samples[0]["split"], "source": samples[0]["source"], "kind": "scene"}
    background = {**scene, "label": params.crop.background.label}
    rows = []
    for row in process(finder, Path(path), samples, out_dir, params):
        rows.append({**(meta.get(row["id"]) or background), **row})
    return rows


def run_all(params: Params, paths: list[Path], out_dir: Path) -> Iterator[list[dict]]:
    """Every image's rows, in manifest order, over `crop.workers` processes of the engine (`engine`)."""
    weights = detector_backend(params.detector).weights_file(params.detector)
    total = count_images(paths)
    workers = min(params.crop.workers, max(1, total))
    where = (
        "in-process"
        if params.engine.in_process(workers)
        else params.engine.scheduler or f"{params.engine.kind}, {workers} processes"
    )
    bar = dict(total=total, desc=f"crop faces ({params.detector.name}; {where})", unit="img")
    yield from tqdm(
        ordered_map(crop_image, images(paths, params.paths.raw), build_finder, (params, weights, out_dir),
                    workers, params.engine),
        **bar,
    )  # fmt: skip


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
    regions = faces[faces["kind"] == REGION]
    if len(regions):  # reviewed alerts: the face a reviewer judged, found again (or cut from its box)
        report["reviewed_faces"] = {"faces": len(regions), "matched": int((regions["status"] == "matched").sum())}
    return report


def crop(params: Params) -> None:
    out_dir, table = params.paths.crops, params.paths.crop_table
    tmp_dir, tmp_table = out_dir.with_name(out_dir.name + ".tmp"), table.with_name(table.name + ".tmp")
    shutil.rmtree(tmp_dir, ignore_errors=True)
    tmp_dir.mkdir(parents=True)
    try:  # rows are written as they come: memory stays flat however large the manifest
        with tmp_table.open("w", newline="") as fh:
            writer = csv.DictWriter(fh, COLUMNS, restval="", extrasaction="raise")
            writer.writeheader()
            for rows in run_all(params, manifests(params), tmp_dir):
                writer.writerows(rows)
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        tmp_table.unlink(missing_ok=True)
        raise
    shutil.rmtree(out_dir, ignore_errors=True)
    tmp_dir.replace(out_dir)
    os.replace(tmp_table, table)
    used = ["status", "label", "split", "source", "kind", "score", "false_faces"]
    report = detection_report(pd.read_csv(table, usecols=used))
    write_json(params.paths.reports / "crop.json", report)
    log.info("crops: %d of %d samples (rate %.3f)", report["crops"], report["samples"], report["detection_rate"])
    log.info("detection rate per source: %s", report["detection_rate_per_source"])
    if "scenes" in report:
        log.info("scenes: %s", report["scenes"])


def main(argv: list[str] | None = None) -> int:
    reproducible_inference()  # a model is made of what this stage computes: the same floats on every x86
    return run_stage("crop", crop, argv)


if __name__ == "__main__":
    sys.exit(main())
