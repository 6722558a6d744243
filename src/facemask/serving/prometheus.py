"""Prometheus metrics of the live streams, exposed on the service's /metrics endpoint. A camera's
series are removed when its session expires, so their number stays bounded by `max_cameras`."""

from __future__ import annotations

import bentoml


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

    def observe(self, camera: str, result: dict) -> None:
        self.frames.labels(camera=camera, detector="ran" if result["detector_ran"] else "reused").inc()
        for track in result["tracks"]:
            self.faces.labels(camera=camera, label=track["label"]).inc()
        for alert in result["alerts"]:
            self.alerts.labels(camera=camera, label=alert["class"]).inc()
        if result["compliance"] is not None:
            self.masked_share.labels(camera=camera).set(result["compliance"])

    def forget(self, camera: str, labels: list[str]) -> None:
        """Remove an expired camera's series."""
        for detector in ("ran", "reused"):
            self.frames.remove(camera, detector)
        for label in labels:
            self.faces.remove(camera, label)
            self.alerts.remove(camera, label)
        self.bad_frames.remove(camera)
        self.masked_share.remove(camera)
