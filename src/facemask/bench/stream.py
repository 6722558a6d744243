"""`make bench-stream`: frames per second of live streams on a mostly static real clip.

    python -m facemask.bench.stream                         # in-process (CameraSession)
    python -m facemask.bench.stream --url http://127.0.0.1:3000   # the served Bento over WebSockets
                                                                  # (its key in FACEMASK_API_KEY)

Rows: 1 stream and 4 concurrent streams, each with and without frame differencing. In-process,
the 4 streams take turns on one pipeline (as in one serving worker); over HTTP they are 4
WebSocket clients in parallel threads. Needs FACEMASK_MIRROR (or --video) for the clip.
"""

from __future__ import annotations

import argparse
import json
import os
import threading
import time
from pathlib import Path

import cv2

from facemask.config import load_params
from facemask.imageio import encode_jpeg
from facemask.pipeline import MaskPipeline
from facemask.stream.session import CameraSession


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


def in_process(params, clip: list, streams: int, frame_diff: bool) -> tuple[float, float]:
    """Total frames/s and the share of frames that ran the detector."""
    pipe = MaskPipeline.from_params(params, params.paths.classifier)
    cfg = params.stream.model_copy(
        update={"frame_diff": params.stream.frame_diff.model_copy(update={"enabled": frame_diff})}
    )
    sessions = [CameraSession(f"cam{i}", pipe, cfg) for i in range(streams)]
    sessions[0].process(clip[0])  # warm-up
    start = time.perf_counter()
    for frame in clip:
        for s in sessions:
            s.process(frame)
    seconds = time.perf_counter() - start
    runs = sum(s.total.detector_runs for s in sessions) - 1
    frames = sum(s.total.frames for s in sessions) - 1
    return frames / seconds, runs / frames


def over_websocket(url: str, clip: list, streams: int, frame_diff: bool) -> tuple[float, float]:
    from websockets.sync.client import connect

    encoded = [encode_jpeg(f, 85) for f in clip]
    runs = [0] * streams
    stamp = int(time.time() * 1000)

    def client(k: int) -> None:
        ws_url = f"{url.replace('http', 'ws', 1)}/live/ws/bench{stamp}-{k}?frame_diff={'on' if frame_diff else 'off'}"
        with connect(ws_url, max_size=2**22, additional_headers=api_key_headers()) as ws:
            for data in encoded:
                ws.send(data)
                runs[k] += json.loads(ws.recv(timeout=60))["detector_ran"]

    warmup = f"{url.replace('http', 'ws', 1)}/live/ws/bench{stamp}-warmup"
    with connect(warmup, max_size=2**22, additional_headers=api_key_headers()) as ws:
        for data in encoded[:10]:  # the service's first frames pay for lazy initialisation
            ws.send(data)
            ws.recv(timeout=60)
    threads = [threading.Thread(target=client, args=(k,)) for k in range(streams)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - start
    return streams * len(clip) / seconds, sum(runs) / (streams * len(clip))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--video", type=Path, help="default: the mirror's videos/mask-on-1280x720.mp4")
    parser.add_argument("--frames", type=int, default=120)
    parser.add_argument("--url", help="a served Bento (http://host:port) to benchmark over WebSockets")
    args = parser.parse_args(argv)
    video = args.video or Path(os.environ.get("FACEMASK_MIRROR", "")) / "videos/mask-on-1280x720.mp4"
    clip = load_clip(video, args.frames)
    params = load_params(args.params)
    print(
        f"{video.name}: {len(clip)} frames at {clip[0].shape[1]}x{clip[0].shape[0]}, "
        f"{params.detector.name} + {params.model.backbone}; {os.cpu_count()} CPUs"
    )
    print("| path | streams | frame differencing | total frames/s | per stream | detector ran on |")
    print("|---|---|---|---|---|---|")
    for streams in (1, 4):
        for diff in (False, True):
            fps, ran = (
                over_websocket(args.url, clip, streams, diff) if args.url else in_process(params, clip, streams, diff)
            )
            path = "websocket" if args.url else "in-process"
            print(f"| {path} | {streams} | {'on' if diff else 'off'} | {fps:.1f} | {fps / streams:.1f} | {ran:.0%} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
