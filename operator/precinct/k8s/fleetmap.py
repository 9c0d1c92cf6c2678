"""The fleet ConfigMaps: what the gateway and the storage service know of each
plugin (plugin id -> account public key and sandbox plan; nothing secret).

On a single host the supervisor writes `<state>/fleet.json`; in a cluster the
trusted services run in other Pods, so the operator publishes the same
entries into ConfigMaps that the Helm chart mounts into them. One ConfigMap
holds at most 1 MiB, and a plugin's entry is 2-9 KB, so the fleet is split
into SHARDS ConfigMaps `<name>-<k>` by a stable hash of the plugin id, each
with one key `fleet-<k>.json`; the chart projects all of them into one
directory and `services.fleetfile.FleetFile` reads the directory as one
fleet. 64 shards hold 5,000 plugins of 9 KB each at ~700 KB per object.

Incremental: a reconcile sets one plugin's entry, a finalizer removes one;
only the shards that changed are written (server-side apply), at most once
per FLUSH seconds, by one background task. Before the first write the
operator reads the shards back, so plugins not reconciled yet since a restart
are not dropped. A shard that would pass the limit is not written; the
error names it (the plugins in it keep their last published entries).

Enabled by `$PRECINCT_FLEET_CONFIGMAP=<namespace>/<name>` (the chart sets it,
with `$PRECINCT_FLEET_SHARDS`).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from typing import Any

from ..plan.sandbox import SandboxPlan, plugin_account
from ..settings import OperatorSettings
from ..wire import environment as env

ENV = env.FLEET_CONFIGMAP
DEFAULT_SHARDS = OperatorSettings.model_fields["fleet_shards"].default
MAX_BYTES = 1_000_000            # below the API server's 1 MiB (1,048,576) for all data of one object
FLUSH = 1.0

log = logging.getLogger("precinct.operator")


def shard_of(plugin_id: str, shards: int) -> int:
    return int.from_bytes(hashlib.sha256(plugin_id.encode()).digest()[:4], "big") % shards


def key_of(shard: int) -> str:
    return f"fleet-{shard}.json"


def entry(plan: SandboxPlan, account_key: Any) -> dict[str, Any]:
    return {"folder": "", "account_key": account_key(plugin_account(plan.id)), "plan": plan.to_dict()}


def document(entries: dict[str, dict[str, Any]]) -> str:
    return json.dumps(entries, sort_keys=True, separators=(",", ":")) + "\n"


class FleetMap:
    """The published fleet, one dict per shard, flushed by `run()`."""

    def __init__(self, api: Any, where: tuple[str, str] | None = None, shards: int | None = None) -> None:
        self.api = api
        settings = OperatorSettings.load() if where is None or not shards else None
        self.where = where if where is not None else settings.fleet_target
        self.shards = shards or settings.fleet_shards
        self.entries: list[dict[str, dict[str, Any]]] = [{} for _ in range(self.shards)]
        self.dirty: set[int] = set()
        self.written: dict[int, str] = {}        # shard -> digest of what the API server holds
        self.loaded = False
        self.wake = asyncio.Event()
        self.flushed = asyncio.Event()

    @property
    def enabled(self) -> bool:
        return self.where is not None

    def name(self, shard: int) -> str:
        assert self.where is not None
        return f"{self.where[1]}-{shard}"

    def set(self, plugin_id: str, value: dict[str, Any] | None) -> None:
        """Publish (or with None, withdraw) one plugin's entry."""
        if not self.enabled:
            return
        shard = shard_of(plugin_id, self.shards)
        current = self.entries[shard].get(plugin_id)
        if value is None:
            if current is None:
                return
            del self.entries[shard][plugin_id]
        else:
            if current == value:
                return
            self.entries[shard][plugin_id] = value
        self.dirty.add(shard)
        self.wake.set()

    def has(self, plugin_id: str) -> bool:
        return plugin_id in self.entries[shard_of(plugin_id, self.shards)]

    async def load(self) -> None:
        """Read what the shards hold now (after a restart: keep those entries)."""
        assert self.where is not None
        for shard in range(self.shards):
            obj = await self.api.get("ConfigMap", self.where[0], self.name(shard))
            text = ((obj or {}).get("data") or {}).get(key_of(shard))
            if not text:
                continue
            try:
                held = json.loads(text)
            except ValueError:
                log.warning("fleet ConfigMap %s holds no JSON: rewriting it", self.name(shard))
                continue
            for plugin_id, value in held.items():
                self.entries[shard].setdefault(plugin_id, value)
            self.written[shard] = hashlib.sha256(text.encode()).hexdigest()
        self.loaded = True

    async def flush(self) -> None:
        """Write every dirty shard whose document changed."""
        if not self.enabled:
            return
        if not self.loaded:
            await self.load()
        todo, self.dirty = sorted(self.dirty), set()
        for shard in todo:
            text = document(self.entries[shard])
            digest = hashlib.sha256(text.encode()).hexdigest()
            if self.written.get(shard) == digest:
                continue
            if len(text.encode()) > MAX_BYTES:
                log.error("fleet ConfigMap %s would hold %d bytes (> %d): not written; its %d plugins keep their "
                          "last published entries. Raise %s.", self.name(shard), len(text.encode()), MAX_BYTES,
                          len(self.entries[shard]), SHARDS_ENV)
                continue
            try:
                await self.api.apply({"apiVersion": "v1", "kind": "ConfigMap",
                                      "metadata": {"namespace": self.where[0], "name": self.name(shard)},
                                      "data": {key_of(shard): text}}, reply=False)
            except Exception as exc:  # noqa: BLE001 - retried at the next flush
                log.warning("could not publish fleet ConfigMap %s: %s", self.name(shard), exc)
                self.dirty.add(shard)
                continue
            self.written[shard] = digest

    async def run(self) -> None:
        """Flush whenever something changed, at most once per FLUSH seconds."""
        while True:
            await self.wake.wait()
            self.wake.clear()
            try:
                await self.flush()
            except Exception as exc:  # noqa: BLE001 - keep the publisher alive
                log.warning("publishing the fleet failed: %s", exc)
                self.wake.set()
            self.flushed.set()
            self.flushed = asyncio.Event()
            await asyncio.sleep(FLUSH)
