"""`python -m facemask.stream.client SOURCE --url ws://HOST:PORT/live/ws/CAMERA [--out FILE] [--show]`

Streams a webcam (an index such as 0), an RTSP/HTTP URL or a video file to the service, frame by
frame, and shows or writes the annotated video: track ids, smoothed classes and alert banners.
When the service goes away it reconnects (with backoff) and carries on from the same frame.
The API key, when the service requires one, is read from FACEMASK_API_KEY (never a command-line
argument: those show in the process list).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

import cv2
from tenacity import Retrying, before_sleep_log, retry_if_exception, stop_after_delay, wait_exponential
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI
from websockets.sync.client import ClientConnection, connect

from facemask.draw import draw_tracks
from facemask.imageio import encode_jpeg

log = logging.getLogger("facemask.client")
BANNER_S = 3.0


def open_source(source: str) -> cv2.VideoCapture:
    """A webcam index, a stream URL or a video file; a clear error when it cannot be opened."""
    if source.isdigit():
        cap = cv2.VideoCapture(int(source))
    elif "://" in source:
        cap = cv2.VideoCapture(source)
    else:
        if not Path(source).is_file():
            raise FileNotFoundError(f"video file not found: {source}")
        cap = cv2.VideoCapture(source)
    if not cap.isOpened():
        raise OSError(f"cannot open video source {source!r}")
    return cap


def _transient(err: BaseException) -> bool:
    """Worth retrying: the service is down or restarting, including a server that closes the socket
    mid-handshake or answers 503 while it shuts down or starts (not an HTTP refusal such as 403)."""
    if isinstance(err, InvalidStatus):  # 503: starting up or shutting down; 403 and the rest are answers
        return err.response.status_code == 503
    return isinstance(err, OSError | InvalidHandshake | ConnectionClosed | TimeoutError)


class StreamClient:
    """One connection per camera; `ask()` sends a frame and waits for its answer, reconnecting."""

    def __init__(self, url: str, timeout_s: float = 30.0, max_wait_s: float = 60.0, api_key: str | None = None):
        self.url, self.timeout_s, self.max_wait_s = url, timeout_s, max_wait_s
        self.headers = {"X-API-Key": api_key} if api_key else None
        self.ws: ClientConnection | None = None
        self.reconnects = 0

    def _connect(self) -> ClientConnection:
        """A connection, retried with exponential back-off (tenacity) while the service is down, for
        at most `max_wait_s`; a refusal (403: the API key) is final at once."""
        retrying = Retrying(
            retry=retry_if_exception(_transient),
            wait=wait_exponential(multiplier=0.5, max=5.0),
            stop=stop_after_delay(self.max_wait_s),
            before_sleep=before_sleep_log(log, logging.WARNING),
            reraise=True,
        )
        try:
            for attempt in retrying:
                with attempt:
                    return connect(
                        self.url, open_timeout=self.timeout_s, max_size=2**22, additional_headers=self.headers
                    )
        except InvalidStatus as err:
            if err.response.status_code == 403:  # refused, not down: waiting will not help
                raise ConnectionError(f"the service refused the stream: {err} (API key? FACEMASK_API_KEY)") from err
            if err.response.status_code == 503:
                raise ConnectionError(f"service at {self.url} unavailable for {self.max_wait_s:.0f} s: {err}") from err
            raise
        except (OSError, InvalidHandshake, ConnectionClosed, TimeoutError) as err:
            raise ConnectionError(f"service at {self.url} unreachable for {self.max_wait_s:.0f} s: {err}") from err
        raise AssertionError("unreachable")  # pragma: no cover (Retrying either returns or raises)

    def ask(self, jpeg: bytes) -> dict:
        """The answer to one frame; reconnects while the service comes back within `max_wait_s`."""
        deadline = time.monotonic() + self.max_wait_s
        while True:
            if self.ws is None:
                self.ws = self._connect()
            try:
                self.ws.send(jpeg)
                return json.loads(self.ws.recv(timeout=self.timeout_s))
            except (ConnectionClosed, OSError, TimeoutError) as err:
                self.ws, self.reconnects = None, self.reconnects + 1
                if time.monotonic() > deadline:  # it accepts connections but never answers this frame
                    raise ConnectionError(f"no answer from {self.url} for {self.max_wait_s:.0f} s") from err
                log.warning("connection lost (%s); reconnecting", type(err).__name__)

    def close(self) -> None:
        if self.ws is not None:
            self.ws.close()


def run(args: argparse.Namespace) -> dict:
    cap = open_source(args.source)
    fps = cap.get(cv2.CAP_PROP_FPS) or 25.0
    client = StreamClient(args.url, max_wait_s=args.max_wait, api_key=os.environ.get("FACEMASK_API_KEY"))
    writer = None
    frames = alerts = errors = 0
    banner, banner_until = None, 0.0
    started = time.perf_counter()
    try:
        while args.max_frames is None or frames < args.max_frames:
            ok, frame = cap.read()
            if not ok:
                break
            if args.realtime:  # a file played at its own frame rate, as a camera would deliver it
                time.sleep(max(0.0, started + frames / fps - time.perf_counter()))
            scale = min(1.0, args.width / frame.shape[1])
            small = cv2.resize(frame, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA) if scale < 1 else frame
            answer = client.ask(encode_jpeg(small, 85))
            frames += 1
            if "error" in answer:
                errors += 1
                log.warning("frame %d refused: %s", frames, answer["error"])
                continue
            for alert in answer["alerts"]:
                alerts += 1
                banner = f"ALERT person #{alert['track']}: {alert['class']} for {alert['duration_s']:.1f} s"
                banner_until = time.perf_counter() + BANNER_S
                log.warning("%s (camera %s)", banner, answer["camera"])
            shown = draw_tracks(
                frame, answer["tracks"], 1 / scale, banner if time.perf_counter() < banner_until else None
            )
            if args.out:
                if writer is None:
                    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
                    writer = cv2.VideoWriter(
                        str(args.out), cv2.VideoWriter_fourcc(*"mp4v"), fps, (shown.shape[1], shown.shape[0])
                    )
                writer.write(shown)
            if args.show:
                cv2.imshow("facemask", shown)
                if cv2.waitKey(1) & 0xFF in (27, ord("q")):
                    break
    finally:
        cap.release()
        client.close()
        if writer is not None:
            writer.release()
        if args.show:
            cv2.destroyAllWindows()
    seconds = time.perf_counter() - started
    return {
        "frames": frames,
        "alerts": alerts,
        "refused": errors,
        "reconnects": client.reconnects,
        "fps": frames / seconds if seconds else 0.0,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m facemask.stream.client",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("source", help="webcam index (0), rtsp:// or http:// URL, or a video file")
    parser.add_argument("--url", default="ws://127.0.0.1:3000/live/ws/camera1", help="the service's stream URL")
    parser.add_argument("--out", type=Path, help="write the annotated video here (mp4)")
    parser.add_argument("--show", action="store_true", help="show the annotated video in a window")
    parser.add_argument("--width", type=int, default=640, help="frames are sent at most this wide")
    parser.add_argument("--max-frames", type=int, help="stop after this many frames")
    parser.add_argument("--realtime", action="store_true", help="send a video file at its own frame rate")
    parser.add_argument("--max-wait", type=float, default=60.0, help="give up after the service is gone this long")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        summary = run(args)
    except (FileNotFoundError, OSError, ConnectionError, InvalidURI) as err:
        print(f"client: {err}", file=sys.stderr)
        return 2
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
