"""Where events go: a structured log, an append-only JSONL file and a webhook.

Every event is appended (and flushed) to the JSONL file before anything else is tried, so a
failing webhook loses nothing: it is retried in the background with a timeout and backoff, and
what is still undelivered stays in `<events>.pending.jsonl` for the next start to send.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import threading
import time
from pathlib import Path

import requests

from facemask.config import Sinks

log = logging.getLogger("facemask.events")


def append_jsonl(path: Path, event: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as f:
        f.write(json.dumps(event, separators=(",", ":")) + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    events = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                events.append(json.loads(line))
            except json.JSONDecodeError:
                log.warning("%s:%d is not JSON; skipped", path, n)
    return events


class Webhook:
    """POSTs events from a background thread; undelivered ones are kept in a pending file."""

    def __init__(self, url: str, pending: Path, timeout_s: float, retries: int, backoff_s: float):
        self.url, self.pending = url, pending
        self.timeout_s, self.retries, self.backoff_s = timeout_s, retries, backoff_s
        self.delivered = 0
        self._queue: queue.Queue[dict | None] = queue.Queue()
        self._lock = threading.Lock()
        for event in read_jsonl(pending):  # left over from an earlier run
            self._queue.put(event)
        pending.unlink(missing_ok=True)
        self._thread = threading.Thread(target=self._run, name="webhook", daemon=True)
        self._thread.start()

    def send(self, event: dict) -> None:
        self._queue.put(event)

    def _post(self, event: dict) -> bool:
        for attempt in range(self.retries + 1):
            try:
                response = requests.post(self.url, json=event, timeout=self.timeout_s)
                if response.status_code < 300:
                    return True
                reason = f"HTTP {response.status_code}"
            except requests.RequestException as err:
                reason = type(err).__name__
            log.warning("webhook %s: attempt %d failed (%s)", self.url, attempt + 1, reason)
            time.sleep(self.backoff_s * 2**attempt)
        return False

    def _run(self) -> None:
        while (event := self._queue.get()) is not None:
            if self._post(event):
                self.delivered += 1
            else:
                with self._lock:
                    append_jsonl(self.pending, event)
            self._queue.task_done()
        self._queue.task_done()

    def close(self, wait_s: float = 10.0) -> None:
        self._queue.put(None)
        self._thread.join(wait_s)


class EventSinks:
    """Fan-out of events to the configured sinks; the JSONL file is written first."""

    def __init__(self, cfg: Sinks):
        self.path = Path(cfg.jsonl)
        self.log = cfg.log
        self.webhook = None
        if cfg.webhook.url:
            pending = self.path.with_suffix(".pending.jsonl")
            w = cfg.webhook
            self.webhook = Webhook(w.url, pending, w.timeout_s, w.retries, w.backoff_s)

    def emit(self, event: dict) -> None:
        append_jsonl(self.path, event)
        if self.log:
            log.info("%s", json.dumps({k: v for k, v in event.items() if k != "snapshot_jpeg_b64"}))
        if self.webhook is not None:
            self.webhook.send(event)

    def close(self) -> None:
        if self.webhook is not None:
            self.webhook.close()
