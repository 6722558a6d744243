"""Pulling a camera: one reader thread per configured camera (RTSP, HTTP/MJPEG, a video file or a
device index, through OpenCV's FFmpeg backend), sampling `fps` frames a second and keeping only the
newest one for the analysis (a slow model drops frames; it never falls behind the camera).

A source that fails to open, stops answering for `read_timeout_s` or ends is reconnected with an
exponential back-off (tenacity); after `reconnect.fail_after` attempts in a row the camera shows
`failed` with the last error and keeps trying at the longest wait. A video file is read at its own
frame rate, as a camera would deliver it, and starts over when it ends.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from dataclasses import dataclass

import cv2
import numpy as np
from tenacity import RetryCallState, Retrying, retry_if_exception_type, wait_exponential

from facemask.config import Camera, Cameras
from facemask.errors import FacemaskError

log = logging.getLogger(__name__)
STATES = ("connecting", "connected", "reconnecting", "failed", "stopped")
_CREDENTIALS = re.compile(r"(?<=://)[^/@\s]+@")


class CameraSourceError(FacemaskError):
    """A camera's source could not be opened, stopped answering or ended."""


def public_source(source: str | int) -> str | int:
    """The source with any user:password in its URL masked (it is shown on /cameras and in logs)."""
    return _CREDENTIALS.sub("***@", source) if isinstance(source, str) else source


@dataclass
class Sample:
    """A frame taken for analysis: the BGR image, when it was read (epoch s) and its number."""

    frame: np.ndarray
    time: float
    seq: int


class CameraReader:
    """Reads one camera in a thread of its own. `take()` hands the newest sampled frame over once;
    `on_frame` (if given) is called after each new sample, e.g. to wake the analysis."""

    def __init__(self, camera: Camera, cfg: Cameras, on_frame=None):
        self.camera, self.cfg, self.on_frame = camera, cfg, on_frame
        self.state, self.last_error = "connecting", None  # the error while not connected
        self.last_drop: str | None = None  # why the last connection ended (kept once reconnected)
        self.frames_read = self.frames_sampled = self.frames_dropped = self.connections = 0
        self.frames_bad = 0  # frames that could not be read or analysed (skipped)
        self.connected_since: float | None = None
        self._sample: Sample | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"camera-{camera.name}", daemon=True)

    def start(self) -> CameraReader:
        self._thread.start()
        return self

    def take(self) -> Sample | None:
        """The newest sampled frame not taken yet, or None."""
        with self._lock:
            sample, self._sample = self._sample, None
        return sample

    @property
    def waiting_since(self) -> float | None:
        """When the waiting sample was read (None: nothing waits)."""
        sample = self._sample
        return sample.time if sample is not None else None

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._thread.join(timeout)
        self.state = "stopped"

    def health(self) -> dict:
        return {
            "name": self.camera.name,
            "source": public_source(self.camera.source),
            "state": self.state,
            "last_error": self.last_error,
            "last_drop": self.last_drop,
            "connected_since": self.connected_since,
            "connections": self.connections,
            "frames_read": self.frames_read,
            "frames_sampled": self.frames_sampled,
            "frames_dropped": self.frames_dropped,
            "frames_bad": self.frames_bad,
        }

    # the thread

    def _run(self) -> None:
        r = self.cfg.reconnect
        while not self._stop.is_set():
            retrying = Retrying(
                retry=retry_if_exception_type(CameraSourceError),
                wait=wait_exponential(multiplier=r.initial_s, max=r.max_s),
                stop=lambda _: self._stop.is_set(),
                sleep=self._stop.wait,  # woken at once by stop()
                before_sleep=self._failed_attempt,
                reraise=True,
            )
            try:
                capture = retrying(self._open)
            except CameraSourceError:
                break  # stopped while waiting
            try:
                self._read(capture)
            except CameraSourceError as err:
                self.last_drop = str(err)
                self._failed(err, attempt=1)
                log.warning("camera %s: %s; reconnecting", self.camera.name, err)
                self._stop.wait(r.initial_s)
            finally:
                capture.release()
                self.connected_since = None
        self.state = "stopped"

    def _failed_attempt(self, state: RetryCallState) -> None:
        self._failed(state.outcome.exception(), state.attempt_number)

    def _failed(self, err: BaseException | None, attempt: int) -> None:
        self.last_error = str(err)
        self.state = "failed" if attempt >= self.cfg.reconnect.fail_after else "reconnecting"

    def _open(self) -> cv2.VideoCapture:
        source = self.camera.source
        timeouts = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, int(self.cfg.open_timeout_s * 1000),
                    cv2.CAP_PROP_READ_TIMEOUT_MSEC, int(self.cfg.read_timeout_s * 1000)]  # fmt: skip
        if isinstance(source, int):
            capture = cv2.VideoCapture(source, cv2.CAP_ANY, timeouts)
        else:
            capture = cv2.VideoCapture(source, cv2.CAP_FFMPEG, timeouts)
        if not capture.isOpened():
            capture.release()
            raise CameraSourceError(f"cannot open {public_source(source)}")
        self.state, self.last_error = "connected", None
        self.connections += 1
        self.connected_since = time.time()
        log.info("camera %s: connected to %s", self.camera.name, public_source(source))
        return capture

    def _read(self, capture: cv2.VideoCapture) -> None:
        """Reads until the source fails; every 1/fps seconds a frame becomes the waiting sample. Every
        frame is decoded (`grab`), only the sampled ones converted to BGR (`retrieve`)."""
        is_file = isinstance(self.camera.source, str) and "://" not in self.camera.source
        file_fps = capture.get(cv2.CAP_PROP_FPS) if is_file else 0.0
        file_frames = int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) if is_file else 0
        start = time.monotonic()
        interval, next_sample, read = 1.0 / self.camera.fps, 0.0, 0
        while not self._stop.is_set():
            if not capture.grab():
                if read and is_file and read < file_frames - 1:  # FFmpeg stops at a corrupt stretch
                    self.frames_bad += 1
                    raise CameraSourceError(f"the video file is unreadable after frame {read} of {file_frames}")
                if read and is_file:
                    raise CameraSourceError("the video file ended")
                raise CameraSourceError("the stream ended or stopped answering" if read else "no frame from the source")
            read += 1
            self.frames_read += 1
            if file_fps > 0:  # a file is paced at its own frame rate, as a camera delivers it
                self._stop.wait(max(0.0, start + read / file_fps - time.monotonic()))
            now = time.monotonic()
            if now < next_sample:
                continue
            ok, frame = capture.retrieve()
            if not ok or frame is None or frame.ndim != 3 or frame.shape[2] != 3 or frame.size == 0:
                self.frames_bad += 1  # (a stream's corrupt packets are skipped by FFmpeg itself)
                continue
            next_sample = max(next_sample + interval, now - interval)  # steady rate, no burst after a stall
            with self._lock:
                if self._sample is not None:
                    self.frames_dropped += 1  # the analysis had not taken the previous one
                self.frames_sampled += 1
                self._sample = Sample(frame, time.time(), self.frames_sampled)
            if self.on_frame is not None:
                self.on_frame()
