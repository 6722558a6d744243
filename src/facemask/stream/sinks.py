"""Where events go: a structured log, an append-only JSONL event log and a webhook.

Every event gets an `id` and is appended (flushed and fsynced) to the event log before anything
else is tried, so a failing webhook loses nothing. The log rotates to `<name>.<UTC time>.jsonl` at a
size or at the first event of a new UTC day, and rotated files past the retention are deleted.
The webhook posts from a background thread with a timeout and backoff; its in-memory queue is
bounded, and what cannot be posted (or does not fit) waits in `<events>.pending.jsonl`, which is
retried while running, read back as a stream, and kept on shutdown for the next start.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import requests

from facemask.config import Sinks

log = logging.getLogger("facemask.events")


def to_line(event: dict) -> str:
    return json.dumps(event, separators=(",", ":")) + "\n"


def append_lines(path: Path, lines: list[str]) -> None:
    """Append whole JSON lines, flushed and fsynced."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as f:
        f.writelines(lines)
        f.flush()
        os.fsync(f.fileno())


def append_jsonl(path: Path, events: list[dict]) -> None:
    """Append events, one JSON line each, flushed and fsynced."""
    append_lines(path, [to_line(e) for e in events])


def iter_jsonl(path: Path) -> Iterator[dict]:
    """The events of one JSONL file, read line by line; a line that is not JSON is logged and skipped."""
    if not path.is_file():
        return
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    yield json.loads(line)
                except json.JSONDecodeError:
                    log.warning("%s:%d is not JSON; skipped", path, n)


def read_jsonl(path: Path) -> list[dict]:
    return list(iter_jsonl(path))


def event_files(path: Path) -> list[Path]:
    """The event log's rotated files (oldest first), then the live one."""
    rotated = sorted(path.parent.glob(f"{path.stem}.[0-9]*T*{path.suffix}"))
    return [*rotated, path] if path.is_file() else rotated


def read_events(path: Path) -> Iterator[dict]:
    """Every event of the log, rotated files included, oldest first."""
    for f in event_files(path):
        yield from iter_jsonl(f)


class EventLog:
    """The append-only event file, rotated by size or UTC day; safe to share between threads."""

    def __init__(self, path: Path, rotate_bytes: int, retention_days: float):
        self.path, self.rotate_bytes, self.retention_s = Path(path), rotate_bytes, retention_days * 86400
        self._lock = threading.Lock()

    def append(self, event: dict) -> None:
        line = to_line(event)  # serialised once: its size decides the rotation, then it is written
        with self._lock:
            self._maybe_rotate(len(line.encode("utf-8")))
            append_lines(self.path, [line])

    def _maybe_rotate(self, incoming: int) -> None:
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            return
        day = datetime.fromtimestamp(stat.st_mtime, UTC).date()
        if stat.st_size + incoming <= self.rotate_bytes and day == datetime.now(UTC).date():
            return
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%f")
        os.replace(self.path, self.path.with_name(f"{self.path.stem}.{stamp}{self.path.suffix}"))  # atomic
        cutoff = time.time() - self.retention_s
        for old in event_files(self.path):
            if old != self.path and old.stat().st_mtime < cutoff:
                old.unlink(missing_ok=True)
                log.info("deleted %s (older than the retention)", old)


class Webhook:
    """POSTs events from a background thread; undelivered ones wait in the pending file."""

    def __init__(self, url: str, pending: Path, cfg):
        self.url, self.pending, self.cfg = url, pending, cfg
        self.delivered = 0
        self._queue: queue.Queue[dict] = queue.Queue(maxsize=cfg.max_queue)
        self._file_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="webhook", daemon=True)
        self._thread.start()

    def send(self, event: dict) -> None:
        try:
            self._queue.put_nowait(event)
        except queue.Full:  # a long outage: the file holds what memory does not
            self._spill([event])

    def _spill(self, events: list[dict]) -> None:
        with self._file_lock:
            append_jsonl(self.pending, events)

    def _post(self, event: dict) -> bool:
        for attempt in range(self.cfg.retries + 1):
            try:
                response = requests.post(self.url, json=event, timeout=self.cfg.timeout_s)
                if response.status_code < 300:
                    return True
                reason = f"HTTP {response.status_code}"
            except requests.RequestException as err:
                reason = type(err).__name__
            log.warning("webhook %s: attempt %d failed (%s)", self.url, attempt + 1, reason)
            if self._stop.wait(self.cfg.backoff_s * 2**attempt):
                break
        return False

    def _replay_pending(self) -> bool:
        """Post the pending file's events in order, streaming it; True when it is empty after."""
        replay = self.pending.with_suffix(".replay.jsonl")
        with self._file_lock:
            if not replay.exists():  # a replay left by a killed process goes first
                if not self.pending.exists():
                    return True
                os.replace(self.pending, replay)
        events = iter_jsonl(replay)
        for event in events:
            if self._stop.is_set() or not self._post(event):
                with self._file_lock:  # the undelivered rest goes back in front of anything newer
                    rest = [event, *events]
                    newer = list(iter_jsonl(self.pending))
                    tmp = self.pending.with_suffix(".tmp")
                    tmp.unlink(missing_ok=True)
                    append_jsonl(tmp, rest + newer)
                    os.replace(tmp, self.pending)
                    replay.unlink()
                return False
            self.delivered += 1
        replay.unlink()
        return True

    def _run(self) -> None:
        backlog = not self._replay_pending()
        while not self._stop.is_set():
            try:
                event = self._queue.get(timeout=self.cfg.retry_s)
            except queue.Empty:
                backlog = not self._replay_pending()
                continue
            if backlog or not self._post(event):  # keep the order: behind the pending ones
                self._spill([event])
                backlog = not self._replay_pending()
            else:
                self.delivered += 1
                if self.pending.exists():
                    backlog = not self._replay_pending()

    def close(self, wait_s: float = 10.0) -> None:
        """Stop; every event not yet delivered is kept in the pending file."""
        self._stop.set()
        self._thread.join(wait_s)
        rest = []
        while True:
            try:
                rest.append(self._queue.get_nowait())
            except queue.Empty:
                break
        if rest:
            self._spill(rest)


class EventSinks:
    """Fan-out of events to the configured sinks; the event log is written first."""

    def __init__(self, cfg: Sinks):
        self.path = Path(cfg.jsonl)
        self.events = EventLog(self.path, cfg.rotate_bytes, cfg.retention_days)
        self.log = cfg.log
        self.webhook = None
        if cfg.webhook.url:
            self.webhook = Webhook(cfg.webhook.url, self.path.with_suffix(".pending.jsonl"), cfg.webhook)

    def emit(self, event: dict) -> None:
        event.setdefault("id", uuid.uuid4().hex)
        self.events.append(event)
        if self.log:
            log.info("%s", json.dumps({k: v for k, v in event.items() if k != "snapshot_jpeg_b64"}))
        if self.webhook is not None:
            self.webhook.send(event)

    def close(self) -> None:
        if self.webhook is not None:
            self.webhook.close()
