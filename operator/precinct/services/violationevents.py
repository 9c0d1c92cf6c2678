"""Violation events, as the gateway and the storage service publish them.

Refusals are counted per (plugin, kind, source) over a window of
`report_interval` seconds and published as one event each on
`precinct.violations.<id>` (platform account), where the supervisor's
ladder (runtime/violations.py) or the operator reads them:

  {"plugin": "flooder", "kind": "rate_limit", "subject": "rosey.chat.x.send",
   "subjects": ["rosey.chat.x.send"], "count": 195,
   "first": "2026-11-27T22:45:55.355Z", "last": "2026-11-27T22:45:56.901Z",
   "source": "gateway", "window_seconds": 2.0}

A flood therefore yields at most a few events per plugin per interval,
however many messages it sends.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from ..wire import subjects as wire

REPORT_INTERVAL = 2.0         # seconds a violation window lasts
MAX_SAMPLE_SUBJECTS = 10      # distinct subjects listed per event
MAX_SUBJECT_IN_EVENT = 256    # characters


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")






@dataclass
class _Window:
    count: int = 0
    first: float = 0.0
    last: float = 0.0
    subjects: list[str] = field(default_factory=list)


class Aggregator:
    """Counts violations per (plugin, kind, source) until drained."""

    def __init__(self, interval: float = REPORT_INTERVAL) -> None:
        self.interval = interval
        self._windows: dict[tuple[str, str, str], _Window] = {}

    def add(self, plugin: str, kind: str, subject: str, source: str, at: float | None = None, count: int = 1) -> None:
        at = time.time() if at is None else at
        window = self._windows.get((plugin, kind, source))
        if window is None:
            window = self._windows[(plugin, kind, source)] = _Window(first=at, last=at)
        window.count += count
        window.first, window.last = min(window.first, at), max(window.last, at)
        subject = subject[:MAX_SUBJECT_IN_EVENT]
        if len(window.subjects) < MAX_SAMPLE_SUBJECTS and subject not in window.subjects:
            window.subjects.append(subject)

    def drain(self) -> list[dict[str, Any]]:
        windows, self._windows = self._windows, {}
        return [
            {"plugin": plugin, "kind": kind, "subject": w.subjects[0] if w.subjects else "",
             "subjects": w.subjects, "count": w.count, "first": iso(w.first), "last": iso(w.last),
             "source": source, "window_seconds": self.interval}
            for (plugin, kind, source), w in windows.items()
        ]




async def publish_events(nc, aggregator: Aggregator, log: logging.Logger) -> list[dict[str, Any]]:
    """Drain `aggregator` and publish each event; returns them."""
    events = aggregator.drain()
    for event in events:
        log.warning("violation: %s %s x%d (%s) on %s", event["plugin"], event["kind"], event["count"],
                    event["source"], event["subject"])
        try:
            await nc.publish(wire.violations(event["plugin"]), json.dumps(event).encode())
        except Exception:  # noqa: BLE001 - reconnecting; the counters still hold it
            log.exception("cannot publish a violation event")
    return events
