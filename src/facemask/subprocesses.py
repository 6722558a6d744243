"""Servers run as child processes (the benchmarks' Bento, the tests' MLflow and Bento): a free
loopback port, a wait until the server answers, and a stop that reaches every process it started."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable

import psutil


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(
    proc: subprocess.Popen, ready: Callable[[], bool], timeout_s: float, log_tail: Callable[[], str]
) -> None:
    """Poll `ready()` until it is true; RuntimeError (the log's tail in it) if the process exits or
    `timeout_s` passes first, after killing what it started."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited at start (code {proc.returncode}):\n{log_tail()}")
        with contextlib.suppress(OSError):  # not listening yet, or busy loading
            if ready():
                return
        time.sleep(0.5)
    stop(proc, signal.SIGKILL)
    raise RuntimeError(f"the server did not become ready in {timeout_s:.0f} s:\n{log_tail()}")


def stop(proc: subprocess.Popen, sig: int = signal.SIGTERM) -> None:
    """Signal a server and every process it started (BentoML's workers run in sessions of their
    own: a signal to the main process's group alone leaves them serving), and wait for them."""
    children = []
    with contextlib.suppress(psutil.NoSuchProcess):
        children = psutil.Process(proc.pid).children(recursive=True)
    for child in children:
        with contextlib.suppress(psutil.NoSuchProcess):
            child.send_signal(sig)
    with contextlib.suppress(ProcessLookupError):  # gone already
        os.killpg(proc.pid, sig)
    proc.wait(timeout=60)
    psutil.wait_procs(children, timeout=60)
