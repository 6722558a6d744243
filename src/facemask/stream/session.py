"""One camera's live state: detection (with frame differencing), tracks, alerts and counters.

A `CameraSession` lives in the worker that holds the camera's connection; `process()` takes one
BGR frame and its timestamp and returns what a client draws: tracks with their smoothed class,
the alerts raised by this frame and the camera's compliance so far. It is `begin()` (detection)
then `finish()` (tracks, alerts), split so that a batcher can classify several cameras' faces in
one batch between the two. Any of a pool's identical pipelines may be given; `lock` keeps one
camera's frames in order.
"""

from __future__ import annotations

import base64
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field

import cv2
import numpy as np

from facemask.boxes import search_regions
from facemask.config import Stream
from facemask.detection import Face
from facemask.detection.align import crop_face
from facemask.draw import hex_colour, label_colours
from facemask.drift import DriftMonitor
from facemask.imageio import encode_jpeg
from facemask.pipeline import FaceResult, MaskPipeline
from facemask.stream.media import MediaRecorder
from facemask.stream.sinks import EventSinks
from facemask.stream.tracker import Track, Tracker
from facemask.stream.zones import ZoneFilter

REGION_MIN_SIDE = 128  # frame px: a search region never smaller (a small face keeps the context the
# detector needs: on 40 training scenes 141 of 142 faces found as in the whole frame, 137 at 64 px)


@dataclass(frozen=True)
class Pending:
    """A frame between `CameraSession.begin` and `finish`: its faces found, not yet classified."""

    frame: np.ndarray
    now: float
    found: list[Face]  # every face the detector found (all are blurred in stored media)
    faces: list[Face]  # those inside the camera's zones: classified, tracked, alerted on
    detection: str  # how they were found: full, regions or reused
    pipeline: MaskPipeline | None = None  # the pipeline that found them (a disputed region pass reruns on it)


@dataclass
class Counters:
    frames: int = 0
    detector_runs: int = 0  # frames the detector ran on (the whole frame or regions of it)
    full_detections: int = 0  # of which on the whole frame
    faces: Counter = field(default_factory=Counter)  # smoothed class per track and frame
    alerts: int = 0

    def share(self, label: str) -> float | None:
        """The share of faces (per track and frame) of class `label`; None before any face."""
        total = sum(self.faces.values())
        return self.faces[label] / total if total else None


class CameraSession:
    def __init__(
        self,
        camera: str,
        pipeline: MaskPipeline,
        cfg: Stream,
        sinks: EventSinks | None = None,
        zones: ZoneFilter | None = None,
        media: MediaRecorder | None = None,
        profile: str | None = None,
        drift: DriftMonitor | None = None,
    ):
        """`zones`: the faces this camera watches (default: all); `media`: keeps the frames for each
        alert's snapshot and clip (default: the event carries its face crop only); `profile`: the
        detection profile its faces are found with (`MaskPipeline.profile`; None: the default);
        `drift`: watches what its full passes find against the classifier's reference."""
        self.camera, self.pipeline, self.cfg, self.sinks, self.media = camera, pipeline, cfg, sinks, media
        self.profile, self.drift = profile, drift
        self.zones = zones or ZoneFilter([])
        self.tracker = Tracker(cfg, pipeline.labels)
        self.compliant = pipeline.compliant
        self.colours = {lb: hex_colour(c) for lb, c in label_colours(pipeline.labels, self.compliant).items()}
        self.total, self.window = Counters(), Counters()
        self._faces: list[Face] = []
        self._thumb: np.ndarray | None = None
        self._reused = 0
        self._since_full = 0  # frames since the detector last searched the whole frame
        self._last_shape: tuple[int, ...] | None = None
        self._last_alert = -np.inf
        self._window_start: float | None = None
        self.lock = threading.Lock()
        self.last_frame = time.time()

    def _detect(self, frame: np.ndarray, pipeline: MaskPipeline) -> tuple[list[Face], str]:
        """The faces of this frame and how they were found: `reused` (the frame barely changed),
        `regions` (searched only around the live tracks' last faces: a face missed once is still
        looked for; `finish` replaces it by a full pass where it disputes a track's class) or `full`
        (at least every `regions.full_every` frames: new people appear there)."""
        diff, roi = self.cfg.frame_diff, self.cfg.regions
        h, w = frame.shape[:2]
        thumb = cv2.cvtColor(
            cv2.resize(frame, (64, max(1, round(64 * h / w))), interpolation=cv2.INTER_AREA), cv2.COLOR_BGR2GRAY
        ).astype(np.int16)
        self._since_full += 1
        if (
            diff.enabled
            and self._thumb is not None
            and self._thumb.shape == thumb.shape
            and self._reused < diff.max_reuse
            and float(np.abs(thumb - self._thumb).mean()) < diff.threshold
        ):
            self._reused += 1
            return self._faces, "reused"
        self._thumb, self._reused = thumb, 0
        known = [t.face.detection.box for t in self.tracker.tracks.values() if t.face and t.face.detection]
        if roi.enabled and known and self._since_full < roi.full_every and self._last_shape == frame.shape:
            regions = search_regions(known, frame.shape, roi.margin, REGION_MIN_SIDE)
            if sum((x2 - x1) * (y2 - y1) for x1, y1, x2, y2 in regions) < roi.max_share * h * w:
                self._faces = pipeline.detect_faces(frame, regions)
                return self._faces, "regions"
        return self._full(frame, pipeline), "full"

    def _full(self, frame: np.ndarray, pipeline: MaskPipeline) -> list[Face]:
        """The whole frame searched; the next region passes count from here."""
        self._faces, self._since_full, self._last_shape = pipeline.detect_faces(frame), 0, frame.shape
        return self._faces

    def begin(self, frame: np.ndarray, now: float | None = None, pipeline: MaskPipeline | None = None) -> Pending:
        """The first half of `process`: the frame checked and its faces found (the watched ones the
        detector scores `min_score` or more to be classified, possibly in one batch with other
        cameras' faces, then handed to `finish`)."""
        if frame is None or frame.ndim != 3 or frame.shape[2] != 3 or frame.size == 0:
            raise ValueError("expected a non-empty HxWx3 BGR frame")
        self.last_frame = time.time()
        now = self.last_frame if now is None else now
        pipeline = (pipeline or self.pipeline).profile(self.profile)
        found, detection = self._detect(frame, pipeline)
        return self._pending(frame, now, found, detection, pipeline)

    def _pending(
        self, frame: np.ndarray, now: float, found: list[Face], detection: str, pipeline: MaskPipeline
    ) -> Pending:
        watched = [f for f in found if self.zones.keeps(f.box, frame.shape)] if self.zones else found
        faces = [f for f in watched if f.score >= self.cfg.min_score]
        return Pending(frame, now, found, faces, detection, pipeline)

    def _full_pass(self, pending: Pending) -> tuple[Pending, list[FaceResult]]:
        """`pending`'s frame searched whole and classified: what a disputed region pass is replaced by."""
        frame, pipeline = pending.frame, pending.pipeline or self.pipeline
        full = self._pending(frame, pending.now, self._full(frame, pipeline), "full", pipeline)
        return full, pipeline.classify(frame, full.faces)

    def process(self, frame: np.ndarray, now: float | None = None, pipeline: MaskPipeline | None = None) -> dict:
        """One frame: `begin`, its watched faces classified, `finish`."""
        pending = self.begin(frame, now, pipeline)
        return self.finish(pending, pending.pipeline.classify(pending.frame, pending.faces))

    def finish(self, pending: Pending, results: list[FaceResult]) -> dict:
        """The second half of `process`: the classified faces of `pending` into tracks, alerts,
        media and counters; returns what a client draws."""
        if pending.detection == "regions" and self.tracker.disputes(results):
            # a region pass only confirms: a face it classes otherwise than its track (a borderline
            # face seen at another scale and alignment), or a new face, is decided by a full pass, so
            # region search never changes what a track is called, it only saves the passes that agree
            pending, results = self._full_pass(pending)
        frame, now, found, detection = pending.frame, pending.now, pending.found, pending.detection
        if self.drift is not None and detection == "full":  # the whole frame, as the reference's scenes
            self.drift.observe(results)
        tracks = self.tracker.update(results, now)
        if self.media is not None:  # every face found is blurred in the media, watched or not
            self.media.add(now, frame, found, tracks)
        alerts = [self._alert(frame, t, now) for t in tracks if self._should_alert(t, now)]
        for counters in (self.total, self.window):
            counters.frames += 1
            counters.detector_runs += detection != "reused"
            counters.full_detections += detection == "full"
            counters.faces.update(t.label for t in tracks)
            counters.alerts += len(alerts)
        stats = self._maybe_stats(now)
        return {
            "camera": self.camera,
            "time": now,
            "detector_ran": detection != "reused",
            "detection": detection,
            "profile": pending.pipeline.profile_name if pending.pipeline else None,
            "tracks": [
                {
                    **t.to_dict(),
                    "colour": self.colours.get(t.label),
                    "alerting": t.alerted_at is not None and t.label in self.cfg.alerts.classes,
                }
                for t in tracks
            ],
            "alerts": alerts,
            "compliance": self.total.share(self.compliant),
            "stats": stats,
        }

    def _should_alert(self, track: Track, now: float) -> bool:
        a = self.cfg.alerts
        return (
            track.alerting_since is not None
            and track.score >= a.min_score
            and now - track.alerting_since >= a.after_s  # no_mask then incorrect: one stretch
            and (track.alerted_at is None or now - track.alerted_at >= a.track_cooldown_s)
            and now - self._last_alert >= a.camera_cooldown_s
        )

    def _alert(self, frame: np.ndarray, track: Track, now: float) -> dict:
        """The alert event of `track`; its snapshot is cut from the track's own detection in this frame."""
        track.alerted_at = self._last_alert = now
        event = {
            "id": uuid.uuid4().hex,
            "type": "alert",
            "camera": self.camera,
            "track": track.id,
            "class": track.label,
            "start": track.alerting_since,
            "time": now,
            "duration_s": round(now - track.alerting_since, 2),
            "box": [round(v, 1) for v in track.box],
        }
        mode = self.cfg.alerts.snapshots
        if mode != "off":
            snapshot = crop_face(frame, track.face.detection, 128, 0.3, align=False)
            if mode == "blur":  # who it was cannot be read back; that a face was there can
                snapshot = cv2.GaussianBlur(snapshot, (0, 0), 8)
            event["snapshot_jpeg_b64"] = base64.b64encode(encode_jpeg(snapshot, 85)).decode("ascii")
            if self.media is not None:  # the best view and the clip, written after the post-roll
                event["media"] = self.media.record(event["id"], track.id, now)
        if self.sinks is not None:
            self.sinks.emit(event)
        return {k: v for k, v in event.items() if k != "snapshot_jpeg_b64"}

    def _maybe_stats(self, now: float) -> dict | None:
        """Every `stats_interval_s`: the window's counts as a `stats` event (for compliance figures)."""
        if self._window_start is None:
            self._window_start = now
        if now - self._window_start < self.cfg.stats_interval_s:
            return None
        return self._flush_window(now)

    def _flush_window(self, now: float) -> dict:
        w = self.window
        event = {
            "type": "stats",
            "camera": self.camera,
            "start": self._window_start,
            "time": now,
            "frames": w.frames,
            "detector_runs": w.detector_runs,
            "full_detections": w.full_detections,
            "alerts": w.alerts,
            "compliant": self.compliant,  # the class the compliance report counts as masked
            **{f"faces_{lb}": w.faces[lb] for lb in self.pipeline.labels},
        }
        if self.sinks is not None:
            self.sinks.emit(event)
        self.window, self._window_start = Counters(), now
        return event

    def close(self, now: float | None = None) -> None:
        """Flush the last (partial) stats window; recordings in progress are written as they are."""
        if self.window.frames:
            self._flush_window(time.time() if now is None else now)
        if self.media is not None:
            self.media.close()
