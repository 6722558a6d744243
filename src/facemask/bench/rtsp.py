"""Real clips as cameras, for the camera benchmarks and tests: the shared clips, and GStreamer's RTSP
server (`rtsp_server.py` beside this module, run by the system python3; `make rtsp-server` installs
it) serving video files as rtsp://127.0.0.1:<port>/<name>."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from facemask.config import ConfigError
from facemask.data.fetch import MIRROR_ENV, mirror_root
from facemask.subprocesses import free_port, stop

CLIPS = ("videos/mask-on-1280x720.mp4", "videos/street-crowd-360x640.mp4")  # close-up, street crowd
SERVER_SCRIPT = Path(__file__).with_name("rtsp_server.py")


def shared_clips() -> list[Path]:
    """The shared real clips (FACEMASK_MIRROR/videos)."""
    root = mirror_root()
    if root is None:
        raise ConfigError(f"set {MIRROR_ENV} to the folder holding videos/ (the shared clips)")
    clips = [root / c for c in CLIPS]
    if missing := [str(c) for c in clips if not c.is_file()]:
        raise ConfigError(f"missing clips: {missing}")
    return clips


class RtspServer:
    """The RTSP server process serving `mounts` (name -> MP4 file); each client gets its file from the
    start, in real time. Stop and start it again on the same port to drop and restore every stream."""

    def __init__(self, mounts: dict[str, Path], log: Path):
        self.mounts, self.log, self.port, self.proc = mounts, log, free_port(), None

    def url(self, name: str) -> str:
        return f"rtsp://127.0.0.1:{self.port}/{name}"

    def start(self, timeout: float = 20.0) -> None:
        args = [f"{name}={path}" for name, path in self.mounts.items()]
        started = self.log.read_text().count("ready") if self.log.is_file() else 0
        with self.log.open("a") as fh:
            self.proc = subprocess.Popen(
                ["/usr/bin/python3", str(SERVER_SCRIPT), str(self.port), *args],
                stdout=fh, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        deadline = time.time() + timeout
        while self.log.read_text().count("ready") == started:  # its own "ready", not an earlier one's
            if self.proc.poll() is not None or time.time() > deadline:
                print(self.log.read_text()[-2000:], file=sys.stderr)
                raise RuntimeError("the RTSP server did not start (`make rtsp-server` installs it)")
            time.sleep(0.1)

    def stop(self) -> None:
        if self.proc is not None:
            stop(self.proc)
            self.proc = None
