"""Stage 1, ingest: sources -> de-duplicated, split image manifest (data/interim/manifest.csv)."""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
from pathlib import Path

import pandas as pd

from facemask.config import ConfigError, Params
from facemask.data import manifest as mf
from facemask.data.fetch import resolve_source
from facemask.stages._runner import run_stage, write_json

log = logging.getLogger("facemask.ingest")


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


def ingest(params: Params) -> None:
    data = params.data
    report = mf.IngestReport()
    rows, roots = [], {}
    for name, source in data.sources.items():
        roots[name] = link_source(params.paths.raw, name, resolve_source(name, source))
        found = mf.scan_source(name, roots[name], source.label_map, data.image_extensions, report)
        if not found:
            raise ConfigError(f"data.sources.{name}: no images found under {roots[name]}")
        rows += found
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
    df = mf.deduplicate(df, data.dedup.drop_distance, data.dedup.group_distance, report)
    df = mf.cap_per_label(df, data.max_per_class, params.seed, report)
    df["split"] = mf.split_groups(df, data.split.val, data.split.test, params.seed)
    df.insert(0, "id", [f"{s}-{h[:12]}" for s, h in zip(df["source"], df["sha256"], strict=True)])
    mf.summarise(df, report)

    out = params.paths.interim / "manifest.csv"
    out.parent.mkdir(parents=True, exist_ok=True)
    df.sort_values("id").to_csv(out, index=False)
    write_json(params.paths.reports / "ingest.json", dataclasses.asdict(report))
    log.info("manifest: %d images kept of %d scanned -> %s", report.kept, report.scanned, out)
    log.info(
        "dropped: %d unreadable, %d too large, %d exact dup, %d near dup, %d label conflicts, %d capped",
        report.unreadable,
        report.too_large,
        report.exact_duplicates,
        report.near_duplicates,
        report.label_conflicts,
        report.capped,
    )
    for split, counts in report.per_split.items():
        log.info("  %-5s %s", split, counts)


def main(argv: list[str] | None = None) -> int:
    return run_stage("ingest", ingest, argv)


if __name__ == "__main__":
    sys.exit(main())
