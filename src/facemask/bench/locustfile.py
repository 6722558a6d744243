"""Locust users for `make loadtest` (run by `facemask.bench.load`, which sets the environment):
`DetectUser` posts a real scene photo to /detect once a second on average each, paced from the start
of one request to the start of the next (so the offered rate is the user count whatever the
response time: an open load, as independent clients are);
`CameraUser` streams the real clip over the WebSocket at 10 frames/s, one answer per frame.

Environment: FACEMASK_API_KEY, FACEMASK_LOAD_IMAGE (a JPEG), FACEMASK_LOAD_FRAMES (a folder of JPEG
frames), FACEMASK_LOAD_FPS.
"""

from __future__ import annotations

import json
import os
import random
import time
from pathlib import Path

from locust import HttpUser, User, constant, task

KEY = os.environ.get("FACEMASK_API_KEY", "")
HEADERS = {"X-API-Key": KEY} if KEY else {}


class DetectUser(HttpUser):
    """One request a second on average: each starts 0.5-1.5 s after the previous one started (not
    ended), so independent clients never fire in lockstep, a refused one does not come back in step
    with the rest, and a slow answer does not lower the offered rate (until it takes over 0.5 s)."""

    image = (
        Path(os.environ.get("FACEMASK_LOAD_IMAGE", "")).read_bytes() if os.environ.get("FACEMASK_LOAD_IMAGE") else b""
    )
    started = 0.0  # perf_counter() when the last request was sent

    def wait_time(self) -> float:
        return max(0.0, random.uniform(0.5, 1.5) - (time.perf_counter() - self.started))

    @task
    def detect(self) -> None:
        self.started = time.perf_counter()
        files = {"image": ("scene.jpg", self.image, "image/jpeg")}
        with self.client.post("/detect", files=files, headers=HEADERS, timeout=30, catch_response=True) as resp:
            if resp.status_code != 200:
                resp.failure(f"HTTP {resp.status_code}")  # 0: no answer (timeout or connection error)


class CameraUser(User):
    wait_time = constant(0)
    fps = float(os.environ.get("FACEMASK_LOAD_FPS", "10"))

    def on_start(self) -> None:
        from websockets.sync.client import connect

        folder = Path(os.environ["FACEMASK_LOAD_FRAMES"])
        self.frames = [p.read_bytes() for p in sorted(folder.glob("*.jpg"))]
        self.index = 0
        camera = f"load{id(self) % 100000}"
        url = self.host.replace("http", "ws", 1) + f"/live/ws/{camera}"
        self.ws = connect(url, additional_headers=HEADERS, max_size=2**22, open_timeout=30)

    def on_stop(self) -> None:
        self.ws.close()

    @task
    def frame(self) -> None:
        jpeg = self.frames[self.index % len(self.frames)]
        self.index += 1
        start = time.perf_counter()
        error = None
        try:
            self.ws.send(jpeg)
            answer = json.loads(self.ws.recv(timeout=30))
            if "error" in answer:
                error = RuntimeError(answer["error"])
        except Exception as err:  # a closed or stuck connection is the failure being measured
            error = err
        elapsed = time.perf_counter() - start
        self.environment.events.request.fire(
            request_type="WS", name="camera frame", response_time=elapsed * 1000, response_length=len(jpeg),
            exception=error, context={},
        )  # fmt: skip
        time.sleep(max(0.0, 1 / self.fps - elapsed))
