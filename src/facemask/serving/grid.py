"""What the camera grid page (`/cameras/`) is sent: every half second a JSON update (each pulled
camera's state, counts, compliance, zones and its last answer's tracks; the alerts new since the
last update) and, for each camera analysed since, its newest analysed frame as a JPEG in a binary
message (`<name length byte><name><JPEG>`). Boxes and zones are drawn by the page, so a frame is
encoded once per camera and update whoever watches (at most `width` pixels wide)."""

from __future__ import annotations

import threading

import cv2

from facemask.imageio import encode_jpeg
from facemask.serving.cameras import PulledCameras


class GridFeed:
    def __init__(self, cameras: PulledCameras, width: int = 640, quality: int = 70):
        self.cameras, self.width, self.quality = cameras, width, quality
        self._jpegs: dict[str, tuple[int, bytes]] = {}  # camera -> (frames analysed, JPEG): shared by viewers
        self._lock = threading.Lock()

    def jpeg(self, name: str) -> tuple[int, bytes] | None:
        """The camera's newest analysed frame, encoded once."""
        latest = self.cameras.frames.get(name)
        if latest is None:
            return None
        count, frame = latest
        with self._lock:
            cached = self._jpegs.get(name)
            if cached is None or cached[0] != count:
                h, w = frame.shape[:2]
                if w > self.width:
                    frame = cv2.resize(frame, (self.width, round(h * self.width / w)), interpolation=cv2.INTER_AREA)
                cached = self._jpegs[name] = (count, encode_jpeg(frame, self.quality))
        return cached

    def update(self, sent: dict[str, int], alerts_seen: int) -> tuple[dict, list[bytes], int]:
        """The JSON update, the binary frame messages the viewer has not had (`sent`: camera ->
        frames analysed when last sent, updated here) and the alert count to pass next time."""
        cams = self.cameras
        zones = {c.name: [z.model_dump(mode="json") for z in c.zones] for c in cams.cfg.sources}
        tiles = []
        for health in cams.health():
            name = health["name"]
            latest = cams.frames.get(name)
            last = cams.latest.get(name) or {}
            size = latest[1].shape[1::-1] if latest else None
            tiles.append({**health, "zones": zones.get(name, []), "size": size,
                          "tracks": [{k: t[k] for k in ("id", "box", "label", "confidence", "colour", "alerting")}
                                     for t in last.get("tracks", [])]})  # fmt: skip
        total = cams.alert_count
        new = list(cams.timeline)[-(total - alerts_seen) :] if total > alerts_seen else []
        frames = []
        for name in cams.readers:
            encoded = self.jpeg(name)
            if encoded is not None and encoded[0] != sent.get(name):
                sent[name] = encoded[0]
                frames.append(bytes([len(name)]) + name.encode() + encoded[1])
        return {"cameras": tiles, "alerts": new}, frames, total
