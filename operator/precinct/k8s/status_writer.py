"""Writing a BotPlugin's status, and an Event per condition transition.

Writes happen only when a field changed; an Event only for a transition
worth one (`_worth_an_event`). The operator is the only writer of
these fields, so what it wrote last is remembered per BotPlugin
(`StatusWriter.known`): a handler holding an older body (kopf's create
handler and an event-driven observe racing for the same new BotPlugin)
compares against what is really there, and an Event is posted once per
transition, not once per racer. Events are best effort: a refused one (the
namespace is terminating, RBAC, rate limits) is logged, never fatal.
"""

from __future__ import annotations

import copy
import logging
from typing import Any

from .. import conditions as cond
from ..wire.kubernetes import API_GROUP, API_VERSION, EVENT_REPORTER
from .client import Api, ApiError

log = logging.getLogger("precinct.operator")

STATUS_FIELDS = ("observedGeneration", "revision", "readyRevision", "failedRollouts", "pluginId", "conditions",
                 "violations", "lastViolation")
_EVENT_TYPES = {cond.READY, cond.LATEST_REVISION_READY, cond.STALLED, cond.CREDENTIALS_READY,
                cond.LIMITS_ENFORCED, cond.PERMISSIONS_COMPLIANT}


def _good(c: dict[str, Any]) -> bool:
    return c["status"] == "True" if c["type"] != cond.STALLED else c["status"] != "True"


def _worth_an_event(prev: dict[str, Any] | None, c: dict[str, Any]) -> bool:
    """A status flip, or a new reason for something wrong. Not a condition
    first set to its good state, nor a good state changing its wording: at
    thousands of BotPlugins those were most of the Events and said nothing."""
    if c["type"] not in _EVENT_TYPES:
        return False
    if prev is None:
        return not _good(c)
    if prev["status"] != c["status"]:
        return True
    return prev["reason"] != c["reason"] and not _good(c)


class StatusWriter:
    def __init__(self, api: Api) -> None:
        self.api = api
        self.known: dict[tuple[str, str], tuple[str, dict[str, Any]]] = {}   # key -> (uid, status written)

    def current(self, body: dict[str, Any]) -> dict[str, Any]:
        """The BotPlugin's status: what we wrote last if newer than `body` can know."""
        meta = body.get("metadata") or {}
        held = self.known.get((meta.get("namespace", ""), meta.get("name", "")))
        if held is not None and held[0] == meta.get("uid", ""):
            return copy.deepcopy(held[1])
        return copy.deepcopy(dict(body.get("status") or {}))

    def forget(self, namespace: str, name: str) -> None:
        self.known.pop((namespace, name), None)

    async def write(self, body: dict[str, Any], new: dict[str, Any]) -> bool:
        """Patch status only if something changed; post an Event per condition transition."""
        meta = body["metadata"]
        old = self.current(body)
        new = {k: v for k, v in new.items() if v is not None}
        if all(old.get(k) == new.get(k) for k in STATUS_FIELDS if k in new):
            return False
        await self.api.patch("BotPlugin", meta["namespace"], meta["name"], {"status": new}, subresource="status",
                             reply=False)
        merged = {**old, **new}
        self.known[(meta["namespace"], meta["name"])] = (meta.get("uid", ""), merged)
        body["status"] = copy.deepcopy(merged)
        before = {c["type"]: c for c in old.get("conditions") or []}
        for c in new.get("conditions") or []:
            if _worth_an_event(before.get(c["type"]), c):
                await self.event(body, c)
        return True

    def remember(self, body: dict[str, Any], fields: dict[str, Any]) -> None:
        """Fields written elsewhere (violations) join what we know."""
        meta = body["metadata"]
        merged = {**self.current(body), **fields}
        self.known[(meta["namespace"], meta["name"])] = (meta.get("uid", ""), merged)

    def drop(self, body: dict[str, Any], field: str) -> None:
        """A field removed elsewhere (the ladder's resume clears lastViolation)."""
        meta = body["metadata"]
        current = self.current(body)
        current.pop(field, None)
        self.known[(meta["namespace"], meta["name"])] = (meta.get("uid", ""), current)

    async def event(self, body: dict[str, Any], c: dict[str, Any]) -> None:
        await self.notice(body, _good(c), c["reason"], f"{c['type']}={c['status']}: {c['message']}")

    async def notice(self, body: dict[str, Any], good: bool, reason: str, message: str) -> None:
        """Post one Event on the BotPlugin (Normal when good, else Warning); best effort."""
        meta = body["metadata"]
        stamp = cond.now()
        event = {
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
            "involvedObject": {"apiVersion": body.get("apiVersion", f"{API_GROUP}/{API_VERSION}"), "kind": "BotPlugin",
                               "name": meta["name"], "namespace": meta["namespace"], "uid": meta.get("uid", "")},
            "type": "Normal" if good else "Warning",
            "reason": reason,
            "message": message[:1024],
            "source": {"component": "precinct-operator"},
            "firstTimestamp": stamp, "lastTimestamp": stamp, "count": 1,
            "reportingComponent": EVENT_REPORTER, "reportingInstance": "precinct-operator",
        }
        try:
            await self.api.create(event, reply=False)
        except ApiError as exc:   # events are best effort
            log.info("%s/%s: event %s not posted: %s", meta["namespace"], meta["name"], reason, exc)
