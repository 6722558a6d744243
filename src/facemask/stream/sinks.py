"""Where events go: a structured log, an append-only JSONL event log, a webhook and MQTT (`stream.mqtt`).

Every event gets an `id` and is appended (flushed and fsynced) to the event log before anything
else is tried, so a failing webhook loses nothing. The log rotates to `<name>.<UTC time>.jsonl` at a
size or at the first event of a new UTC day, and rotated files past the retention are deleted.
The webhook and MQTT deliver from background threads (`Delivery`); each in-memory queue is bounded,
and what cannot be delivered (or does not fit) waits in a pending file (`<events>.pending.jsonl`,
`<events>.mqtt-pending.jsonl`), which is retried while running, read back as a stream, and kept on
shutdown for the next start.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import os
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from facemask.config import Sinks
from facemask.stream.delivery import Delivery, iter_jsonl, to_line

log = logging.getLogger("facemask.events")


def event_files(path: Path) -> list[Path]:
    """The event log's rotated files (oldest first), then the live one."""
    rotated = sorted(path.parent.glob(f"{path.stem}.[0-9]*T*{path.suffix}"))
    return [*rotated, path] if path.is_file() else rotated


def read_events(path: Path) -> Iterator[dict]:
    """Every event of the log, rotated files included, oldest first."""
    for f in event_files(path):
        yield from iter_jsonl(f)


class EventFileHandler(logging.handlers.BaseRotatingHandler):
    """The event file as a `logging` handler: one JSON line per record, flushed and fsynced, under
    the handler's lock. It rotates to `<name>.<UTC time>.jsonl` when a line would take it past
    `max_bytes` or at the first event of a new UTC day (`shouldRollover`); rotated files older than
    the retention are deleted. A failed write raises: an event is never dropped silently."""

    def __init__(self, path: Path, max_bytes: int, retention_s: float):
        path.parent.mkdir(parents=True, exist_ok=True)
        super().__init__(str(path), mode="a", encoding="utf-8", delay=True)
        self.max_bytes, self.retention_s = max_bytes, retention_s
        self.terminator = ""  # the message is a whole line already

    def shouldRollover(self, record: logging.LogRecord) -> bool:
        try:
            stat = os.stat(self.baseFilename)
        except FileNotFoundError:
            return False
        day = datetime.fromtimestamp(stat.st_mtime, UTC).date()
        incoming = len(record.getMessage().encode("utf-8"))
        return stat.st_size > 0 and (stat.st_size + incoming > self.max_bytes or day != datetime.now(UTC).date())

    def doRollover(self) -> None:
        if self.stream:
            self.stream.close()
            self.stream = None
        path = Path(self.baseFilename)
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%f")
        self.rotate(self.baseFilename, self.rotation_filename(str(path.with_name(f"{path.stem}.{stamp}{path.suffix}"))))
        cutoff = time.time() - self.retention_s
        for old in event_files(path):
            if old != path and old.stat().st_mtime < cutoff:
                old.unlink(missing_ok=True)
                log.info("deleted %s (older than the retention)", old)

    def emit(self, record: logging.LogRecord) -> None:
        super().emit(record)
        self.stream.flush()
        os.fsync(self.stream.fileno())

    def handleError(self, record: logging.LogRecord) -> None:
        raise


class EventLog:
    """The append-only event file (`EventFileHandler`); safe to share between threads."""

    def __init__(self, path: Path, rotate_bytes: int, retention_days: float):
        self.path = Path(path)
        self.handler = EventFileHandler(self.path, rotate_bytes, retention_days * 86400)

    def append(self, event: dict) -> None:
        record = logging.LogRecord("facemask.events", logging.INFO, __file__, 0, to_line(event), None, None)
        self.handler.handle(record)

    def close(self) -> None:
        self.handler.close()


class Webhook(Delivery):
    """POSTs each event as JSON; its session retries with backoff (urllib3 `Retry`)."""

    name = "webhook"

    def __init__(self, url: str, pending: Path, cfg):
        super().__init__(pending, cfg.max_queue, cfg.retry_s)
        self.url, self.cfg = url, cfg
        retry = Retry(
            total=cfg.retries,
            backoff_factor=cfg.backoff_s,
            status_forcelist=(429, 500, 502, 503, 504),
            allowed_methods=None,  # POST too: an event carries its id, so a repeat is recognisable
            raise_on_status=False,
        )
        self.session = requests.Session()
        self.session.mount("http://", HTTPAdapter(max_retries=retry))
        self.session.mount("https://", HTTPAdapter(max_retries=retry))
        self.start()

    def _deliver(self, event: dict) -> bool:
        """One delivery: the session retries connection errors and 429/5xx answers itself."""
        try:
            response = self.session.post(self.url, json=event, timeout=self.cfg.timeout_s)
        except requests.RequestException as err:
            log.warning(
                "webhook %s: not delivered after %d retries (%s)", self.url, self.cfg.retries, type(err).__name__
            )
            return False
        if response.status_code >= 300:
            log.warning("webhook %s: not delivered (HTTP %d)", self.url, response.status_code)
            return False
        return True


class EventSinks:
    """Fan-out of events to the configured sinks; the event log is written first."""

    def __init__(self, cfg: Sinks):
        self.path = Path(cfg.jsonl)
        self.events = EventLog(self.path, cfg.rotate_bytes, cfg.retention_days)
        self.log = cfg.log
        self.deliveries: list[Delivery] = []
        if cfg.webhook.url:
            self.deliveries.append(Webhook(cfg.webhook.url, self.path.with_suffix(".pending.jsonl"), cfg.webhook))
        if cfg.mqtt.url:
            from facemask.stream.mqtt import MqttSink

            self.deliveries.append(MqttSink(cfg.mqtt, self.path.with_suffix(".mqtt-pending.jsonl")))

    def pending_ids(self) -> set[str]:
        """The ids of events some delivery has not delivered yet (their media must stay)."""
        return set().union(*(d.pending_ids() for d in self.deliveries))

    def emit(self, event: dict) -> None:
        event.setdefault("id", uuid.uuid4().hex)
        self.events.append(event)
        if self.log:
            log.info("%s", json.dumps({k: v for k, v in event.items() if k != "snapshot_jpeg_b64"}))
        for delivery in self.deliveries:
            delivery.send(event)

    def close(self) -> None:
        for delivery in self.deliveries:
            delivery.close()
        self.events.close()
