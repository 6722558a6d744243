"""Associating faces across frames: greedy IoU matching into tracks with a smoothed class.

Smoothing is per track, over its last `window` decisions: `k_of_n` takes the class that holds at
least `k` of them (else keeps the previous one), `ema` averages the class probabilities. A track
also keeps since when its smoothed class has been any of the alert classes without a break.
"""

from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass, field

import numpy as np

from facemask.boxes import Box, match
from facemask.config import Stream
from facemask.pipeline import FaceResult


@dataclass
class Track:
    id: int
    box: Box
    first_seen: float
    last_seen: float
    labels: deque = field(default_factory=deque)
    ema: np.ndarray | None = None
    label: str | None = None  # the smoothed class
    confidence: float = 0.0
    since: float = 0.0  # when the smoothed class last changed
    alerting_since: float | None = None  # since when the smoothed class has been one of the alert classes,
    # unbroken (no_mask then incorrect is one stretch: a person wearing no mask, then the mask under the nose)
    alerted_at: float | None = None
    hits: int = 0
    score: float = 0.0  # the detector's score of the last face
    face: FaceResult | None = field(default=None, repr=False)  # the last face (its detection cuts the snapshot)

    def to_dict(self) -> dict:
        return {
            "id": self.id,
            "box": [round(v, 1) for v in self.box],
            "label": self.label,
            "confidence": round(self.confidence, 3),
            "score": round(self.score, 3),
            "since": self.since,
            "age_s": round(self.last_seen - self.first_seen, 2),
        }


class Tracker:
    """IoU tracker: each face, most confident first, joins the unclaimed live track it overlaps most
    (`boxes.match`, IoU >= `iou_match`), or starts one."""

    def __init__(self, cfg: Stream, labels: list[str]):
        self.cfg, self.labels = cfg, labels
        self.tracks: dict[int, Track] = {}
        self._next = 1

    def assign(self, faces: list[FaceResult]) -> dict[int, Track]:
        """{face index: the live track it would join}; faces that would start a track are left out.
        Changes nothing (`update` joins them)."""
        live = list(self.tracks.values())
        if not live or not faces:
            return {}
        pairs = match(
            [t.box for t in live], [f.box for f in faces], np.array([f.score for f in faces]), self.cfg.iou_match
        )
        return {face: live[track] for track, face in pairs.items()}

    def disputes(self, faces: list[FaceResult]) -> bool:
        """Whether any face would start a track or answers another class than its track is called."""
        assigned = self.assign(faces)
        return any(i not in assigned or assigned[i].label != face.label for i, face in enumerate(faces))

    def update(self, faces: list[FaceResult], now: float) -> list[Track]:
        """Tracks seen in this frame (in the order of `faces`); tracks unseen for too long end."""
        assigned = self.assign(faces)
        seen = []
        for i, face in enumerate(faces):
            track = assigned.get(i)
            if track is None:
                track = Track(self._next, face.box, now, now, deque(maxlen=self.cfg.smoothing.window), since=now)
                self.tracks[track.id] = track
                self._next += 1
            track.box, track.last_seen, track.hits, track.score = face.box, now, track.hits + 1, face.score
            track.face = face
            self._smooth(track, face, now)
            seen.append(track)
        for tid in [t.id for t in self.tracks.values() if now - t.last_seen > self.cfg.max_missed_s]:
            del self.tracks[tid]
        return seen

    def _smooth(self, track: Track, face: FaceResult, now: float) -> None:
        s = self.cfg.smoothing
        track.labels.append(face.label)
        if s.method == "ema":
            p = np.array([face.probabilities[lb] for lb in self.labels])
            track.ema = p if track.ema is None else s.ema_alpha * p + (1 - s.ema_alpha) * track.ema
            k = int(track.ema.argmax())
            label, confidence = self.labels[k], float(track.ema[k])
        else:
            label, count = Counter(track.labels).most_common(1)[0]
            confidence = count / len(track.labels)
            if count < min(s.k, len(track.labels)) and track.label is not None:
                label = track.label  # no class holds k of the last n: keep the previous decision
        if label != track.label:
            alerting = label in self.cfg.alerts.classes
            if not alerting:
                track.alerting_since = None
            elif track.label not in self.cfg.alerts.classes:
                track.alerting_since = now
            track.label, track.since = label, now
        track.confidence = confidence
