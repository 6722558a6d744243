"""Prometheus metrics of the live streams, exposed on the service's /metrics endpoint. A camera's
series are removed when its session expires, so their number stays bounded by `max_cameras`."""

from __future__ import annotations

import bentoml

from facemask.stream.capture import STATES


class LiveMetrics:
    """Created once per process (Prometheus names must be unique)."""

    def __init__(self) -> None:
        m = bentoml.metrics
        self.frames = m.Counter(
            name="facemask_frames_total", documentation="Frames processed per camera", labelnames=["camera", "detector"]
        )
        self.faces = m.Counter(
            name="facemask_faces_total",
            documentation="Tracked faces per frame, by smoothed class",
            labelnames=["camera", "label"],
        )
        self.alerts = m.Counter(
            name="facemask_alerts_total", documentation="Alerts raised", labelnames=["camera", "label"]
        )
        self.bad_frames = m.Counter(
            name="facemask_bad_frames_total", documentation="Undecodable frames", labelnames=["camera"]
        )
        self.masked_share = m.Gauge(
            name="facemask_masked_share", documentation="Share of tracked faces masked", labelnames=["camera"]
        )
        # pulled cameras (cameras.sources)
        self.camera_state = m.Gauge(
            name="facemask_camera_state",
            documentation="1 for the current state of a pulled camera (connected, reconnecting, failed, ...)",
            labelnames=["camera", "state"],
        )
        self.camera_frames = m.Counter(
            name="facemask_camera_frames_total",
            documentation="Frames of a pulled camera: read from the source, sampled for analysis, dropped unanalysed",
            labelnames=["camera", "kind"],
        )
        self.camera_latency = m.Histogram(
            name="facemask_camera_latency_seconds",
            documentation="From a pulled frame's capture to its answer",
            labelnames=["camera"],
            buckets=(0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0),
        )
        self._counted: dict[tuple[str, str], int] = {}

    def observe(self, camera: str, result: dict) -> None:
        self.frames.labels(camera=camera, detector="ran" if result["detector_ran"] else "reused").inc()
        for track in result["tracks"]:
            self.faces.labels(camera=camera, label=track["label"]).inc()
        for alert in result["alerts"]:
            self.alerts.labels(camera=camera, label=alert["class"]).inc()
        if result["compliance"] is not None:
            self.masked_share.labels(camera=camera).set(result["compliance"])

    def observe_cameras(self, health: list[dict]) -> None:
        """Pulled cameras' states and frame counts from their `health()`."""
        for camera in health:
            name = camera["name"]
            for state in STATES:
                self.camera_state.labels(camera=name, state=state).set(float(camera["state"] == state))
            for kind in ("read", "sampled", "dropped"):
                value, key = camera[f"frames_{kind}"], (name, kind)
                if value > self._counted.get(key, 0):
                    self.camera_frames.labels(camera=name, kind=kind).inc(value - self._counted.get(key, 0))
                self._counted[key] = value

    def forget(self, camera: str, labels: list[str]) -> None:
        """Remove an expired camera's series."""
        for detector in ("ran", "reused"):
            self.frames.remove(camera, detector)
        for label in labels:
            self.faces.remove(camera, label)
            self.alerts.remove(camera, label)
        self.bad_frames.remove(camera)
        self.masked_share.remove(camera)
