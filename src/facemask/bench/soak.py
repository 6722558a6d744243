"""`make soak DURATION=3600`: pulled cameras for a long run, bounded (it stops itself).

    python -m facemask.bench.soak --seconds 3600 --restart-every 600

Eight cameras on one worker (the service's `PulledCameras`, pipeline pool and sinks): six video files
of the shared real clips and two RTSP cameras fed by a real GStreamer RTSP server
(`facemask.bench.rtsp`; `make rtsp-server` installs it), which is stopped and started again every
`--restart-every` seconds. Checked at the end: the process's RSS within 10 % of its value at minute 5
(or a fifth of the run, if shorter), no camera left disconnected, and every alert the cameras raised
in the event file. Prints a summary and a line per minute; writes reports/bench/soak.json; exits 1
when a check fails. Needs FACEMASK_MIRROR (the clips) and the pipeline's models.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path

import psutil

from facemask.bench.rtsp import RtspServer, shared_clips
from facemask.config import Camera, load_params
from facemask.machine import describe
from facemask.pipeline import MaskPipeline
from facemask.serving.cameras import PulledCameras
from facemask.serving.live import LiveStreams
from facemask.serving.pool import PipelinePool
from facemask.stream.delivery import read_jsonl


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=3600.0)
    parser.add_argument("--restart-every", type=float, default=600.0)
    parser.add_argument("--fps", type=float, default=5.0)
    parser.add_argument("--out", type=Path, default=Path("reports/bench/soak.json"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    clips, params = shared_clips(), load_params()
    work = Path(tempfile.mkdtemp(prefix="facemask-soak-"))
    rtsp = RtspServer({"clip": clips[0], "street": clips[1]}, work / "rtsp.log")
    rtsp.start()
    sources = [Camera(name=f"file{i}", source=str(clips[i % 2]), fps=args.fps) for i in range(6)]
    sources += [Camera(name=f"rtsp-{m}", source=f"rtsp://127.0.0.1:{rtsp.port}/{m}", fps=args.fps) for m in rtsp.mounts]
    events = work / "events.jsonl"
    stream = params.stream.model_copy(
        update={"sinks": params.stream.sinks.model_copy(update={"jsonl": events, "log": False})}
    )
    pool = PipelinePool(lambda: MaskPipeline.from_params(params, params.paths.classifier), params.serving.pipelines)
    live = LiveStreams(pool, stream, params.serving)
    cameras = PulledCameras(live, params.cameras.model_copy(update={"sources": sources})).start()
    process, start = psutil.Process(), time.monotonic()
    baseline_at = min(300.0, args.seconds / 5)
    baseline = restarts = 0
    minutes: list[dict] = []
    next_restart, next_minute = args.restart_every, 60.0
    try:
        while (elapsed := time.monotonic() - start) < args.seconds:
            time.sleep(1)
            if not baseline and elapsed >= baseline_at:
                baseline = process.memory_info().rss
            if elapsed >= next_restart and elapsed < args.seconds - 60:  # the last minute: reconnected
                rtsp.stop()
                time.sleep(3)
                rtsp.start()
                restarts += 1
                next_restart += args.restart_every
            if elapsed >= next_minute:
                health = cameras.health()
                row = {"minute": round(elapsed / 60), "rss_mb": round(process.memory_info().rss / 2**20, 1),
                       "analysed": sum(c["frames_analysed"] for c in health), "alerts": cameras.alert_count,
                       "disconnected": [c["name"] for c in health if c["state"] != "connected"]}  # fmt: skip
                minutes.append(row)
                print(json.dumps(row), flush=True)
                next_minute += 60
        time.sleep(2)
        end_rss = process.memory_info().rss
        health = cameras.health()
        raised = cameras.alert_count
    finally:
        cameras.close()
        live.close()
        rtsp.stop()
    logged = sum(1 for e in read_jsonl(events) if e["type"] == "alert")
    checks = {
        "rss_within_10_percent": abs(end_rss - baseline) <= 0.1 * baseline,
        "no_camera_disconnected": all(c["state"] == "connected" for c in health),
        "every_alert_in_the_event_file": logged == raised,
    }
    result = {
        "seconds": args.seconds, "restart_every": args.restart_every, "restarts": restarts, "cameras": len(sources),
        "rss_mb_baseline": round(baseline / 2**20, 1), "rss_mb_end": round(end_rss / 2**20, 1),
        "alerts_raised": raised, "alerts_logged": logged,
        "frames_analysed": {c["name"]: c["frames_analysed"] for c in health},
        "connections": {c["name"]: c["connections"] for c in health},
        "checks": checks, "minutes": minutes, "machine": describe(),
    }  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"\n{args.seconds / 60:.0f} min, {len(sources)} cameras, {restarts} RTSP server restarts")
    print(f"RSS {result['rss_mb_baseline']} MB at {baseline_at / 60:.0f} min -> {result['rss_mb_end']} MB at the end")
    print(f"alerts raised {raised}, in the event file {logged}")
    for name, ok in checks.items():
        print(f"  {'ok  ' if ok else 'FAIL'} {name}")
    print(f"-> {args.out}")
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
