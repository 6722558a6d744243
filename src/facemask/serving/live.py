"""Live camera streams in a serving worker: one `CameraSession` per connected camera, Prometheus
metrics per camera, bad frames answered with an error message while the stream goes on."""

from __future__ import annotations

import re
import threading

from facemask.config import Stream
from facemask.imageio import ImageError, decode_image
from facemask.pipeline import MaskPipeline
from facemask.stream.session import CameraSession
from facemask.stream.sinks import EventSinks

CAMERA_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


class LiveStreams:
    """The cameras connected to this worker; the pipeline runs one frame at a time (`lock`)."""

    def __init__(self, pipeline: MaskPipeline, cfg: Stream, lock: threading.Lock, metrics=None):
        self.pipeline, self.cfg, self.lock, self.metrics = pipeline, cfg, lock, metrics
        self.sinks = EventSinks(cfg.sinks)
        self.sessions: dict[str, CameraSession] = {}
        self.connections: dict[str, int] = {}

    def open(self, camera: str, frame_diff: bool | None = None) -> CameraSession:
        """The camera's session; a reconnecting camera keeps its tracks and counters.
        `frame_diff` overrides the configured frame differencing for a new session."""
        if not CAMERA_NAME.match(camera):
            raise ValueError("camera names are 1-64 letters, digits, '.', '_' or '-'")
        session = self.sessions.get(camera)
        if session is None:
            cfg = self.cfg
            if frame_diff is not None:
                cfg = cfg.model_copy(update={"frame_diff": cfg.frame_diff.model_copy(update={"enabled": frame_diff})})
            session = self.sessions[camera] = CameraSession(camera, self.pipeline, cfg, self.sinks)
        self.connections[camera] = self.connections.get(camera, 0) + 1
        return session

    def release(self, camera: str) -> None:
        self.connections[camera] = self.connections.get(camera, 1) - 1

    def handle(self, camera: str, data: bytes, max_pixels: int) -> dict:
        """One encoded frame in, the session's answer out; a bad frame gets {"error": ...}."""
        try:
            frame = decode_image(data, max_pixels)
        except ImageError as err:
            if self.metrics:
                self.metrics.bad_frames.labels(camera=camera).inc()
            return {"camera": camera, "error": str(err)}
        with self.lock:
            result = self.sessions[camera].process(frame)
        if self.metrics:
            self.metrics.observe(camera, result, self.sessions[camera])
        return result

    def close(self) -> None:
        for session in self.sessions.values():
            session.close()
        self.sinks.close()
