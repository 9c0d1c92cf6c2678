"""Violations reported by the gateway -> BotPlugin status.

The gateway publishes aggregated events on `precinct.violations.<id>` in the
platform account (services/gateway.py has the format). The operator
subscribes as the platform user, adds each event's count to
`status.violations`, keeps it as `status.lastViolation`, and the plugin's
daemon turns that into PermissionsCompliant: False (RateLimited or
PermissionViolation) until the ladder's window (setting
violation_window_seconds, default WINDOW) has passed quietly.

What the operator then does about the plugin (warn, rollout restart,
suspend) is the suspend ladder: k8s/ladder.py.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from datetime import datetime, timezone
from typing import Any

from .. import conditions as cond
from ..ladder import reason_of
from ..wire import subjects as wire

log = logging.getLogger("precinct.operator")

WINDOW = 600.0       # seconds PermissionsCompliant stays False after the last violation


def record(status: dict[str, Any], event: dict[str, Any]) -> dict[str, Any]:
    """The status fields after `event`: violations and lastViolation."""
    count = int(event.get("count", 1)) if str(event.get("count", 1)).isdigit() else 1
    kind = str(event.get("kind", "permission"))
    subject = str(event.get("subject", ""))[:256]
    last = {
        "kind": kind[:64],
        "reason": reason_of(kind),
        "subject": subject,
        "count": count,
        "source": str(event.get("source", ""))[:64],
        "at": str(event.get("last") or cond.now())[:40],
        "message": f"{count} {kind} violation(s) on {subject} (reported by {event.get('source', 'the gateway')})"[:512],
    }
    return {"violations": int(status.get("violations", 0)) + count, "lastViolation": last}


def recent(last: dict[str, Any] | None, now: datetime | None = None, window: float = WINDOW) -> bool:
    if not last:
        return False
    try:
        at = datetime.fromisoformat(str(last.get("at", "")).replace("Z", "+00:00"))
    except ValueError:
        return True
    if at.tzinfo is None:
        at = at.replace(tzinfo=timezone.utc)
    return ((now or datetime.now(timezone.utc)) - at).total_seconds() < window


Handler = Callable[[str, dict[str, Any]], Awaitable[None]]


async def subscribe(url: str, creds: str, handle: Handler):
    """Connect as the platform user and call `handle(plugin_id, event)` per event."""
    import nats

    nc = await nats.connect(url, user_credentials=creds, name="precinct-operator-violations",
                            max_reconnect_attempts=-1)

    async def on_message(msg) -> None:
        plugin_id = msg.subject.rsplit(".", 1)[-1]
        try:
            event = json.loads(msg.data)
            if not isinstance(event, dict):
                raise ValueError("not an object")
        except ValueError as exc:
            log.warning("unreadable violation event on %s: %s", msg.subject, exc)
            return
        try:
            await handle(plugin_id, event)
        except Exception:  # noqa: BLE001 - one bad event must not end the subscription
            log.exception("recording a violation of %s failed", plugin_id)

    await nc.subscribe(wire.VIOLATIONS, cb=on_message)
    return nc
