"""Retention of event media: files older than `retention_days` are deleted, then the oldest while all
of them take more than `max_media_mb`; an event's files (snapshot, clip, the region kept for review;
a reviewed scene's image and annotation) go together, and never while
an event still waiting for its webhook or MQTT delivery points at them. Enforced at start and every
`sweep_s` on a thread of its own.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

from facemask.atomic_files import PART_SUFFIX
from facemask.config import Media

log = logging.getLogger(__name__)
MEDIA_SUFFIXES = (".jpg", ".mp4", ".json", ".xml")  # <event id>[.region].<suffix>: grouped by the id
STALE_PART_S = 3600  # a half-written file this old was left by a process that died


class MediaRetention:
    def __init__(self, cfg: Media, root: Path, protected: Callable[[], set[str]] = set):
        """`root`: the media folder; `protected()`: the ids of events whose media must stay (undelivered)."""
        self.cfg, self.root, self.protected = cfg, Path(root), protected
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="media-retention", daemon=True)

    def start(self) -> MediaRetention:
        self.sweep()
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.cfg.sweep_s):
            try:
                self.sweep()
            except OSError as err:  # a vanished folder, a permission: the next sweep tries again
                log.warning("event media retention: %s", err)

    def sweep(self, now: float | None = None) -> list[str]:
        """Delete what the limits say, oldest first; returns the ids of the events whose media went."""
        now = time.time() if now is None else now
        events: dict[str, list[tuple[Path, float, int]]] = {}
        for path in self.root.glob("*/*"):
            try:
                stat = path.stat()
            except FileNotFoundError:
                continue
            if path.suffix == PART_SUFFIX and now - stat.st_mtime > STALE_PART_S:
                path.unlink(missing_ok=True)
            elif path.suffix in MEDIA_SUFFIXES:
                events.setdefault(path.name.split(".")[0], []).append((path, stat.st_mtime, stat.st_size))
        keep = self.protected()
        oldest_first = sorted(events.items(), key=lambda item: max(m for _, m, _ in item[1]))
        total = sum(size for files in events.values() for _, _, size in files)
        cutoff, cap = now - self.cfg.retention_days * 86400, self.cfg.max_media_mb * 1e6
        gone = []
        for event_id, files in oldest_first:
            if event_id in keep:
                continue
            if max(m for _, m, _ in files) >= cutoff and total <= cap:
                break  # the rest are newer and fit
            for path, _, size in files:
                path.unlink(missing_ok=True)
                total -= size
            gone.append(event_id)
        if gone:
            log.info("event media of %d event(s) deleted (retention %g days, %g MB)",
                     len(gone), self.cfg.retention_days, self.cfg.max_media_mb)  # fmt: skip
        return gone

    def close(self) -> None:
        self._stop.set()
