"""`make loadtest`: a bounded locust load test of the served service on loopback, one table.

    python -m facemask.bench.load                        # serves the champion itself, then stops it
    python -m facemask.bench.load --url http://host:3000 # an already served one (FACEMASK_API_KEY)

Phases (each headless, `--seconds` long including a 4 s ramp-up, stopping by itself): /detect at the advertised rate,
/detect at twice that rate (past capacity: the service must answer 503 at once, not time out), and
`--cameras` concurrent WebSocket camera streams at 10 frames/s. The detect image is a real dev
scene (resized to 640 px wide); the camera frames come from the mirror's real clip.
"""

from __future__ import annotations

import argparse
import csv
import os
import secrets
import subprocess
import sys
import tempfile
from pathlib import Path

import cv2
import requests

from facemask.bench.stream import load_clip
from facemask.config import load_params
from facemask.imageio import encode_jpeg, read_image
from facemask.subprocesses import free_port, stop, wait_ready

LOCUSTFILE = Path(__file__).with_name("locustfile.py")
BIN = Path(sys.executable).parent


def serve(workdir: Path, key: str) -> tuple[subprocess.Popen, str]:
    """`bentoml serve` of the service from this checkout (models from the BentoML store)."""
    port = free_port()
    env = {**os.environ, "FACEMASK_API_KEYS": key, "FACEMASK_EVENTS": str(workdir / "events.jsonl")}
    log = (workdir / "serve.log").open("w")
    proc = subprocess.Popen(
        [str(BIN / "bentoml"), "serve", "service.service:FaceMask", "--host", "127.0.0.1", "--port", str(port)],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    tail = lambda: (workdir / "serve.log").read_text()[-2000:]  # noqa: E731
    wait_ready(proc, lambda: requests.get(f"{url}/readyz", timeout=2).status_code == 200, 180, tail)
    return proc, url


def locust(url: str, user: str, users: int, seconds: int, env: dict, prefix: Path) -> dict:
    """One headless locust run; the stats row and the failures by reason."""
    cmd = [str(BIN / "locust"), "-f", str(LOCUSTFILE), "--headless", "--host", url, "-u", str(users),
           "-r", str(max(1, users // 4)), "-t", f"{seconds}s", "--stop-timeout", "10", "--csv", str(prefix),
           "--only-summary", "--loglevel", "WARNING", user]  # fmt: skip
    proc = subprocess.run(cmd, env=env, check=False, capture_output=True, text=True, timeout=seconds + 120)
    if not Path(f"{prefix}_stats.csv").is_file():
        raise RuntimeError(f"locust failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    with open(f"{prefix}_stats.csv") as f:
        row = next(r for r in csv.DictReader(f) if r["Name"] != "Aggregated")
    failures: dict[str, int] = {}
    with open(f"{prefix}_failures.csv") as f:
        for r in csv.DictReader(f):
            failures[r["Error"]] = failures.get(r["Error"], 0) + int(r["Occurrences"])
    return {"row": row, "failures": failures, "seconds": seconds}


def table_row(phase: str, target: str, result: dict) -> str:
    r, failures = result["row"], result["failures"]
    count = int(r["Request Count"])
    busy = sum(n for e, n in failures.items() if "503" in e)
    server = sum(n for e, n in failures.items() if "HTTP 5" in e and "503" not in e)
    other = sum(failures.values()) - busy - server
    sent, ok = count / result["seconds"], (count - int(r["Failure Count"])) / result["seconds"]
    return (f"| {phase} | {target} | {count} | {sent:.1f} | {ok:.1f} | {r['50%']} | {r['95%']} | {r['99%']} | {busy} | "
            f"{server} | {other} |")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", help="an already served service (its key in FACEMASK_API_KEY)")
    parser.add_argument("--rate", type=int, default=24, help="the advertised detect rate, requests/s")
    parser.add_argument("--seconds", type=int, default=30, help="length of each phase")
    parser.add_argument("--cameras", type=int, default=4)
    args = parser.parse_args(argv)
    mirror = Path(os.environ.get("FACEMASK_MIRROR") or "../shared")
    work = Path(tempfile.mkdtemp(prefix="facemask-load-"))
    scene = read_image(
        mirror / "datasets/face-mask-scenes-dev/images/maksssksksss0.jpg", load_params().data.max_image_pixels
    )
    scale = 640 / scene.shape[1]
    (work / "scene.jpg").write_bytes(encode_jpeg(cv2.resize(scene, None, fx=scale, fy=scale)))
    (work / "frames").mkdir()
    for i, frame in enumerate(load_clip(mirror / "videos/mask-on-1280x720.mp4", 100)):
        (work / "frames" / f"{i:04d}.jpg").write_bytes(encode_jpeg(frame, 85))

    key = os.environ.get("FACEMASK_API_KEY", "") if args.url else secrets.token_urlsafe(24)
    proc, url = (None, args.url) if args.url else serve(work, key)
    env = {**os.environ, "FACEMASK_API_KEY": key, "FACEMASK_LOAD_IMAGE": str(work / "scene.jpg"),
           "FACEMASK_LOAD_FRAMES": str(work / "frames"), "FACEMASK_LOAD_FPS": "10"}  # fmt: skip
    try:
        limits = requests.post(f"{url}/info", json={}, headers={"X-API-Key": key}, timeout=10).json()["limits"]
        phases = [
            ("detect", f"~{args.rate} req/s", locust(url, "DetectUser", args.rate, args.seconds, env, work / "a")),
            ("detect 2x", f"~{2 * args.rate} req/s",
             locust(url, "DetectUser", 2 * args.rate, args.seconds, env, work / "b")),
            (f"{args.cameras} cameras", f"{10 * args.cameras} frames/s",
             locust(url, "CameraUser", args.cameras, args.seconds, env, work / "c")),
        ]  # fmt: skip
    finally:
        if proc is not None:
            stop(proc)
    height = round(scene.shape[0] * scale)
    print(f"{os.cpu_count()} CPUs, {args.seconds} s per phase, pipelines {limits['pipelines']}, "
          f"max waiting {limits['max_waiting']}; image 640x{height} (real dev scene)")  # fmt: skip
    print("| phase | offered | requests | sent /s | answered /s (200) | p50 ms | p95 ms | p99 ms | 503 busy | "
          "other 5xx | timeouts, errors |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for phase, target, result in phases:
        print(table_row(phase, target, result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
