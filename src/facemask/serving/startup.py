"""A service that cannot start ends with its reason and exit code 3, instead of BentoML restarting its
worker in a loop (a missing or corrupt model, a bad cameras list or setting never fixes itself).

The worker that fails writes the reason where the server's main process (`bentoml serve`, its
parent) finds it, and asks that process to stop; the main process, on its way out, prints the reason
and exits with `EXIT_CODE`, so a supervisor (systemd, Docker, Kubernetes) sees a failed start.
"""

from __future__ import annotations

import atexit
import logging
import os
import signal
import sys
import tempfile
from pathlib import Path
from typing import NoReturn

EXIT_CODE = 3
log = logging.getLogger(__name__)


def _reason_file(server_pid: int) -> Path:
    return Path(tempfile.gettempdir()) / f"facemask-start-failed-{server_pid}"


def watch_for_failed_start() -> None:
    """In the server's main process: exit with EXIT_CODE, after printing the reason, if a worker
    failed to start (harmless anywhere else: nothing writes a reason for this process)."""
    pid = os.getpid()

    def check() -> None:
        reason_file = _reason_file(pid)
        if reason_file.is_file():
            reason = reason_file.read_text(encoding="utf-8")
            reason_file.unlink(missing_ok=True)
            print(f"facemask: the service could not start: {reason}", file=sys.stderr, flush=True)
            os._exit(EXIT_CODE)

    atexit.register(check)


def fail_start(reason: str) -> NoReturn:
    """In a worker: log the reason, stop the whole server with it (exit code 3), end this worker."""
    log.critical("the service cannot start: %s", reason)
    server = os.getppid()
    _reason_file(server).write_text(reason, encoding="utf-8")
    os.kill(server, signal.SIGTERM)
    logging.shutdown()
    os._exit(EXIT_CODE)
