"""`make bench-cameras`: many pulled cameras on one worker (the service's own `PulledCameras`).

    python -m facemask.bench.cameras                      # 8, then 16 file cameras at 5 fps, 60 s each
    python -m facemask.bench.cameras --cameras 8 --seconds 30
    python -m facemask.bench.cameras --batch-max-frames 1 8   # frames one at a time, then batched
    python -m facemask.bench.cameras --cameras 2 --fps 30 --profiles door crowd   # a door camera and a
                                                          # crowd camera at once: frames/s of each

Each camera is one of the shared real clips (the mask-on close-up, the street crowd, in turn) read
as a file at its own frame rate and sampled at `--fps`, analysed by a pool of `serving.pipelines`
pipelines with the packaged stream settings. After a warm-up, per camera: frames analysed per second,
the share of sampled frames dropped (the analysis took a newer one), latency from capture to answer
(p50 / p95); per row: the spread between the most and least served camera and the process's RSS.
Prints a table; writes reports/bench/cameras.json. Needs FACEMASK_MIRROR (the clips) and the
pipeline's models.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil
from tqdm import tqdm

from facemask.bench.rtsp import CLIPS, shared_clips
from facemask.config import Camera, UnknownProfile, load_params
from facemask.machine import describe
from facemask.pipeline import MaskPipeline
from facemask.serving.cameras import PulledCameras
from facemask.serving.live import LiveStreams
from facemask.serving.pool import PipelinePool


def run_row(
    params,
    pool: PipelinePool,
    clips: list[Path],
    n: int,
    fps: float,
    seconds: float,
    warmup: float,
    batch: int,
    profiles: list[str | None] | None = None,
) -> dict:
    """One row: `n` file cameras at `fps` for `seconds` after `warmup`, at most `batch` frames a batch;
    camera i on clip i and detection profile i (each in turn; None: the default)."""
    profiles = profiles or [None]
    sources = [
        Camera(name=f"cam{i:02d}", source=str(clips[i % len(clips)]), fps=fps, profile=profiles[i % len(profiles)])
        for i in range(n)
    ]
    cameras_cfg = params.cameras.model_copy(update={"sources": sources})
    events = Path(tempfile.mkdtemp(prefix="facemask-bench-cameras-")) / "events.jsonl"
    stream = params.stream.model_copy(
        update={"sinks": params.stream.sinks.model_copy(update={"jsonl": events, "log": False})}
    )
    limits = params.serving.model_copy(
        update={"max_cameras": max(n, params.serving.max_cameras), "batch_max_frames": batch}
    )
    live = LiveStreams(pool, stream, limits)
    cameras = PulledCameras(live, cameras_cfg).start()
    try:
        time.sleep(warmup)
        start = {c["name"]: c for c in cameras.health()}
        for latencies in cameras.latencies.values():
            latencies.clear()
        for _ in tqdm(range(int(seconds)), desc=f"{n} cameras", unit="s", leave=False):
            time.sleep(1)
        end = {c["name"]: c for c in cameras.health()}
        latency = np.concatenate([np.asarray(v, float) for v in cameras.latencies.values()]) * 1000
        rss = psutil.Process().memory_info().rss / 2**20
    finally:
        cameras.close()
        live.close()
    rates = np.array([(end[k]["frames_analysed"] - start[k]["frames_analysed"]) / seconds for k in end])
    by_profile = {}
    for profile in sorted({c["profile"] for c in end.values()}):
        of = [r for r, c in zip(rates, end.values(), strict=True) if c["profile"] == profile]
        by_profile[profile] = {"cameras": len(of), "fps_per_camera_median": float(np.median(of))}
    sampled = sum(end[k]["frames_sampled"] - start[k]["frames_sampled"] for k in end)
    dropped = sum(end[k]["frames_dropped"] - start[k]["frames_dropped"] for k in end)
    return {
        "cameras": n,
        "batch_max_frames": batch,
        "batch_window_ms": params.serving.batch_window_ms,
        "fps_requested": fps,
        "fps_per_camera_median": float(np.median(rates)),
        "fps_per_camera_min": float(rates.min()),
        "fps_per_camera_max": float(rates.max()),
        "fps_total": float(rates.sum()),
        "spread": float((rates.max() - rates.min()) / rates.max()) if rates.max() else None,
        "dropped_share": dropped / sampled if sampled else None,
        "latency_ms_p50": float(np.percentile(latency, 50)) if latency.size else None,
        "latency_ms_p95": float(np.percentile(latency, 95)) if latency.size else None,
        "rss_mb": round(rss, 1),
        "disconnected": sorted(k for k, c in end.items() if c["state"] != "connected"),
        "profiles": by_profile,  # frames/s per camera of each detection profile
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cameras", type=int, nargs="+", default=[8, 16])
    parser.add_argument("--fps", type=float, default=5.0)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--warmup", type=float, default=8.0)
    parser.add_argument(
        "--batch-max-frames", type=int, nargs="+", help="rows per value (1: frames one at a time); default: serving's"
    )
    parser.add_argument("--batch-window-ms", type=float, help="default: serving's")
    parser.add_argument(
        "--profiles", nargs="+", help="detection profiles, camera by camera in turn (default: the default)"
    )
    parser.add_argument("--out", type=Path, default=Path("reports/bench/cameras.json"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    clips, params = shared_clips(), load_params()
    if args.batch_window_ms is not None:
        params = params.model_copy(
            update={"serving": params.serving.model_copy(update={"batch_window_ms": args.batch_window_ms})}
        )
    for name in args.profiles or []:
        try:
            params.profiles.check(name)
        except UnknownProfile as err:
            parser.error(str(err))
    pool = PipelinePool(
        lambda: MaskPipeline.from_params(params, params.paths.classifier, profiles=True), params.serving.pipelines
    )
    batches = args.batch_max_frames or [params.serving.batch_max_frames]
    rows = [
        run_row(params, pool, clips, n, args.fps, args.seconds, args.warmup, b, args.profiles)
        for n in args.cameras
        for b in batches
    ]
    print(f"\n{'cameras':>7} {'batch':>5} {'fps each (min-max)':>20} {'total':>7} {'spread':>7} {'dropped':>8} "
          f"{'p50 ms':>7} {'p95 ms':>7} {'RSS MB':>7}")  # fmt: skip
    for r in rows:
        each = f"{r['fps_per_camera_median']:.2f} ({r['fps_per_camera_min']:.2f}-{r['fps_per_camera_max']:.2f})"
        print(f"{r['cameras']:>7} {r['batch_max_frames']:>5} {each:>20} {r['fps_total']:>7.1f} "
              f"{r['spread']:>7.0%} {r['dropped_share']:>8.0%} {r['latency_ms_p50']:>7.0f} "
              f"{r['latency_ms_p95']:>7.0f} {r['rss_mb']:>7.0f}")  # fmt: skip
        if len(r["profiles"]) > 1:
            print("        " + ", ".join(f"{name}: {p['fps_per_camera_median']:.2f} fps a camera ({p['cameras']})"
                                          for name, p in r["profiles"].items()))  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "machine": describe(),
        "fps": args.fps,
        "seconds": args.seconds,
        "pipelines": params.serving.pipelines,
        "clips": list(CLIPS),
    }
    args.out.write_text(json.dumps({**meta, "rows": rows}, indent=2))
    print(f"-> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
