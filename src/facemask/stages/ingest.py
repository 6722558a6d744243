"""Stage 1, ingest: sources -> de-duplicated, split image manifest (data/interim/manifest.csv), and
the reviewed alerts pulled into the project (`paths.feedback`) -> their own manifest
(data/interim/feedback.csv), so that corrections leave the other sources' rows and splits as they were."""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
from pathlib import Path

import pandas as pd

from facemask.cli import run_stage, write_json
from facemask.config import ConfigError, Params
from facemask.data import feedback as fb
from facemask.data import manifest as mf
from facemask.data.fetch import resolve_source
from facemask.data.voc import evaluation_folder, load_scenes

log = logging.getLogger("facemask.ingest")
MANIFEST_COLUMNS = ["id", "source", "relpath", "label", "source_label", "width", "height", "bytes", "sha256",
                    "phash", "group", "kind", "x1", "y1", "x2", "y2", "split"]  # fmt: skip


def link_source(raw: Path, name: str, folder: Path) -> Path:
    """Point <raw>/<name> at the resolved source folder (a symlink, replaced when it moved)."""
    raw.mkdir(parents=True, exist_ok=True)
    link = raw / name
    if link.is_symlink() or link.exists():
        if link.resolve() == folder.resolve():
            return link
        if not link.is_symlink():
            raise ConfigError(f"{link} exists and is not a link made by ingest; move it away")
        link.unlink()
    link.symlink_to(folder.resolve(), target_is_directory=True)
    return link


def scan(params: Params, report: mf.IngestReport) -> tuple[list[dict], dict[str, Path]]:
    """Every source's rows (photos: one per image; scenes: one per image, faces attached)."""
    rows, roots = [], {}
    for name, source in params.data.sources.items():
        roots[name] = link_source(params.paths.raw, name, resolve_source(name, source))
        if source.kind == "scenes":
            found = mf.scan_scenes(name, roots[name], source.label_map, report)
        else:
            found = mf.scan_source(name, roots[name], source.label_map, params.data.image_extensions, report)
        if not found:
            raise ConfigError(f"data.sources.{name}: no images found under {roots[name]}")
        rows += found
    return rows, roots


def drop_evaluation_copies(params: Params, df: pd.DataFrame, roots: dict[str, Path], report) -> pd.DataFrame:
    """Drop training images that copy an evaluation scene (counted, a few named in the report)."""
    guard = params.data.eval_guard
    if not guard.enabled:
        return df
    folder = evaluation_folder(params.scenes)
    images = [s.image for s in load_scenes(folder, params.scenes.source.label_map)]
    copies = mf.evaluation_copies(df, roots, images, guard.distance)
    report.evaluation_copies = int(copies.sum())
    report.evaluation_copy_examples = sorted(df.loc[copies, "relpath"].head(20))
    log.info("dropped %d copies of the %d evaluation scenes in %s", report.evaluation_copies, len(images), folder)
    return df[~copies].reset_index(drop=True)


def feedback_manifest(params: Params) -> tuple[pd.DataFrame, mf.IngestReport]:
    """The reviewed alerts of `paths.feedback` (none yet: an empty table): one row per reviewed face,
    kind `region`, split by a digest of its image; exact copies and copies of evaluation scenes dropped."""
    report, folder = mf.IngestReport(), params.paths.feedback
    if not any((folder / "annotations").glob("*.xml")):
        log.info("no reviewed alerts in %s (`make retrain FROM=<a service>` pulls them)", folder)
        return pd.DataFrame(columns=MANIFEST_COLUMNS), report
    names = fb.label_map(params.data.labels, params.crop.background.label)
    roots = {fb.SOURCE: link_source(params.paths.raw, fb.SOURCE, folder)}
    rows = mf.scan_scenes(fb.SOURCE, roots[fb.SOURCE], names, report)
    report.scanned = len(rows)
    infos = mf.describe_all(rows, roots, params.data.max_image_pixels, workers=os.cpu_count() or 2)
    table = [{**row, **info} for row, info in zip(rows, infos, strict=True) if info and info["phash"]]
    report.unreadable = sum(info is None for info in infos)
    report.too_large = len(rows) - len(table) - report.unreadable
    df = pd.DataFrame(table)
    if df.empty:
        return pd.DataFrame(columns=MANIFEST_COLUMNS), report
    exact = df.duplicated("sha256")  # the same region reviewed twice (two cameras, one frame): once
    report.exact_duplicates = int(exact.sum())
    df = drop_evaluation_copies(params, df[~exact].reset_index(drop=True), roots, report)
    df["group"] = -1  # splits are per scene, from its digest (fb.split_of)
    df = mf.expand_scenes(df, report)
    df["kind"] = fb.KIND
    df["split"] = [fb.split_of(h, params.data.split.val, params.data.split.test) for h in df["sha256"]]
    df.insert(0, "id", [f"{fb.SOURCE}-{h[:12]}-f{int(k):02d}" for h, k in zip(df["sha256"], df["face"], strict=True)])
    mf.summarise(df, report)
    return df[MANIFEST_COLUMNS].sort_values("id"), report


def ingest(params: Params) -> None:
    data = params.data
    report = mf.IngestReport()
    rows, roots = scan(params, report)
    report.scanned = len(rows)
    infos = mf.describe_all(rows, roots, data.max_image_pixels, workers=os.cpu_count() or 2)
    table = []
    for row, info in zip(rows, infos, strict=True):
        if info is None:
            report.unreadable += 1
        elif info["phash"] is None:
            report.too_large += 1
        else:
            table.append({**row, **info})
    df = pd.DataFrame(table)
    # a scene image is one image to de-duplicate (its faces' labels differ by design)
    df["dedup_label"] = df["label"].where(df["source_label"] != "scene", "scene")
    df = mf.deduplicate(df, data.dedup.drop_distance, data.dedup.group_distance, report, "dedup_label")
    df = drop_evaluation_copies(params, df.drop(columns="dedup_label"), roots, report)
    df = mf.cap_per_label(df, data.max_per_class, params.seed, report)  # whole scenes, by majority label
    df = mf.expand_scenes(df, report)
    df["split"] = mf.split_groups(df, data.split.val, data.split.test, params.seed)
    ids = [f"{s}-{h[:12]}" for s, h in zip(df["source"], df["sha256"], strict=True)]
    if "face" in df:
        faces = zip(ids, df["kind"], df["face"].fillna(0), strict=True)
        ids = [i if kind != "scene" else f"{i}-f{int(k):02d}" for i, kind, k in faces]
        df = df.drop(columns="face")
    df.insert(0, "id", ids)
    mf.summarise(df, report)

    out = params.paths.manifest
    out.parent.mkdir(parents=True, exist_ok=True)
    df.sort_values("id").to_csv(out, index=False)
    reviewed, reviewed_report = feedback_manifest(params)
    reviewed.to_csv(params.paths.feedback_manifest, index=False)
    summary = dataclasses.asdict(report) | {"feedback": dataclasses.asdict(reviewed_report)}
    write_json(params.paths.reports / "ingest.json", summary)
    log.info("manifest: %d samples (%d faces in %d scenes) of %d images scanned -> %s",
             report.kept, report.scene_faces, report.scene_images, report.scanned, out)  # fmt: skip
    log.info(
        "dropped: %d unreadable, %d too large, %d exact dup, %d near dup, %d label conflicts, "
        "%d copies of evaluation scenes, %d capped",
        report.unreadable,
        report.too_large,
        report.exact_duplicates,
        report.near_duplicates,
        report.label_conflicts,
        report.evaluation_copies,
        report.capped,
    )
    for split, counts in report.per_split.items():
        log.info("  %-5s %s", split, counts)
    if len(reviewed):
        log.info("reviewed alerts: %d faces of %d scenes -> %s %s", len(reviewed), reviewed_report.scene_images,
                 params.paths.feedback_manifest, reviewed_report.per_split)  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    return run_stage("ingest", ingest, argv)


if __name__ == "__main__":
    sys.exit(main())
