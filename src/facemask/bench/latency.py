"""Latency of `detect` on 640x480 frames with 1, 3 and 8 real faces, in-process and over HTTP.

    python -m facemask.bench.latency                      # in-process (paths.classifier)
    python -m facemask.bench.latency --url http://127.0.0.1:3000   # also over HTTP (make serve)

Prints a table of median and p95 milliseconds and frames per second; needs FACEMASK_MIRROR (or
--images) for the face photos the frames are tiled from.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import cv2
import numpy as np

from facemask.bench.stream import api_key_headers
from facemask.config import load_params
from facemask.imageio import encode_jpeg, image_file_size, read_image
from facemask.pipeline import MaskPipeline

LAYOUTS = {1: (1, 1), 3: (3, 1), 8: (4, 2)}


def make_frame(photos: list[Path], faces: int, max_pixels: int, size: tuple[int, int] = (640, 480)) -> np.ndarray:
    """A `size` frame tiled with `faces` real face photos (grey background)."""
    cols, rows = LAYOUTS[faces]
    w, h = size
    frame = np.full((h, w, 3), 110, np.uint8)
    tw, th = w // cols, h // rows
    for k in range(faces):
        r, c = divmod(k, cols)
        img = read_image(photos[k % len(photos)], max_pixels)
        scale = min(tw / img.shape[1], th / img.shape[0]) * 0.9
        img = cv2.resize(img, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        y, x = r * th + (th - img.shape[0]) // 2, c * tw + (tw - img.shape[1]) // 2
        frame[y : y + img.shape[0], x : x + img.shape[1]] = img
    return frame


def timed(fn, repeats: int, warmup: int = 3) -> list[float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return times


def row(name: str, faces: int, found: int, times: list[float]) -> str:
    med = statistics.median(times)
    p95 = float(np.percentile(times, 95))
    return f"| {name:<10} | {faces:>5} | {found:>5} | {med:>8.1f} | {p95:>8.1f} | {1000 / med:>7.1f} |"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--classifier", help="default: paths.classifier of --params")
    parser.add_argument("--url", help="a served Bento to time over HTTP as well")
    parser.add_argument("--images", help="folder of face photos (default: the mirror's face-mask-2class/with_mask)")
    parser.add_argument("--repeats", type=int, default=50)
    args = parser.parse_args(argv)

    folder = Path(args.images or Path(os.environ.get("FACEMASK_MIRROR", "")) / "datasets/face-mask-2class/with_mask")
    photos = sorted(p for p in folder.glob("*.jpg") if min(image_file_size(p)) >= 200)[:8]
    if len(photos) < 8:
        parser.error(f"need 8 face photos of at least 200 px in {folder}")
    params = load_params(args.params)
    pipe = MaskPipeline.from_params(params, Path(args.classifier or params.paths.classifier))
    lines = [
        f"detect latency on 640x480 frames ({pipe.detector.name} + {pipe.classifier.meta['backbone']}, "
        f"{args.repeats} runs each)",
        "| path       | faces | found | median ms | p95 ms | frames/s |",
        "|------------|-------|-------|-----------|--------|----------|",
    ]
    import requests

    session = requests.Session()
    session.headers.update(api_key_headers())
    for faces in (1, 3, 8):
        frame = make_frame(photos, faces, params.data.max_image_pixels)
        found = len(pipe(frame))
        lines.append(row("in-process", faces, found, timed(lambda f=frame: pipe(f), args.repeats)))
        if args.url:
            data = encode_jpeg(frame, 90)

            def call(d: bytes = data, s: requests.Session = session) -> int:
                resp = s.post(f"{args.url}/detect", files={"image": ("f.jpg", d, "image/jpeg")}, timeout=30)
                resp.raise_for_status()
                return len(resp.json()["faces"])

            lines.append(row("http", faces, call(), timed(call, args.repeats)))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
