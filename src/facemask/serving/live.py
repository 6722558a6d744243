"""Live camera streams in a serving worker: one `CameraSession` per connected camera, frames run
on a pool of pipelines, bad or oversized frames answered with an error while the stream goes on.

Bounded for a service that runs for months: at most `max_cameras` sessions; a camera without a
connection for `idle_expiry_s` is closed (its last stats window flushed to the event file first)
and its metric series removed; `close()` (the service's shutdown) flushes every camera and keeps
every undelivered webhook event in the pending file.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from concurrent.futures import Future
from functools import partial

from facemask import config
from facemask.config import Serving, Stream
from facemask.drift import DriftMonitor
from facemask.imageio import ImageError, decode_image
from facemask.serving.batching import FrameBatcher
from facemask.serving.pool import PipelinePool
from facemask.stream.media import EventMedia
from facemask.stream.session import CameraSession
from facemask.stream.sinks import EventSinks
from facemask.stream.zones import ZoneFilter

CAMERA_NAME = re.compile(config.CAMERA_NAME)
log = logging.getLogger(__name__)


SWEEP_S = 10.0  # idle sessions expired and the delivery backlog measured this often (at most)


class CameraLimitError(RuntimeError):
    """This worker already holds `max_cameras` sessions."""


class LiveStreams:
    def __init__(self, pool: PipelinePool, cfg: Stream, limits: Serving, metrics=None):
        self.pool, self.cfg, self.limits, self.metrics = pool, cfg, limits, metrics
        self.sinks = EventSinks(cfg.sinks)
        self.media = EventMedia(cfg, protected=self.sinks.pending_ids)
        self.batcher = FrameBatcher(pool, limits.batch_window_ms, limits.batch_max_frames)
        self.sessions: dict[str, CameraSession] = {}
        self.connections: dict[str, int] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._sweeper = threading.Thread(target=self._sweep, name="camera-expiry", daemon=True)
        self._sweeper.start()

    def open(
        self,
        camera: str,
        frame_diff: bool | None = None,
        regions: bool | None = None,
        zones: ZoneFilter | None = None,
        profile: str | None = None,
    ) -> CameraSession:
        """The camera's session; a reconnecting camera keeps its tracks and counters.
        `frame_diff` / `regions` switch the configured frame differencing / region search on or off
        for a new session (`regions` None: as its profile says, else as configured); `zones` are the
        faces it watches (default: all); `profile`: how its faces are found (None: the default
        profile; an unknown name is an UnknownProfile naming the known ones)."""
        if not CAMERA_NAME.match(camera):
            raise ValueError("camera names are 1-64 letters, digits, '.', '_' or '-'")
        profiled = self.pool.first.profile(profile)
        self.expire_idle()
        with self._lock:
            session = self.sessions.get(camera)
            if session is None:
                if len(self.sessions) >= self.limits.max_cameras:
                    raise CameraLimitError(f"this worker holds its limit of {self.limits.max_cameras} cameras")
                regions = profiled.region_search if regions is None else regions
                cfg = self.cfg.switched(frame_diff=frame_diff, regions=regions)
                session = CameraSession(camera, self.pool.first, cfg, self.sinks, zones, self.media.recorder(camera),
                                        profile=profiled.profile_name, drift=self._drift_monitor(camera))  # fmt: skip
                self.sessions[camera] = session
            self.connections[camera] = self.connections.get(camera, 0) + 1
            session.last_frame = time.time()
            return session

    def _drift_monitor(self, camera: str) -> DriftMonitor | None:
        """A new session's drift watch, against the served classifier's reference (None: it has none)."""
        stored = self.pool.first.classifier.meta.get("drift_reference")
        if stored is None:
            return None
        listener = partial(self.metrics.observe_drift, camera) if self.metrics else None
        try:
            return DriftMonitor(stored, listener=listener)
        except ValueError as err:  # a reference measured with other bins
            log.warning("camera %s: no drift watch (%s)", camera, err)
            return None

    def release(self, camera: str) -> None:
        """A connection of `camera` closed; with its last one, its clips in progress end there."""
        with self._lock:
            self.connections[camera] = left = max(0, self.connections.get(camera, 1) - 1)
            session = self.sessions.get(camera)
        if not left and session is not None and session.media is not None:
            with session.lock:
                session.media.flush()

    def handle(self, camera: str, data: bytes) -> dict:
        """One encoded frame in, the session's answer out; a bad frame gets {"error": ...}."""
        try:
            if len(data) > self.limits.max_frame_bytes:
                raise ImageError(f"the frame is {len(data)} bytes, over the limit of {self.limits.max_frame_bytes}")
            frame = decode_image(data, self.limits.max_pixels)
        except ImageError as err:
            if self.metrics:
                self.metrics.bad_frames.labels(camera=camera).inc()
            return {"camera": camera, "error": str(err)}
        return self.analyse(camera, frame)

    def analyse(self, camera: str, frame, now: float | None = None) -> dict:
        """One decoded frame of an open camera (pushed or pulled) through its session, batched with
        other cameras' frames (`FrameBatcher`); `now`: when the frame was taken (default: now)."""
        return self.submit(camera, frame, now).result()

    def submit(self, camera: str, frame, now: float | None = None) -> Future:
        """`analyse` without waiting: the future holds the answer (or this frame's error)."""
        future = self.batcher.submit(self.sessions[camera], frame, now)
        if self.metrics:
            future.add_done_callback(lambda f: f.exception() or self.metrics.observe(camera, f.result()))
        return future

    def expire_idle(self, now: float | None = None) -> list[str]:
        """Close the cameras with no connection for `idle_expiry_s`; returns their names."""
        now = time.time() if now is None else now
        with self._lock:
            idle = [
                name
                for name, s in self.sessions.items()
                if not self.connections.get(name) and now - s.last_frame >= self.limits.idle_expiry_s
            ]
            expired = [(name, self.sessions.pop(name)) for name in idle]
            for name in idle:
                self.connections.pop(name, None)
        for name, session in expired:
            with session.lock:
                session.close(now)
            if self.metrics:
                self.metrics.forget(name, self.pool.first.labels)
            log.info("camera %s idle for %.0f s: session closed", name, now - session.last_frame)
        return idle

    def _sweep(self) -> None:
        while not self._stop.wait(min(SWEEP_S, self.limits.idle_expiry_s / 4)):
            self.expire_idle()
            self.observe_backlog()

    def observe_backlog(self) -> None:
        """Each delivery's undelivered events on /metrics (`facemask_events_pending`)."""
        if self.metrics:
            for delivery in self.sinks.deliveries:
                self.metrics.events_pending.labels(sink=delivery.name).set(len(delivery.pending_ids()))

    def close(self) -> None:
        """Flush every camera's stats window; keep undelivered webhook events in the pending file."""
        self._stop.set()
        self.batcher.close()  # the batches in progress end first
        with self._lock:
            sessions, self.sessions = list(self.sessions.values()), {}
        for session in sessions:
            with session.lock:
                session.close()
        self.media.close()
        self.sinks.close()
