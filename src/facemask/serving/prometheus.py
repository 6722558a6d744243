"""Prometheus metrics of the live streams, exposed on the service's /metrics endpoint. A camera's
series are removed when its session expires, so their number stays bounded by `max_cameras`."""

from __future__ import annotations

import contextlib

import bentoml

from facemask.drift import EDGES, QUANTITIES, DriftMonitor
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
        # event delivery (webhook, MQTT): events not delivered yet, in memory or in the pending file
        self.events_pending = m.Gauge(
            name="facemask_events_pending",
            documentation="Events a delivery (webhook, mqtt) has not delivered yet",
            labelnames=["sink"],
        )

        # drift (facemask.drift): the faces a full pass keeps, scored 0.5 or more, per camera
        self.face_histograms = {
            "score": m.Histogram(
                name="facemask_face_detector_score", documentation="Detector score of the faces a full pass keeps",
                labelnames=["camera"], buckets=(*EDGES["score"][1:], 1.0),
            ),
            "background": m.Histogram(
                name="facemask_face_background_probability",
                documentation="p(background) of the faces a full pass keeps",
                labelnames=["camera"], buckets=(*EDGES["background"][1:], 1.0),
            ),
            "height": m.Histogram(
                name="facemask_face_height_pixels", documentation="Height of the faces a full pass keeps",
                labelnames=["camera"], buckets=EDGES["height"][1:],
            ),
            "faces": m.Histogram(
                name="facemask_faces_per_frame", documentation="Faces a full pass keeps (scored 0.5 or more)",
                labelnames=["camera"], buckets=(0, 1, 2, 4, 9),
            ),
        }  # fmt: skip
        self.face_classes = m.Counter(
            name="facemask_face_class_total",
            documentation="Faces a full pass keeps, by the classifier's class (before smoothing)",
            labelnames=["camera", "label"],
        )
        self.drift_psi = m.Gauge(
            name="facemask_drift_psi",
            documentation="Population stability index of a camera's recent faces against the validation reference",
            labelnames=["camera", "quantity"],
        )
        self.drift_score = m.Gauge(
            name="facemask_drift_score", documentation="A camera's largest drift PSI", labelnames=["camera"]
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

    def observe_drift(self, camera: str, samples: dict[str, list], monitor: DriftMonitor) -> None:
        """One full pass's drift samples (`DriftMonitor`'s listener), and the camera's PSI."""
        for quantity, histogram in self.face_histograms.items():
            for value in samples[quantity]:
                histogram.labels(camera=camera).observe(value)
        for label in samples["class"]:
            self.face_classes.labels(camera=camera, label=label).inc()
        summary = monitor.summary()  # the camera's score is the largest PSI, as /cameras/status shows it
        if summary["psi"] is not None:
            for quantity, value in summary["psi"].items():
                self.drift_psi.labels(camera=camera, quantity=quantity).set(value)
            self.drift_score.labels(camera=camera).set(summary["score"])

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
        for histogram in self.face_histograms.values():
            _remove(histogram, camera)
        for label in labels:
            _remove(self.face_classes, camera, label)
        for quantity in QUANTITIES:
            _remove(self.drift_psi, camera, quantity)
        _remove(self.drift_score, camera)


def _remove(metric, *labels: str) -> None:
    """A series removed if it exists (a camera without drift never had its drift series)."""
    with contextlib.suppress(KeyError):
        metric.remove(*labels)
