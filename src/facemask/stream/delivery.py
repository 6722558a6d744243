"""Event files and their delivery, shared by the sinks (`stream.sinks`) and MQTT (`stream.mqtt`).

JSONL lines appended, flushed and fsynced; read back whole or as a stream (a torn last line skipped).
`Delivery` sends events from a background thread, in order; what cannot be delivered waits in a
pending file that is retried and kept for the next start. Subclasses say how one event is delivered.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import threading
import time
from collections.abc import Iterator
from pathlib import Path

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


class Delivery:
    """Delivers events from a background thread, in order; what cannot be delivered (or does not
    fit the bounded in-memory queue) waits in the `pending` file, which is retried every `retry_s`
    and after each delivered event, streamed back in order, and kept on shutdown for the next start.
    Subclasses say how one event is delivered (`_deliver`)."""

    name = "delivery"

    def __init__(self, pending: Path, max_queue: int, retry_s: float):
        self.pending, self.retry_s = pending, retry_s
        self.delivered = 0
        self._held: set[str | None] = set()  # ids sent and neither delivered nor in the pending file yet
        self._held_lock = threading.Lock()
        self._queue: queue.Queue[dict] = queue.Queue(maxsize=max_queue)
        self._file_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def pending_ids(self) -> set[str]:
        """The ids of the events not delivered yet: held from `send` until delivered or written to the
        pending file, or in that file (or the one being replayed)."""
        with self._held_lock:
            held = set(self._held)
        with self._file_lock:
            files = {e.get("id") for f in (self.pending, self.pending.with_suffix(".replay.jsonl"))
                     for e in iter_jsonl(f)}  # fmt: skip
        return {i for i in held | files if i}

    def send(self, event: dict) -> None:
        with self._held_lock:
            self._held.add(event.get("id"))
        try:
            self._queue.put_nowait(event)
        except queue.Full:  # a long outage: the file holds what memory does not
            self._spill([event])
            self._release(event)

    def _release(self, event: dict) -> None:
        """`event` is delivered or in the pending file: no longer held in memory."""
        with self._held_lock:
            self._held.discard(event.get("id"))

    def _deliver(self, event: dict) -> bool:
        raise NotImplementedError

    def _spill(self, events: list[dict]) -> None:
        with self._file_lock:
            append_jsonl(self.pending, events)

    def _replay_pending(self) -> bool:
        """Deliver the pending file's events in order, streaming it; True when it is empty after."""
        replay = self.pending.with_suffix(".replay.jsonl")
        with self._file_lock:
            if not replay.exists():  # a replay left by a killed process goes first
                if not self.pending.exists():
                    return True
                os.replace(self.pending, replay)
        events = iter_jsonl(replay)
        for event in events:
            if self._stop.is_set() or not self._deliver(event):
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
                event = self._queue.get(timeout=self.retry_s)
            except queue.Empty:
                backlog = not self._replay_pending()
                continue
            if backlog or not self._deliver(event):  # keep the order: behind the pending ones
                self._spill([event])
                self._release(event)
                backlog = not self._replay_pending()
            else:
                self.delivered += 1
                self._release(event)
                if self.pending.exists():
                    backlog = not self._replay_pending()

    def close(self, wait_s: float = 10.0) -> None:
        """Stop, after up to half of `wait_s` for the queue to empty (a final stats window goes out
        with a reachable receiver); every event not yet delivered is kept in the pending file."""
        deadline = time.monotonic() + wait_s / 2
        while not self._queue.empty() and self._thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.05)
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
            for event in rest:
                self._release(event)
