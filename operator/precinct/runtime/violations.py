"""What the supervisor does about a plugin that breaks its rules.

The gateway publishes violation events on `precinct.violations.<id>` (see
services/gateway.py for the format). The supervisor subscribes and, per
plugin:

  * sets the condition PermissionsCompliant=False, reason RateLimited
    (kind rate_limit) or PermissionViolation (permission, duplicate_reply);
    it turns True again (reason NoViolations) after `window` quiet seconds;
  * climbs a ladder of strikes: 1st strike warn (log + condition), later
    strikes restart the plugin, and the `suspend_after`-th strike within
    `window` seconds suspends it. Events that arrive within `cooldown`
    seconds of the last strike belong to that strike (a flood reported over
    several windows is one offence, and a restart has time to take effect).

The sandbox's refusals (confine/refusals.py) arrive through `report()`
with kind seccomp, landlock or egress: only the refusals that policy makes a
strike (dangerous syscalls at once; file probes, socket probes and proxy 403s
above a budget per minute) get here; all of them are counted in status.

A suspended plugin is stopped with state and reason `Suspended` and stays
stopped, across manifest changes and supervisor restarts (suspended.json in
the state dir), until a person runs `precinct plugin resume NAME`.

Defaults (and `precinct up` options): window 600 s (--violation-window),
cooldown 10 s (--violation-cooldown), suspend after 3 strikes
(--suspend-after; 0 never suspends: warn, then restart).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from .. import conditions as cond
from ..ladder import NONE, RESTART, SUSPEND, WARN, LadderPolicy, reason_of, strike
from .slot import SUSPENDED, Slot

log = logging.getLogger("precinct.violations")

COMPLIANT = "NoViolations"
__all__ = ["NONE", "RESTART", "SUSPEND", "WARN", "Ladder", "LadderPolicy", "LaunchRefused"]


class LaunchRefused(RuntimeError):
    """Raised by a launcher to refuse a start with a status reason
    (`Suspended`, `MigrationFailed`); the slot records the reason as the exit."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason


@dataclass
class Record:
    strikes: list[float] = field(default_factory=list)
    last_event: float = 0.0
    last_action: str = NONE
    last_kind: str = ""
    last_subject: str = ""
    counts: dict[str, int] = field(default_factory=dict)   # kind -> messages/lines counted

    def to_dict(self, now: float, policy: LadderPolicy) -> dict[str, Any]:
        return {"strikes": len([t for t in self.strikes if now - t < policy.window]),
                "last_action": self.last_action, "last_kind": self.last_kind,
                "last_subject": self.last_subject, "counts": dict(self.counts),
                "last_event_age_seconds": round(now - self.last_event, 1) if self.last_event else None}


class Ladder:
    """`slot_of(plugin_id)` returns the plugin's current Slot (or None)."""

    def __init__(self, policy: LadderPolicy, state_dir: Path, slot_of: Callable[[str], Slot | None]) -> None:
        self.policy = policy
        self.path = Path(state_dir) / "suspended.json"
        self.slot_of = slot_of
        self.records: dict[str, Record] = {}
        self._suspended: dict[str, dict] | None = None
        self._locks: dict[str, asyncio.Lock] = {}
        self._tasks: set[asyncio.Task] = set()

    # -- suspension, persisted ------------------------------------------------------

    @property
    def suspended(self) -> dict[str, dict]:
        if self._suspended is None:
            try:
                data = json.loads(self.path.read_text())
                self._suspended = data if isinstance(data, dict) else {}
            except (OSError, ValueError):
                self._suspended = {}
        return self._suspended

    def _save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.suspended, indent=1, sort_keys=True))
        tmp.replace(self.path)

    def is_suspended(self, plugin_id: str) -> bool:
        return plugin_id in self.suspended

    def suspension_message(self, plugin_id: str) -> str:
        info = self.suspended.get(plugin_id, {})
        return (f"suspended after repeated violations ({info.get('why', 'see the supervisor log')}); "
                f"run `precinct plugin resume {plugin_id}` to start it again")

    # -- events ---------------------------------------------------------------------

    async def on_message(self, msg) -> None:
        """NATS callback for `precinct.violations.*` (platform)."""
        plugin_id = msg.subject.rsplit(".", 1)[-1]
        try:
            event = json.loads(msg.data)
            if not isinstance(event, dict):
                raise ValueError
        except ValueError:
            log.warning("ignoring a malformed violation event on %s", msg.subject)
            return
        # The subject names the plugin (only the platform can publish there);
        # a payload naming someone else is ignored.
        if event.get("plugin") not in (None, plugin_id):
            log.warning("violation event on %s names %r; ignored", msg.subject, event.get("plugin"))
            return
        self.report(plugin_id, event)

    def report(self, plugin_id: str, event: dict) -> None:
        """One violation event from a trusted source (the gateway over NATS, or
        the sandbox's refusal ledger in this process): climb the ladder."""
        action = self.observe(plugin_id, event)
        if action == SUSPEND:
            self._mark_suspended(plugin_id)   # at once: no start may slip in before the stop
        if action in (RESTART, SUSPEND):
            task = asyncio.create_task(self._act(plugin_id, action))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def observe(self, plugin_id: str, event: dict, now: float | None = None) -> str:
        """Record one event; return the ladder's action for it."""
        now = time.monotonic() if now is None else now
        kind = str(event.get("kind", "permission"))
        subject = str(event.get("subject", ""))[:256]
        try:
            count = max(1, int(event.get("count", 1)))
        except (TypeError, ValueError):
            count = 1
        record = self.records.setdefault(plugin_id, Record())
        record.last_event, record.last_kind, record.last_subject = now, kind, subject
        record.counts[kind] = record.counts.get(kind, 0) + count
        slot = self.slot_of(plugin_id)
        reason = reason_of(kind)
        message = f"{count} × {kind} on {subject} (source {event.get('source', '?')}, last at {event.get('last', '?')})"
        if slot is not None:
            slot.conditions.set(cond.PERMISSIONS_COMPLIANT, False, reason, message)
        if self.is_suspended(plugin_id):
            return NONE
        record.strikes, action = strike(record.strikes, now, self.policy)
        if action == NONE:
            return NONE
        record.last_action = action
        log.warning("plugin %s: strike %d (%s) -> %s", plugin_id, len(record.strikes), message, action)
        return action

    def _mark_suspended(self, plugin_id: str) -> None:
        record = self.records.get(plugin_id, Record())
        self.suspended[plugin_id] = {
            "at": time.time(),
            "why": f"{len(record.strikes)} strikes, last {record.last_kind} on {record.last_subject}"}
        self._save()

    async def _act(self, plugin_id: str, action: str) -> None:
        # One action at a time per plugin, in the order they were decided.
        lock = self._locks.setdefault(plugin_id, asyncio.Lock())
        async with lock:
            try:
                slot = self.slot_of(plugin_id)
                if slot is None:
                    return
                if action == SUSPEND or self.is_suspended(plugin_id):
                    await self.suspend_slot(plugin_id, slot)
                elif action == RESTART:
                    log.warning("plugin %s: restarting after a repeated violation", plugin_id)
                    await slot.stop()
                    slot.status.restarts += 1
                    if not self.is_suspended(plugin_id):
                        slot.start()
            except Exception:  # noqa: BLE001 - the ladder must not die with one plugin
                log.exception("plugin %s: %s failed", plugin_id, action)

    def schedule_suspend(self, plugin_id: str, slot: Slot) -> None:
        """Stop a suspended plugin's slot from inside its own start (a launcher
        cannot await its own slot's stop)."""
        task = asyncio.create_task(self.suspend_slot(plugin_id, slot))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def suspend_slot(self, plugin_id: str, slot: Slot) -> None:
        log.error("plugin %s: suspended", plugin_id)
        await slot.stop(SUSPENDED)
        slot.conditions.set(cond.READY, False, cond.SUSPENDED, self.suspension_message(plugin_id))

    # -- a person's decision -------------------------------------------------------------

    def resume(self, plugin_id: str) -> bool:
        """Forget the suspension and the strikes; True if it was suspended."""
        was = self.suspended.pop(plugin_id, None) is not None
        if was:
            self._save()
        self.records.pop(plugin_id, None)
        slot = self.slot_of(plugin_id)
        if slot is not None:
            slot.conditions.set(cond.PERMISSIONS_COMPLIANT, True, "Resumed", "resumed by an operator")
        return was

    # -- status ----------------------------------------------------------------------------

    def refresh(self, plugin_id: str, slot: Slot, now: float | None = None) -> None:
        """Make sure PermissionsCompliant is set; clear it after a quiet window."""
        now = time.monotonic() if now is None else now
        current = slot.conditions.get(cond.PERMISSIONS_COMPLIANT)
        record = self.records.get(plugin_id)
        quiet = record is None or now - record.last_event >= self.policy.window
        if current is None or (current.status == "False" and quiet and not self.is_suspended(plugin_id)):
            slot.conditions.set(cond.PERMISSIONS_COMPLIANT, True, COMPLIANT,
                                f"no violations in the last {self.policy.window:g} s")

    def summary(self, plugin_id: str, now: float | None = None) -> dict[str, Any]:
        now = time.monotonic() if now is None else now
        record = self.records.get(plugin_id)
        out = record.to_dict(now, self.policy) if record else {"strikes": 0, "last_action": NONE, "counts": {}}
        out["suspended"] = self.is_suspended(plugin_id)
        return out
