"""The review API's side of the event log: alerts filtered and paged (newest first), the media files
an alert names, with why one is missing (still being recorded, deleted by retention, never recorded),
and reviewers' verdicts on them (`facemask.serving.feedback`)."""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from facemask.config import Stream
from facemask.serving.feedback import FeedbackOff, Review, archive, store, stored_verdict
from facemask.stream.sinks import event_files

EVENT_ID = re.compile(r"^[0-9a-f]{32}$")
ALERT_MARK = '"type":"alert"'  # as the event log writes it (compact JSON): other lines are not parsed
WRITE_GRACE_S = 60  # after the post-roll, the writer's time to encode a clip before it counts as gone
MEDIA_TYPES = {"snapshot": "image/jpeg", "clip": "video/mp4", "region": "image/jpeg"}  # region: feedback on


class EventNotFound(LookupError):
    """No such event, or it has no such media (the message says which)."""


class MediaNotReady(LookupError):
    """The media is still being recorded; `retry_after_s` until it should be there."""

    def __init__(self, message: str, retry_after_s: int):
        super().__init__(message)
        self.retry_after_s = retry_after_s


def parse_time(value: str | None) -> float | None:
    """Epoch seconds or an ISO 8601 time (UTC unless it says otherwise) as epoch seconds."""
    if value is None or value == "":
        return None
    try:
        return float(value)
    except ValueError:
        pass
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"{value!r} is neither epoch seconds nor an ISO 8601 time") from None
    return parsed.timestamp() if parsed.tzinfo else parsed.replace(tzinfo=UTC).timestamp()


def _alerts(log: Path, contains: str = ""):
    """The alert events of the log and its rotated files, oldest first (other lines not parsed)."""
    for path in event_files(log):
        with path.open(encoding="utf-8") as f:
            for line in f:
                if ALERT_MARK in line and contains in line:
                    try:
                        yield json.loads(line)
                    except json.JSONDecodeError:
                        continue


@dataclass
class EventReview:
    cfg: Stream  # its event log (sinks.jsonl), media folder, post-roll and feedback folder
    labels: list[str] = field(default_factory=list)  # the classes a verdict may name

    def _state(self, event: dict, kind: str, now: float) -> str | None:
        name = (event.get("media") or {}).get(kind)
        if name is None:
            return None
        if Path(self.cfg.media_dir, name).is_file():
            return "ready"
        due = event["time"] + (self.cfg.media.post_roll_s if kind == "clip" else 0) + WRITE_GRACE_S
        return "recording" if now < due else "deleted"

    def _public(self, event: dict, now: float) -> dict:
        out = {k: v for k, v in event.items() if k not in ("snapshot_jpeg_b64", "media")}
        states = {kind: self._state(event, kind, now) for kind in MEDIA_TYPES}
        out["media"] = {kind: state for kind, state in states.items() if state is not None}
        for kind, state in states.items():
            out[f"{kind}_url"] = f"/events/{event['id']}/{kind}" if state == "ready" else None
        if self.cfg.feedback.enabled:
            out["review"] = stored_verdict(self.cfg.feedback_dir, event["id"])
        return out

    def list(self, camera: str | None = None, label: str | None = None, since: float | None = None,
             until: float | None = None, limit: int = 50, offset: int = 0) -> dict:  # fmt: skip
        """Alerts newest first, filtered by camera, class and time (`since` <= time < `until`)."""
        found = [
            e for e in _alerts(self.cfg.sinks.jsonl)
            if (camera is None or e.get("camera") == camera) and (label is None or e.get("class") == label)
            and (since is None or e.get("time", 0) >= since) and (until is None or e.get("time", 0) < until)
        ]  # fmt: skip
        found.reverse()
        now = time.time()
        page = [self._public(e, now) for e in found[offset : offset + limit]]
        more = offset + limit < len(found)
        return {"total": len(found), "offset": offset, "limit": limit, "next_offset": offset + limit if more else None,
                "feedback": self.cfg.feedback.enabled, "labels": self.labels, "events": page}  # fmt: skip

    def event(self, event_id: str) -> dict:
        if not EVENT_ID.match(event_id):
            raise EventNotFound(f"{event_id!r} is not an event id (32 hex digits)")
        for event in _alerts(self.cfg.sinks.jsonl, event_id):
            if event.get("id") == event_id:
                return event
        raise EventNotFound(f"no alert {event_id} in the event log")

    def media(self, event_id: str, kind: str) -> Path:
        """The file of an alert's `kind` (snapshot | clip)."""
        event = self.event(event_id)
        state = self._state(event, kind, time.time())
        if state is None:
            why = "feedback was off when recorded" if kind == "region" else "snapshots off, or clips not recorded"
            raise EventNotFound(f"alert {event_id} has no {kind} ({why})")
        if state == "recording":
            due = event["time"] + self.cfg.media.post_roll_s
            raise MediaNotReady(
                f"the {kind} of alert {event_id} is still being recorded", max(1, round(due - time.time()) + 1)
            )
        if state == "deleted":
            raise EventNotFound(f"the {kind} of alert {event_id} was deleted (retention) or never written")
        return Path(self.cfg.media_dir, event["media"][kind])

    def _feedback_on(self) -> None:
        if not self.cfg.feedback.enabled:
            raise FeedbackOff("this deployment keeps no pixels for review: stream.feedback.enabled is false")

    def archive(self, out: Path) -> int:
        """Every stored verdict as one gzipped tar at `out` (`feedback.archive`); FeedbackOff when
        this deployment keeps nothing for review. How many scenes it holds."""
        self._feedback_on()
        return archive(self.cfg.feedback_dir, out)

    def review(self, event_id: str, review: Review) -> dict:
        """Store a reviewer's verdict on an alert as a training scene (`feedback.store`). FeedbackOff
        when this deployment keeps nothing for review; EventNotFound / MediaNotReady as `media`;
        BadReview for a verdict, label, box or name that cannot be stored. Nothing is written unless
        the verdict is stored whole."""
        self._feedback_on()
        event = self.event(event_id)
        region = self.media(event_id, "region")
        if not region.with_suffix(".json").is_file():  # where the face is: written with the region, swept with it
            raise EventNotFound(f"the region of alert {event_id} was deleted (retention) or never written whole")
        return store(self.cfg.feedback_dir, event, region, review, self.labels)
