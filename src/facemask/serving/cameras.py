"""The cameras the service pulls itself (`cameras.sources`): a reader per camera, and a dispatcher
handing each camera's newest waiting frame to the service's frame batcher (one frame per camera in
flight, the camera served least recently first), so the frames of all cameras are analysed in
batches. Each camera is a `LiveStreams` session like a WebSocket camera (the same tracks, smoothing,
alerts, compliance and sinks); it holds its place for as long as the service runs.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from concurrent.futures import Future
from functools import partial

import numpy as np

from facemask.config import Cameras, ConfigError
from facemask.serving.batching import BatcherClosed
from facemask.stream.capture import CameraReader, Sample
from facemask.stream.zones import ZoneFilter

log = logging.getLogger(__name__)


class PulledCameras:
    def __init__(self, live, cfg: Cameras, metrics=None):
        """`live`: the service's `LiveStreams` (sessions, pipeline pool, sinks)."""
        self.live, self.cfg, self.metrics = live, cfg, metrics
        self._wake = threading.Condition()
        self._busy: set[str] = set()
        self._served: dict[str, float] = {}  # camera -> when its last frame was taken (monotonic)
        self._stop = threading.Event()
        self.readers: dict[str, CameraReader] = {}
        self.latest: dict[str, dict] = {}  # camera -> its last answer
        self.frames: dict[str, tuple[int, np.ndarray]] = {}  # camera -> (frames analysed, that frame)
        self.timeline: deque[dict] = deque(maxlen=200)  # every camera's alerts, oldest first
        self.alert_count = 0  # alerts ever added to the timeline
        self.analysed: dict[str, int] = {}
        self.latencies: dict[str, deque[float]] = {}  # camera -> seconds from capture to answer, recent
        enabled = [c for c in cfg.sources if c.enabled]
        if len(enabled) > live.limits.max_cameras:
            raise ConfigError(f"cameras.sources enables {len(enabled)} cameras, over serving.max_cameras "
                              f"({live.limits.max_cameras}): raise FACEMASK_MAX_CAMERAS or disable some")  # fmt: skip
        for camera in enabled:
            live.open(camera.name, zones=ZoneFilter(camera.zones, camera.anchor), profile=camera.profile)  # held
            self.readers[camera.name] = CameraReader(camera, cfg, on_frame=self._notify)
            self.analysed[camera.name], self.latencies[camera.name] = 0, deque(maxlen=600)
            self._served[camera.name] = 0.0
        self._workers = []
        if self.readers:
            self._workers.append(threading.Thread(target=self._dispatch, name="camera-dispatch", daemon=True))
        if self.readers and metrics:
            self._workers.append(threading.Thread(target=self._monitor, name="camera-metrics", daemon=True))

    def start(self) -> PulledCameras:
        for reader in self.readers.values():
            reader.start()
        for worker in self._workers:
            worker.start()
        if self.readers:
            log.info("pulling %d camera(s): %s", len(self.readers), ", ".join(self.readers))
        return self

    def _notify(self) -> None:
        with self._wake:
            self._wake.notify()

    def _dispatch(self) -> None:
        """Every camera with a waiting frame and none in analysis hands its newest to the batcher,
        the camera served least recently first (round robin: a camera sampled faster does not
        starve the others, nor they it)."""
        with self._wake:
            while not self._stop.is_set():
                waiting = sorted((self._served[name], name) for name, r in self.readers.items()
                                 if name not in self._busy and r.waiting_since is not None)  # fmt: skip
                for _, name in waiting:
                    sample = self.readers[name].take()
                    if sample is None:
                        continue
                    self._busy.add(name)
                    self._served[name] = time.monotonic()
                    try:
                        future = self.live.submit(name, sample.frame, sample.time)
                    except (BatcherClosed, KeyError):  # the service is stopping
                        return
                    future.add_done_callback(partial(self._done, name, sample))
                self._wake.wait(0.5)

    def _done(self, name: str, sample: Sample, future: Future) -> None:
        """A frame's answer (in the batcher's thread): the camera's figures, or its error counted."""
        try:
            result = future.result()
            latency = time.time() - sample.time
            self.latencies[name].append(latency)
            with self._wake:
                self.analysed[name] += 1
                self.latest[name] = result
                self.frames[name] = (self.analysed[name], sample.frame)
                self.timeline.extend(result["alerts"])
                self.alert_count += len(result["alerts"])
            if self.metrics:
                self.metrics.camera_latency.labels(camera=name).observe(latency)
        except BatcherClosed:
            pass
        except Exception:  # one camera's bad frame must not stop the others
            self.readers[name].frames_bad += 1
            if self.metrics:
                self.metrics.bad_frames.labels(camera=name).inc()
            log.exception("camera %s: a frame could not be analysed (skipped)", name)
        finally:
            with self._wake:
                self._busy.discard(name)
                self._wake.notify()

    def _monitor(self) -> None:
        while not self._stop.wait(2.0):
            self.health()  # states and counts into Prometheus

    def health(self) -> list[dict]:
        """Per camera: the reader's state and counts, frames analysed, latency and live figures."""
        out = []
        for name, reader in self.readers.items():
            latency, session = self.latencies[name], self.live.sessions[name]
            last = self.latest.get(name) or {}
            out.append(
                {
                    **reader.health(),
                    "profile": session.profile,
                    "frames_analysed": self.analysed[name],
                    "latency_ms": round(float(np.median(latency)) * 1000, 1) if latency else None,
                    "faces": len(last.get("tracks", [])),
                    "compliance": last.get("compliance"),
                    "last_analysed": last.get("time"),
                    "drift": session.drift.summary() if session.drift else None,  # facemask.drift
                }
            )
        if self.metrics:
            self.metrics.observe_cameras(out)
        return out

    def close(self) -> None:
        self._stop.set()
        with self._wake:
            self._wake.notify_all()
        for reader in self.readers.values():
            reader.stop()
        for worker in self._workers:
            worker.join(10)
