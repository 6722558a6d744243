"""`make bench-stream`: frames per second of live streams on a mostly static real clip.

    python -m facemask.bench.stream                         # in-process (CameraSession)
    python -m facemask.bench.stream --url http://127.0.0.1:3000   # the served Bento over WebSockets
                                                                  # (its key in FACEMASK_API_KEY)

Each row opens new cameras (their switches apply when a camera is first seen): 1, 4 and 8 streams
take 48 cameras with the warm-ups, over the default `max_cameras` of 32 per worker: serve with
FACEMASK_MAX_CAMERAS=64 (and restart it between runs) for the full table.

Rows: 1 and 4 concurrent streams, each with the detector on every whole frame, with frame
differencing, and with frame differencing plus the region search between full passes; in-process
also the last with event media recorded all the time (any face alerts at once and each camera
again as soon as its clip ends, so a clip is always being recorded; the encoding of the last ones
is timed too: the worst case of `stream.media`). In-process,
the 4 streams take turns on one pipeline (as in one serving worker); over HTTP they are 4
WebSocket clients in parallel threads. Needs FACEMASK_MIRROR (or --video) for the clip.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import threading
import time
from pathlib import Path

import cv2

from facemask.config import load_params
from facemask.imageio import encode_jpeg
from facemask.pipeline import MaskPipeline
from facemask.stream.media import EventMedia
from facemask.stream.session import CameraSession
from facemask.stream.sinks import EventSinks


def api_key_headers() -> dict[str, str]:
    """The served service's key, when it requires one (FACEMASK_API_KEY)."""
    key = os.environ.get("FACEMASK_API_KEY")
    return {"X-API-Key": key} if key else {}


def load_clip(path: Path, frames: int, width: int = 640) -> list:
    cap = cv2.VideoCapture(str(path))
    out = []
    while len(out) < frames:
        ok, frame = cap.read()
        if not ok:
            break
        scale = width / frame.shape[1]
        out.append(cv2.resize(frame, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA))
    cap.release()
    if not out:
        raise FileNotFoundError(f"no frames read from {path}")
    return out


def timed_threads(threads: list[threading.Thread]) -> float:
    """Seconds from starting the threads (the streams) until the last has ended."""
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - start


MODES = {  # row name: (frame differencing, region search)
    "every frame": (False, False),
    "frame diff": (True, False),
    "frame diff + regions": (True, True),
}


def in_process(params, clip: list, streams: int, mode: str, clips: bool = False) -> tuple[float, float, float]:
    """Total frames/s, the share of frames the detector ran on and the share it searched whole.
    `clips`: each camera records event media (the pre-roll buffer, every alert's snapshot and clip
    encoded on the writer's thread) into a temporary folder, as a served camera does."""
    pipe = MaskPipeline.from_params(params, params.paths.classifier)
    frame_diff, regions = MODES[mode]
    cfg = params.stream.switched(frame_diff=frame_diff, regions=regions)
    with tempfile.TemporaryDirectory() as tmp:
        sinks = media = None
        if clips:  # any face alerts at once, each camera again as soon as its clip ends: always recording
            roll = cfg.media.pre_roll_s + cfg.media.post_roll_s
            alerts = cfg.alerts.model_copy(update={"after_s": 0.0, "track_cooldown_s": 0.0, "camera_cooldown_s": roll,
                                                   "classes": list(pipe.labels), "min_score": 0.0})  # fmt: skip
            sinks_cfg = cfg.sinks.model_copy(update={"log": False, "jsonl": Path(tmp, "events.jsonl")})
            cfg = cfg.model_copy(update={"alerts": alerts, "sinks": sinks_cfg})
            sinks, media = EventSinks(cfg.sinks), EventMedia(cfg)
        sessions = [CameraSession(f"cam{i}", pipe, cfg, sinks, media=media and media.recorder(f"cam{i}"))
                    for i in range(streams)]  # fmt: skip
        sessions[0].process(clip[0])  # warm-up
        start = time.perf_counter()
        for frame in clip:
            for s in sessions:
                s.process(frame)
        if clips:  # the clips still being encoded count too
            for s in sessions:
                s.close()
            media.close()
            sinks.close()
        seconds = time.perf_counter() - start
    runs = sum(s.total.detector_runs for s in sessions) - 1
    full = sum(s.total.full_detections for s in sessions) - 1
    frames = sum(s.total.frames for s in sessions) - 1
    return frames / seconds, runs / frames, full / frames


def in_worker(params, clip: list, streams: int, mode: str, window_ms: float | None) -> tuple[float, float, float]:
    """As `in_process`, but through what a serving worker runs: `LiveStreams` on a pool of
    `serving.pipelines` pipelines, each stream a thread sending its next frame when the last is
    answered; `window_ms`: several streams' frames classified in one batch (`FrameBatcher`), a lone
    frame waiting this long for the others; None: one frame at a time (`batch_max_frames` 1)."""
    from facemask.serving.live import LiveStreams
    from facemask.serving.pool import PipelinePool

    frame_diff, regions = MODES[mode]
    limits = params.serving.model_copy(
        update={"batch_max_frames": 1 if window_ms is None else params.serving.batch_max_frames,
                "batch_window_ms": window_ms or 0.0,
                "max_cameras": max(params.serving.max_cameras, streams)}
    )  # fmt: skip
    pool = PipelinePool(lambda: MaskPipeline.from_params(params, params.paths.classifier), params.serving.pipelines)
    with tempfile.TemporaryDirectory() as tmp:
        sinks = params.stream.sinks.model_copy(update={"log": False, "jsonl": Path(tmp, "events.jsonl")})
        live = LiveStreams(pool, params.stream.model_copy(update={"sinks": sinks}), limits)
        names = [f"cam{i}" for i in range(streams)]
        for name in names:
            live.open(name, frame_diff=frame_diff, regions=regions)
        seconds = timed_threads(
            [threading.Thread(target=lambda n=n: [live.analyse(n, f) for f in clip]) for n in names]
        )
        counters = [live.sessions[n].total for n in names]
        live.close()
    frames = sum(c.frames for c in counters)
    return (
        frames / seconds,
        sum(c.detector_runs for c in counters) / frames,
        sum(c.full_detections for c in counters) / frames,
    )


def over_websocket(url: str, clip: list, streams: int, mode: str) -> tuple[float, float, float]:
    from websockets.sync.client import connect

    encoded = [encode_jpeg(f, 85) for f in clip]
    runs, full = [0] * streams, [0] * streams
    stamp = int(time.time() * 1000)
    switches = "&".join(
        f"{k}={'on' if on else 'off'}" for k, on in zip(("frame_diff", "regions"), MODES[mode], strict=True)
    )

    errors: list[BaseException] = []

    def client(k: int) -> None:
        ws_url = f"{url.replace('http', 'ws', 1)}/live/ws/bench{stamp}-{k}?{switches}"
        try:
            with connect(ws_url, max_size=2**22, additional_headers=api_key_headers()) as ws:
                for data in encoded:
                    ws.send(data)
                    answer = json.loads(ws.recv(timeout=60))
                    if "error" in answer:
                        raise RuntimeError(f"camera {k}: {answer['error']}")
                    runs[k] += answer["detector_ran"]
                    full[k] += answer["detection"] == "full"
        except BaseException as err:  # a refused camera must fail the row, not inflate its frame rate
            errors.append(err)

    warmup = f"{url.replace('http', 'ws', 1)}/live/ws/bench{stamp}-warmup"
    with connect(warmup, max_size=2**22, additional_headers=api_key_headers()) as ws:
        for data in encoded[:10]:  # the service's first frames pay for lazy initialisation
            ws.send(data)
            ws.recv(timeout=60)
    seconds = timed_threads([threading.Thread(target=client, args=(k,)) for k in range(streams)])
    if errors:
        raise RuntimeError(f"{len(errors)} of {streams} streams failed (the service's max_cameras?): {errors[0]}")
    frames = streams * len(clip)
    return frames / seconds, sum(runs) / frames, sum(full) / frames


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--video", type=Path, help="default: the mirror's videos/mask-on-1280x720.mp4")
    parser.add_argument("--frames", type=int, default=120)
    parser.add_argument("--repeat", type=int, default=1, help="play the frames this many times (longer rows)")
    parser.add_argument("--streams", type=int, nargs="+", default=[1, 4], help="concurrent streams per row group")
    parser.add_argument("--url", help="a served Bento (http://host:port) to benchmark over WebSockets")
    parser.add_argument(
        "--worker", action="store_true",
        help="in-process through a serving worker's LiveStreams and pipeline pool, frames batched across "
        "streams and not (instead of the sessions alone)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    if args.video is None and not os.environ.get("FACEMASK_MIRROR"):
        parser.error("no clip: set FACEMASK_MIRROR (the offline mirror; `make bench-stream` does) or pass --video")
    video = args.video or Path(os.environ["FACEMASK_MIRROR"]) / "videos/mask-on-1280x720.mp4"
    try:
        clip = load_clip(video, args.frames) * args.repeat
    except FileNotFoundError as err:
        parser.error(str(err))
    params = load_params(args.params)
    print(
        f"{video.name}: {len(clip)} frames at {clip[0].shape[1]}x{clip[0].shape[0]}, "
        f"{params.detector.name} + {params.model.backbone}; {os.cpu_count()} CPUs"
    )
    print("| path | streams | detection | total frames/s | per stream | detector ran on | whole frame searched on |")
    print("|---|---|---|---|---|---|---|")
    for streams in args.streams:
        if args.worker:
            for mode in ("every frame", "frame diff + regions"):
                for window in (None, 0.0, params.serving.batch_window_ms):
                    fps, ran, full = in_worker(params, clip, streams, mode, window)
                    how = "one frame at a time" if window is None else f"batched across streams, window {window:g} ms"
                    name = f"{mode}, {how}"
                    print(f"| worker ({params.serving.pipelines} pipelines) | {streams} | {name} | {fps:.1f} | "
                          f"{fps / streams:.1f} | {ran:.0%} | {full:.0%} |")  # fmt: skip
            continue
        for mode in MODES:
            fps, ran, full = (
                over_websocket(args.url, clip, streams, mode) if args.url else in_process(params, clip, streams, mode)
            )
            path = "websocket" if args.url else "in-process"
            print(f"| {path} | {streams} | {mode} | {fps:.1f} | {fps / streams:.1f} | {ran:.0%} | {full:.0%} |")
        if not args.url:
            fps, ran, full = in_process(params, clip, streams, "frame diff + regions", clips=True)
            print(f"| in-process | {streams} | frame diff + regions, clips recorded all along | {fps:.1f} | "
                  f"{fps / streams:.1f} | {ran:.0%} | {full:.0%} |")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
