"""Event media: for each alert, the best view of the offending person (a JPEG) and a clip from
`pre_roll_s` before the alert to `post_roll_s` after it (an H.264 MP4), faces blurred unless the
operator stores them (`stream.alerts.snapshots`, `stream.media.reveal_subject`).

A camera's `MediaRecorder` keeps its last `pre_roll_s` of analysed frames (references, thinned to
`max_fps` and shrunk to `max_side`: the frame loop copies nothing else); an alert opens a recording
that collects frames until `post_roll_s` after it, then hands it to the `MediaWriter`, whose thread
blurs, encodes and writes the files (atomically: a file that exists is complete). With
`stream.feedback` on it also keeps, for a reviewer, the region around the alerted face unblurred (the
other faces blurred) and where the face is in it (`<event id>.region.jpg` and `.region.json`).
"""

from __future__ import annotations

import json
import logging
import os
import queue
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np

from facemask.atomic_files import PART_SUFFIX, write_atomic
from facemask.boxes import Box, iou_matrix
from facemask.config import Feedback, Media, Stream
from facemask.imageio import encode_jpeg
from facemask.stream.retention import MediaRetention

log = logging.getLogger(__name__)
SUBJECT_COLOUR = (40, 40, 230)  # BGR: the alerted person's box in the snapshot
TIME_BASE = Fraction(1, 1000)  # clip timestamps in milliseconds: frames keep their real spacing


@dataclass(frozen=True)
class Shot:
    """One analysed frame kept for media: when, the frame (at most `max_side`), every face found in
    it and each tracked face's box and view score (detector score x its class probability)."""

    time: float
    frame: np.ndarray
    faces: tuple[Box, ...]
    tracks: dict[int, tuple[Box, float]]


@dataclass
class Recording:
    """The media of one alert, collecting frames until `end`."""

    event_id: str
    camera: str
    track: int
    alert_time: float
    end: float
    snapshot: Path
    clip: Path | None
    shots: list[Shot] = field(default_factory=list)
    region: Path | None = None  # with feedback on: the face's region kept unblurred for review


def media_names(camera: str, event_id: str, region: bool = False) -> dict[str, str]:
    """The media files of an event, relative to `media.dir` (the event record carries these);
    `region`: with the face's region kept for review (its box in the `.json` beside it)."""
    names = {"snapshot": f"{camera}/{event_id}.jpg", "clip": f"{camera}/{event_id}.mp4"}
    return {**names, "region": f"{camera}/{event_id}.region.jpg"} if region else names


def grown_box(box: Box, share: float, width: int, height: int) -> tuple[int, int, int, int]:
    """The whole pixels around a face: its box grown by `share` x its size on each side, in the frame."""
    x1, y1, x2, y2 = box
    gx, gy = (x2 - x1) * share, (y2 - y1) * share
    x1, y1 = max(0, int(x1 - gx)), max(0, int(y1 - gy))
    return x1, y1, min(width, int(np.ceil(x2 + gx))), min(height, int(np.ceil(y2 + gy)))


def _scaled(box, scale: float) -> Box:
    return tuple(round(float(v) * scale, 1) for v in box)


def _detected_box(face) -> Box:
    """A classified face's box as the detector gave it (the one in the frame's face list)."""
    return face.detection.box if face.detection is not None else face.box


BLOCKS = 2  # a blurred face: 2x2 blocks, smoothly washed. At 4x4 the detectors of other training seeds
# still saw a face in the wash (candidates up to 0.72 on the entrance clip's media, seeds 43 and 44);
# at 2x2 none of three seeds' detectors offers any candidate (score >= 0.1) in a blurred frame


def blur_faces(frame: np.ndarray, faces: tuple[Box, ...], keep: Box | None = None) -> np.ndarray:
    """A copy of `frame` with each face (grown by a fifth) blurred past recognition and past detection
    (`BLOCKS`); `keep`: a face left sharp (the same box)."""
    out = frame.copy()
    h, w = out.shape[:2]
    for box in faces:
        if keep is not None and box == keep:
            continue
        x1, y1, x2, y2 = grown_box(box, 0.2, w, h)
        if x2 - x1 < 2 or y2 - y1 < 2:
            continue
        small = cv2.resize(out[y1:y2, x1:x2], (BLOCKS, BLOCKS), interpolation=cv2.INTER_AREA)
        out[y1:y2, x1:x2] = cv2.resize(small, (x2 - x1, y2 - y1), interpolation=cv2.INTER_LINEAR)  # a smooth wash
    return out


class MediaWriter:
    """Encodes finished recordings on one background thread: the snapshot (the frame where the
    alerted face scored best, its box drawn) and the clip. At most `max_pending` wait; beyond that a
    recording keeps its snapshot only (logged), so a burst of alerts never holds the frame loop."""

    def __init__(self, cfg: Media, mode: str, feedback: Feedback | None = None):
        self.cfg, self.mode = cfg, mode  # mode: stream.alerts.snapshots (store | blur | off)
        self.feedback = feedback if feedback is not None and feedback.enabled else None
        self._queue: queue.Queue[Recording | None] = queue.Queue()
        self._pending = 0
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="event-media", daemon=True)
        self._thread.start()

    def submit(self, recording: Recording) -> None:
        with self._lock:
            if self._pending >= self.cfg.max_pending and recording.clip is not None:
                log.warning("event %s: %d clips waiting to be written; this one keeps its snapshot only",
                            recording.event_id, self._pending)  # fmt: skip
                recording.clip = None
            self._pending += 1
        self._queue.put(recording)

    def _run(self) -> None:
        while (recording := self._queue.get()) is not None:
            try:
                self.write(recording)
            except Exception:  # a full disk, a codec error: logged, the next event still gets its media
                log.exception("event %s: its media could not be written", recording.event_id)
            finally:
                with self._lock:
                    self._pending -= 1

    def _private(self, shot: Shot, track: int) -> np.ndarray:
        if self.mode == "store":
            return shot.frame
        keep = shot.tracks.get(track, (None,))[0] if self.cfg.reveal_subject else None
        return blur_faces(shot.frame, shot.faces, keep)

    def write(self, recording: Recording) -> None:
        shots = [s for s in recording.shots if recording.track in s.tracks] or recording.shots[-1:]
        best = max(shots, key=lambda s: s.tracks.get(recording.track, (None, 0.0))[1])
        image = self._private(best, recording.track)
        if recording.track in best.tracks:
            x1, y1, x2, y2 = (round(v) for v in best.tracks[recording.track][0])
            cv2.rectangle(image, (x1, y1), (x2, y2), SUBJECT_COLOUR, 2)
        write_atomic(recording.snapshot, encode_jpeg(image, 90))
        if recording.region is not None and self.feedback is not None and recording.track in best.tracks:
            self._write_region(recording, best)
        if recording.clip is not None:
            self._write_clip(recording)

    def _write_region(self, recording: Recording, shot: Shot) -> None:
        """The alerted face's region of its best view, that face sharp and every other one blurred, and
        where the face is in it: what a reviewer judges and a verdict turns into a training scene."""
        subject = shot.tracks[recording.track][0]
        h, w = shot.frame.shape[:2]
        x1, y1, x2, y2 = grown_box(subject, self.feedback.context, w, h)
        overlap = iou_matrix([subject], list(shot.faces))[0] if shot.faces else np.zeros(0)
        others = tuple(f for f, o in zip(shot.faces, overlap, strict=True) if o < 0.5)
        region = blur_faces(shot.frame, others)[y1:y2, x1:x2]
        box = [round(float(v), 1) for v in (subject[0] - x1, subject[1] - y1, subject[2] - x1, subject[3] - y1)]
        about = {"event": recording.event_id, "camera": recording.camera, "time": shot.time, "box": box,
                 "width": x2 - x1, "height": y2 - y1, "origin": [x1, y1],
                 "frame_box": [round(float(v), 1) for v in subject]}  # fmt: skip
        write_atomic(recording.region, encode_jpeg(region, 95))
        write_atomic(recording.region.with_suffix(".json"), json.dumps(about).encode("utf-8"))

    def _write_clip(self, recording: Recording) -> None:
        import av  # only a process that records clips pays for it

        shots, last = [], None
        for shot in recording.shots:  # strictly increasing times; one frame size (the first one's)
            if last is None or (shot.time > last.time and shot.frame.shape == last.frame.shape):
                shots.append(shot)
                last = shot
        h, w = shots[0].frame.shape[:2]
        tmp = recording.clip.with_name(recording.clip.name + PART_SUFFIX)
        tmp.parent.mkdir(parents=True, exist_ok=True)
        codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
        with av.open(str(tmp), "w", format="mp4", options={"movflags": "+faststart"}) as container:
            # when it starts, for a reader that lines the clip up with the event log
            about = {"event": recording.event_id, "camera": recording.camera, "alert": recording.alert_time}
            container.metadata["comment"] = json.dumps({**about, "start": shots[0].time})
            stream = container.add_stream(codec, rate=Fraction(self.cfg.max_fps).limit_denominator(1000))
            stream.width, stream.height, stream.pix_fmt = w - w % 2, h - h % 2, "yuv420p"
            stream.codec_context.time_base = TIME_BASE
            stream.codec_context.thread_count = 1  # beside the pipeline's threads
            if codec == "libx264":
                stream.options = {"preset": "ultrafast", "crf": "28"}  # the lightest: beside live cameras
            t0 = shots[0].time
            for shot in shots:
                frame = av.VideoFrame.from_ndarray(
                    np.ascontiguousarray(self._private(shot, recording.track)[: h - h % 2, : w - w % 2]), format="bgr24"
                )
                frame.pts, frame.time_base = round((shot.time - t0) * 1000), TIME_BASE
                container.mux(stream.encode(frame))
            container.mux(stream.encode(None))
        os.replace(tmp, recording.clip)

    def close(self, wait_s: float = 30.0) -> None:
        """Write what is waiting (up to `wait_s`), then stop."""
        self._queue.put(None)
        self._thread.join(wait_s)


class MediaRecorder:
    """One camera's frames kept for event media and its recordings in progress."""

    def __init__(self, camera: str, cfg: Media, root: Path, writer: MediaWriter):
        """`root`: the media folder (`Stream.media_dir`)."""
        self.camera, self.cfg, self.root, self.writer = camera, cfg, Path(root), writer
        self.buffer: deque[Shot] = deque()
        self.recordings: list[Recording] = []
        self._due = -np.inf  # when the next frame is due to be kept

    def add(self, now: float, frame: np.ndarray, faces: list, tracks: list) -> None:
        """This frame's faces (`Face`s) and the tracks seen in it: kept for the pre-roll and added to
        every open recording (thinned to `max_fps`); recordings whose post-roll is over are written."""
        interval = 1 / self.cfg.max_fps
        if not self.cfg.clips or now >= self._due - interval / 4:  # a quarter interval of jitter allowed
            self._due = max(self._due, now) + interval
            scale = min(1.0, self.cfg.max_side / max(frame.shape[:2]))
            if scale < 1.0:
                frame = cv2.resize(frame, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
            views = {
                t.id: (_scaled(_detected_box(t.face), scale), t.face.score * t.face.probabilities.get(t.label, 0.0))
                for t in tracks
                if t.face is not None
            }
            shot = Shot(now, frame, tuple(_scaled(f.box, scale) for f in faces), views)
            self.buffer.append(shot)
            for recording in self.recordings:
                recording.shots.append(shot)
        keep_s = self.cfg.pre_roll_s if self.cfg.clips else 0.0  # no clips: the newest frame only
        while len(self.buffer) > 1 and now - self.buffer[0].time > keep_s:
            self.buffer.popleft()
        self._finish([r for r in self.recordings if now >= r.end])

    def record(self, event_id: str, track: int, now: float) -> dict[str, str]:
        """Start the media of an alert raised at `now` (call after `add` of its frame); returns the
        media names for the event record."""
        names = media_names(self.camera, event_id, region=self.writer.feedback is not None)
        recording = Recording(
            event_id,
            self.camera,
            track,
            now,
            now + self.cfg.post_roll_s if self.cfg.clips else now,
            self.root / names["snapshot"],
            self.root / names["clip"] if self.cfg.clips else None,
            shots=[s for s in self.buffer if now - s.time <= self.cfg.pre_roll_s],
            region=self.root / names["region"] if "region" in names else None,
        )
        if not self.cfg.clips:
            names.pop("clip")
        self.recordings.append(recording)
        self._finish([recording] if now >= recording.end else [])
        return names

    def _finish(self, done: list[Recording]) -> None:
        for recording in done:
            self.recordings.remove(recording)
            if recording.shots:
                self.writer.submit(recording)

    def flush(self) -> None:
        """The stream paused (its last connection closed): open recordings are written with the
        frames they have."""
        self._finish(list(self.recordings))

    def close(self) -> None:
        self.flush()
        self.buffer.clear()


class EventMedia:
    """A serving worker's event media: one writer, the retention sweeps, a recorder per camera."""

    def __init__(self, cfg: Stream, protected: Callable[[], set[str]] = set):
        """`cfg.alerts.snapshots` off: no media at all; `protected()`: the ids of events whose media
        retention must keep (undelivered)."""
        self.cfg, self.root = cfg.media, cfg.media_dir
        on = cfg.alerts.snapshots != "off"
        self.writer = MediaWriter(cfg.media, cfg.alerts.snapshots, cfg.feedback) if on else None
        self.retention = MediaRetention(cfg.media, self.root, protected).start()
        # reviewed scenes wait under the same retention for `make retrain` to pull them
        self.feedback_retention = MediaRetention(cfg.media, cfg.feedback_dir).start() if cfg.feedback.enabled else None

    def recorder(self, camera: str) -> MediaRecorder | None:
        return MediaRecorder(camera, self.cfg, self.root, self.writer) if self.writer is not None else None

    def close(self) -> None:
        self.retention.close()
        if self.feedback_retention is not None:
            self.feedback_retention.close()
        if self.writer is not None:
            self.writer.close()
