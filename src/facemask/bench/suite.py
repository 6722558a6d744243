"""`make bench`: one table of the figures that decide cost and frame rate, plus a JSON record.

    python -m facemask.bench.suite [--quick] [--out reports/bench]

Each benchmark runs in a fresh spawned process, so its peak memory (max RSS) is its own. Timings
are medians. Needs the pipeline outputs (`dvc repro`: crops, classifier, augmentation) and the
offline mirror or downloads for the photos and the detector weights.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

from facemask.config import Params, load_params
from facemask.imageio import image_file_size, read_image
from facemask.machine import describe


def _median_ms(fn: Callable[[], object], repeats: int, warmup: int = 2) -> float:
    from facemask.bench.latency import timed

    return statistics.median(timed(fn, repeats, warmup))


def bench_crop(params: Params, quick: bool) -> list[dict]:
    """The crop stage's per-image work (read, detect, crop, write) on real test images, one process."""
    import tempfile

    from facemask.face_crops import process
    from facemask.pipeline import FaceFinder

    rows = pd.read_csv(params.paths.manifest, keep_default_na=False)
    rows = rows[rows["split"] == "test"]
    groups = [part.to_dict("records") for _, part in rows.groupby(["source", "relpath"], sort=True)]
    groups = groups[: 30 if quick else 120]
    finder = FaceFinder.from_params(params)
    with tempfile.TemporaryDirectory() as tmp:
        path = lambda g: params.paths.raw / g[0]["source"] / g[0]["relpath"]  # noqa: E731
        process(finder, path(groups[0]), groups[0], Path(tmp), params)
        start = time.perf_counter()
        for group in groups:
            process(finder, path(group), group, Path(tmp), params)
        seconds = time.perf_counter() - start
    per_worker = len(groups) / seconds
    return [
        {
            "benchmark": "crop stage",
            "case": f"{params.detector.name}, 1 worker",
            "value": per_worker,
            "unit": "images/s",
            "note": f"photos and scenes of the test split; x{params.crop.workers} workers in the stage",
        }
    ]


def bench_classifier(params: Params, quick: bool) -> list[dict]:
    """Faces per second through the classifier (preprocess + network) by batch size, real crops."""

    from facemask.classifier import MaskClassifier

    clf = MaskClassifier.load(params.paths.classifier)
    table = pd.read_csv(params.paths.crop_table, keep_default_na=False)
    names = table[table["crop"] != ""]["crop"].head(64)
    crops = [read_image(params.paths.crops / n, params.data.max_image_pixels) for n in names]
    out = []
    for batch in (1, 8, 32, 64):
        faces = crops[:batch]
        ms = _median_ms(lambda f=faces: clf.predict_proba(f, bgr=True, batch_size=64), 10 if quick else 30)
        out.append(
            {
                "benchmark": "classifier",
                "case": f"{clf.meta['backbone']}, batch {batch}",
                "value": batch * 1000 / ms,
                "unit": "faces/s",
                "note": f"{ms:.1f} ms per batch",
            }
        )
    return out


def bench_pipeline(params: Params, quick: bool) -> list[dict]:
    """Per-frame latency of the full pipeline on frames with 3 real faces, split by stage."""
    import os

    from facemask.bench.latency import make_frame
    from facemask.pipeline import MaskPipeline

    folder = Path(os.environ.get("FACEMASK_MIRROR", "")) / "datasets/face-mask-2class/with_mask"
    photos = sorted(p for p in folder.glob("*.jpg") if min(image_file_size(p)) >= 200)[:3]
    if len(photos) < 3:
        raise FileNotFoundError(f"need 3 face photos of at least 200 px in {folder} (set FACEMASK_MIRROR)")
    pipe = MaskPipeline.from_params(params, params.paths.classifier)
    out = []
    for size in ((640, 480), (1280, 720)):
        frame = make_frame(photos, 3, params.data.max_image_pixels, size)
        faces = pipe.detect_faces(frame)
        repeats = 15 if quick else 50
        det = _median_ms(lambda f=frame: pipe.detect_faces(f), repeats)
        cls = _median_ms(lambda f=frame, d=faces: pipe.classify(f, d), repeats)
        total = _median_ms(lambda f=frame: pipe(f), repeats)
        out.append(
            {
                "benchmark": "pipeline frame",
                "case": f"{size[0]}x{size[1]}, {len(faces)} faces",
                "value": total,
                "unit": "ms",
                "note": f"detect {det:.1f} + classify {cls:.1f} ms; "
                f"{1000 / total:.1f} fps; detector at long side {pipe.settings.detect_long_side or 'native'}",
            }
        )
    return out


def bench_training(params: Params, quick: bool) -> list[dict]:
    """Seconds per training epoch: the median step time (data loading included, warm-up and set-up
    excluded) of some batches, times the batches of the full train split, plus one validation pass."""
    import pytorch_lightning as pl

    from facemask.training.trainer import build_classifier_fit

    class StepTimer(pl.Callback):
        def __init__(self) -> None:
            self.train: list[float] = []
            self.val: list[float] = []

        def on_train_batch_start(self, *args) -> None:
            self.train.append(time.perf_counter())

        def on_validation_batch_start(self, *args) -> None:
            self.val.append(time.perf_counter())

    pl.seed_everything(params.train_seed)
    dm, module = build_classifier_fit(params)
    dm.setup("fit")
    total_batches, val_batches = len(dm.train_dataloader()), len(dm.val_dataloader())
    batches = min(total_batches, 8 if quick else 24)
    timer = StepTimer()
    trainer = pl.Trainer(
        max_epochs=1,
        limit_train_batches=batches,
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator=params.trainer.lightning.get("accelerator", "auto"),
        callbacks=[timer],
    )
    trainer.fit(module, datamodule=dm)
    step = statistics.median(np.diff(timer.train[2:]))  # steady state: the first steps warm up
    val_step = statistics.median(np.diff(timer.val[1:])) if len(timer.val) > 2 else 0.0
    epoch = step * total_batches + val_step * val_batches
    return [
        {
            "benchmark": "training",
            "case": f"{params.model.backbone} {params.model.input_size}px, batch {params.trainer.batch_size}",
            "value": epoch,
            "unit": "s/epoch",
            "note": f"{step:.2f} s/step x {total_batches} + validation {val_step:.2f} s x {val_batches}",
        }
    ]


BENCHMARKS: dict[str, Callable[[Params, bool], list[dict]]] = {
    "crop": bench_crop,
    "classifier": bench_classifier,
    "pipeline": bench_pipeline,
    "training": bench_training,
}


def _child(name: str, params_path: str, quick: bool, queue: mp.Queue) -> None:
    try:
        rows = BENCHMARKS[name](load_params(params_path), quick)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB -> MiB on Linux
        queue.put([{**r, "peak_rss_mib": round(peak)} for r in rows])
    except Exception as err:  # reported in the table, the other benchmarks still run
        queue.put(err)


def run(names: list[str], params_path: str, quick: bool) -> list[dict]:
    ctx = mp.get_context("spawn")
    rows: list[dict] = []
    for name in names:
        queue = ctx.Queue()
        proc = ctx.Process(target=_child, args=(name, params_path, quick, queue))
        proc.start()
        result = queue.get()
        proc.join()
        if isinstance(result, Exception):
            rows.append(
                {
                    "benchmark": name,
                    "case": "failed",
                    "value": float("nan"),
                    "unit": "",
                    "note": f"{type(result).__name__}: {result}",
                    "peak_rss_mib": None,
                }
            )
        else:
            rows.extend(result)
    return rows


def format_table(rows: list[dict]) -> str:
    lines = ["| benchmark | case | value | unit | peak RSS MiB | note |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['benchmark']} | {r['case']} | {r['value']:.1f} | {r['unit']} | "
            f"{r['peak_rss_mib'] if r['peak_rss_mib'] is not None else '-'} | {r['note']} |"
        )
    return "\n".join(lines)


def machine() -> dict:
    import torch

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    return {
        **describe(),  # CPU model, generation, cores, vector units: whose times these are
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpus": mp.cpu_count(),
        "threads": torch.get_num_threads(),
        "machine": platform.machine(),
        "commit": commit or None,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--only", nargs="+", choices=list(BENCHMARKS), default=list(BENCHMARKS))
    parser.add_argument("--quick", action="store_true", help="fewer repeats (for tests)")
    parser.add_argument("--out", type=Path, default=Path("reports/bench"))
    args = parser.parse_args(argv)
    params = load_params(args.params)
    missing = [p for p in (params.paths.classifier, params.paths.crop_table) if not p.exists()]
    if missing:
        print(f"bench: {', '.join(map(str, missing))} missing: run the pipeline first (dvc repro)", file=sys.stderr)
        return 2
    rows = run(args.only, args.params, args.quick)
    record = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "quick": args.quick,
        "results": rows,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = record["when"].replace(":", "").replace("-", "")[:15]
    for path in (args.out / f"bench-{stamp}.json", args.out / "latest.json"):
        path.write_text(json.dumps(record, indent=2, default=float) + "\n")
    print(format_table(rows))
    print(f"\nwritten to {args.out / 'latest.json'} (and a timestamped copy for comparison over time)")
    return 1 if any(np.isnan(r["value"]) for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
