"""The storage service: Rosey's row and KV APIs over SQLite, one file per plugin
(platform account).

A plugin asks with Rosey's own subjects; its account maps them onto the
platform's per-plugin service (sandbox.py), so what arrives here is

  precinct.storage.<id>.row.{schema.register,insert,select,update,delete,search}
  precinct.storage.<id>.kv.{get,set,delete,list}
  precinct.storage.<id>.migrate.status

The plugin is whoever the subject names: the server wrote that subject, the
plugin cannot choose it. When the server's `Nats-Request-Info` header is
present its account key must be that plugin's too. Rosey's payload field
`plugin_name` is ignored. The operation must be one the plugin's plan grants
(the account mapping already guarantees it; checked again here), and each
plugin's requests pass a `database_queries_per_second` token bucket; excess
gets an explicit RATE_LIMITED error with `retry_after`.

Answers are Rosey's: `{"success": true, ...}` or
`{"success": false, "error": {"code": "...", "message": "..."}}`. Bad input
of any kind gets such an error and the service carries on.

The supervisor (and only the platform) applies migrations shipped in a plugin
folder before starting the plugin:

  precinct.admin.storage.migrate   {"plugin": "<id>", "folder": "<plugin folder>"}
  precinct.admin.storage.stats     per-plugin counters and database sizes

Neither is reachable from a plugin account: no plugin imports them.

One plugin cannot starve the others:

* at most PLUGIN_INFLIGHT of its requests are queued or running at once
  (beyond that: BUSY, counted on it), far below the service-wide
  MAX_INFLIGHT, so its backlog never makes another plugin BUSY;
* its requests run one at a time (a per-plugin lock), so it holds at most
  one of the WORKERS SQLite threads;
* one request's SQL stops at QUERY_SECONDS (plugindb.py bounds what one
  SQLite operation can cost, so the deadline holds);
* its migrations, the only SQL it writes itself, run in a process of their
  own (services/migrator.py) with a SQLite heap ceiling derived from its
  memory_limit (plugindb.heap_budget), killed at MIGRATION_SECONDS.

Refusals are counted per plugin in `precinct.admin.storage.stats` (busy,
timeouts, refused) and published as violation events (violationevents.py):
kind `storage_busy` (its in-flight cap), `query_timeout` (the deadline),
`storage_limit` (a value, LIKE pattern or memory limit, or a TEMP/ATTACH
refusal), source `storage`.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import json
import logging
import math
import os
import re
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable


from . import sqliteheap
from ..wire import headers as headers_wire
from ..wire import subjects as wire
from .buckets import TokenBucket
from .filters import REPLY_TOP_LEVEL, StorageError
from .lifecycle import connect, stop_on_signals
from .fleetfile import FleetFile
from .plugindb import MIGRATION_SECONDS, PluginDB, heap_budget
from .violationevents import REPORT_INTERVAL, Aggregator, publish_events

log = logging.getLogger("precinct.storage")

QUEUE = "precinct-storage"

PLUGIN_ID = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
MAX_REQUEST = 256 * 1024      # bytes of JSON per request
MAX_DEPTH = 32                # JSON nesting
MAX_INFLIGHT = 256            # requests being handled at once, all plugins together
PLUGIN_INFLIGHT = 32          # ...of which one plugin's (queued behind its lock or running): 1/8 of the total
WORKERS = 4                   # threads running SQLite
SERVICE_HEAP = 256 * 2**20    # SQLite heap ceiling of this process, all plugins' queries together
MIGRATOR_GRACE = 10.0         # seconds past MIGRATION_SECONDS before the migrator is killed
SOURCE = "storage"
STORAGE_BUSY, QUERY_TIMEOUT, STORAGE_LIMIT = "storage_busy", "query_timeout", "storage_limit"
# Error codes that are a plugin running into a limit (reported as violations, counted as `refused`).
LIMIT_CODES = {"VALUE_TOO_LARGE", "MEMORY_LIMIT", "PERMISSION_DENIED"}

OPERATIONS: dict[str, Callable[[PluginDB, dict], dict]] = {
    "row.schema.register": PluginDB.register,
    "row.insert": PluginDB.insert,
    "row.select": PluginDB.select,
    "row.update": PluginDB.update,
    "row.delete": PluginDB.delete,
    "row.search": PluginDB.search,
    "kv.get": PluginDB.kv_get,
    "kv.set": PluginDB.kv_set,
    "kv.delete": PluginDB.kv_delete,
    "kv.list": PluginDB.kv_list,
}
STATUS_OPERATION = "migrate.status"


def error(code: str, message: str, **extra: Any) -> dict[str, Any]:
    return StorageError(code, message, **extra).reply()


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not valid JSON")


def parse_request(data: bytes) -> dict[str, Any]:
    if len(data) > MAX_REQUEST:
        raise StorageError("PAYLOAD_TOO_LARGE", f"the request is {len(data)} bytes; at most {MAX_REQUEST}")
    if not data.strip():
        return {}
    try:
        request = json.loads(data, parse_constant=_reject_constant)
    except RecursionError:
        raise StorageError("TOO_DEEP", f"the request nests deeper than {MAX_DEPTH} levels") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise StorageError("INVALID_JSON", f"the request is not valid JSON: {str(exc)[:200]}") from None
    if not isinstance(request, dict):
        raise StorageError("INVALID_REQUEST", "the request must be a JSON object")
    _check_depth(request)
    return request


def _check_depth(value: Any) -> None:
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise StorageError("TOO_DEEP", f"the request nests deeper than {MAX_DEPTH} levels")
        if isinstance(item, dict):
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item)


@dataclass
class Counters:
    requests: int = 0
    ok: int = 0
    errors: int = 0
    rate_limited: int = 0
    denied: int = 0
    busy: int = 0          # refused: its own in-flight cap, or the service-wide one
    timeouts: int = 0      # stopped at the query deadline (or a migration killed at its deadline)
    refused: int = 0       # a value/pattern/memory limit, or a TEMP/ATTACH refusal


@dataclass
class Tenant:
    id: str
    db: PluginDB
    bucket: TokenBucket
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    counters: Counters = field(default_factory=Counters)
    used_bytes: int | None = None     # as of its last request (stats never wait behind its queue)


class StorageService:
    def __init__(self, nc, fleet: FleetFile, data_dir: Path, *, report_interval: float = REPORT_INTERVAL,
                 heap_limit: int = SERVICE_HEAP) -> None:
        self.nc = nc
        self.fleet = fleet
        self.data_dir = Path(data_dir)
        self.tenants: dict[str, Tenant] = {}
        self.executor = concurrent.futures.ThreadPoolExecutor(WORKERS, thread_name_prefix="sqlite")
        self._inflight: set[asyncio.Task] = set()
        self._per_plugin: dict[str, int] = {}
        self._busy_unknown = 0
        self._stopping = False
        self._subs: list = []
        self.aggregator = Aggregator(report_interval)
        self.report_interval = report_interval
        self._reporter: asyncio.Task | None = None
        # One ceiling for this process (the last line of defence for the host);
        # each plugin's own ceiling applies to its migrations (migrator.py).
        self.heap_limit = heap_limit if sqliteheap.set_limits(heap_limit) else None

    # -- lifecycle ----------------------------------------------------------------

    async def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.data_dir, 0o700)
        self.fleet.reload(force=True)
        # A queue group: while a restarted instance overlaps the old one, each
        # request is still handled exactly once.
        self._subs.append(await self.nc.subscribe(f"{wire.STORAGE_ROOT}.*.>", queue=QUEUE, cb=self._on_request,
                                                  pending_msgs_limit=65_536))
        self._subs.append(await self.nc.subscribe(wire.STORAGE_MIGRATE, queue=QUEUE, cb=self._on_admin_migrate))
        self._subs.append(await self.nc.subscribe(wire.STORAGE_STATS, cb=self._on_stats))
        self._reporter = asyncio.create_task(self._report_loop(), name="storage-report")

    async def _report_loop(self) -> None:
        while True:
            await asyncio.sleep(self.report_interval)
            await publish_events(self.nc, self.aggregator, log)

    async def stop(self) -> None:
        self._stopping = True
        if self._reporter is not None:
            self._reporter.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reporter
        for sub in self._subs:
            try:
                await sub.unsubscribe()
            except Exception:  # noqa: BLE001 - the connection may be gone  # nosec B110 - best-effort unsubscribe during teardown
                pass
        if self._inflight:
            await asyncio.wait(set(self._inflight), timeout=10)
        for tenant in self.tenants.values():
            async with tenant.lock:
                await self._run(tenant.db.close)
        self.executor.shutdown(wait=True)
        with contextlib.suppress(Exception):
            await publish_events(self.nc, self.aggregator, log)   # what was counted still gets reported

    def reload(self) -> None:
        self.fleet.reload(force=True)
        for pid in self.fleet.take_changes():     # only the plugins whose entry changed
            tenant = self.tenants.get(pid)
            plan = self.fleet.plugins.get(pid, {}).get("plan")
            if tenant is None or plan is None:
                continue   # removed: its file stays; the handle closes when the service stops
            tenant.bucket.reconfigure(*self._rate(plan))
            limit = int((plan.get("limits") or {}).get("disk_bytes") or 0)
            if limit != tenant.db.max_bytes:
                task = asyncio.ensure_future(self._requota(tenant, limit))
                self._inflight.add(task)
                task.add_done_callback(self._inflight.discard)

    async def _requota(self, tenant: Tenant, limit: int) -> None:
        async with tenant.lock:
            await self._run(tenant.db.set_quota, limit)

    async def _run(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    # -- tenants --------------------------------------------------------------------

    @staticmethod
    def _rate(plan: dict) -> tuple[float, float]:
        rate = float((plan.get("rates") or {}).get("database_queries_per_second") or 1.0)
        return rate, max(1.0, float(math.ceil(rate)))   # a burst of one second's worth

    async def _tenant(self, plugin_id: str, plan: dict) -> Tenant:
        tenant = self.tenants.get(plugin_id)
        if tenant is None:
            # The id is a DNS-1123 label (checked), so the file name is exact:
            # `a-b.db` and `a.db` are different files, nothing can traverse.
            db = PluginDB(self.data_dir / f"{plugin_id}.db",
                          max_bytes=int((plan.get("limits") or {}).get("disk_bytes") or 0))
            tenant = self.tenants.setdefault(plugin_id, Tenant(plugin_id, db, TokenBucket(*self._rate(plan))))
        return tenant

    # -- requests -------------------------------------------------------------------

    async def _on_request(self, msg) -> None:
        parts = msg.subject.split(".", 3)
        plugin_id = parts[2] if len(parts) > 3 and self.fleet.get(parts[2]) is not None else None
        mine = self._per_plugin.get(plugin_id, 0) if plugin_id else 0
        if plugin_id and mine >= PLUGIN_INFLIGHT:
            self._busy(plugin_id, msg.subject)
            await self._respond(msg, error("BUSY", f"plugin {plugin_id} already has {mine} storage requests in "
                                                   f"flight (at most {PLUGIN_INFLIGHT}); wait for their answers",
                                           retry_after=1.0))
            return
        if len(self._inflight) >= MAX_INFLIGHT:
            if plugin_id:
                self._busy(plugin_id, msg.subject)
            else:
                self._busy_unknown += 1
            await self._respond(msg, error("BUSY", "the storage service is overloaded; retry shortly",
                                           retry_after=1.0))
            return
        task = asyncio.create_task(self._handle(msg))
        self._inflight.add(task)
        task.add_done_callback(self._inflight.discard)
        if plugin_id:
            self._per_plugin[plugin_id] = mine + 1
            task.add_done_callback(lambda _t, pid=plugin_id: self._done(pid))

    def _done(self, plugin_id: str) -> None:
        left = self._per_plugin.get(plugin_id, 1) - 1
        if left > 0:
            self._per_plugin[plugin_id] = left
        else:
            self._per_plugin.pop(plugin_id, None)

    def _busy(self, plugin_id: str, subject: str) -> None:
        tenant = self.tenants.get(plugin_id)
        if tenant is not None:
            tenant.counters.busy += 1
        self.aggregator.add(plugin_id, STORAGE_BUSY, subject, SOURCE)

    def _refusal(self, tenant: Tenant, subject: str, exc: StorageError) -> None:
        """Count a limit the plugin ran into, and report it."""
        cause = exc.extra.get("cause", exc.code)
        if cause == "QUERY_TIMEOUT":
            tenant.counters.timeouts += 1
            self.aggregator.add(tenant.id, QUERY_TIMEOUT, subject, SOURCE)
        elif cause in LIMIT_CODES:
            tenant.counters.refused += 1
            self.aggregator.add(tenant.id, STORAGE_LIMIT, subject, SOURCE)

    async def _handle(self, msg) -> None:
        try:
            reply = await self.process(msg.subject, msg.data, msg.headers)
        except StorageError as exc:
            reply = exc.reply()
        except Exception:  # noqa: BLE001 - never let one request take the service down
            log.exception("storage: unexpected error on %s", msg.subject)
            reply = error("INTERNAL_ERROR", "unexpected error in the storage service")
        await self._respond(msg, reply)

    @staticmethod
    async def _respond(msg, reply: dict) -> None:
        if not msg.reply:
            return
        try:
            await msg.respond(json.dumps(reply, default=str).encode())
        except Exception as exc:  # noqa: BLE001 - the requester may be gone
            log.debug("storage: cannot answer %s: %s", msg.subject, exc)

    async def process(self, subject: str, data: bytes, headers: dict | None) -> dict:
        parts = subject.split(".")
        if len(parts) < 4 or ".".join(parts[:2]) != wire.STORAGE_ROOT:
            raise StorageError("UNKNOWN_OPERATION", f"not a storage subject: {subject[:200]}")
        plugin_id, operation = parts[2], ".".join(parts[3:])
        if not PLUGIN_ID.fullmatch(plugin_id):
            raise StorageError("UNKNOWN_PLUGIN", f"{plugin_id[:64]!r} is not a plugin id")
        entry = self.fleet.get(plugin_id)
        if entry is None:
            raise StorageError("UNKNOWN_PLUGIN", f"no plugin {plugin_id!r} is running")
        self._check_identity(plugin_id, entry, headers)
        plan = entry["plan"]
        if operation not in OPERATIONS and operation != STATUS_OPERATION:
            raise StorageError("UNKNOWN_OPERATION", f"unknown storage operation {operation[:64]!r}")
        tenant = await self._tenant(plugin_id, plan)
        tenant.counters.requests += 1
        granted = (plan.get("storage") or {}).get("operations") or []
        if operation not in granted:
            tenant.counters.denied += 1
            raise StorageError("PERMISSION_DENIED", f"plugin {plugin_id} is not granted {operation} "
                                                    "(database_read allows reads, database_write writes)")
        if not tenant.bucket.take():
            tenant.counters.rate_limited += 1
            rate = tenant.bucket.rate
            wait = round(tenant.bucket.retry_after(), 3)
            raise StorageError("RATE_LIMITED",
                               f"over database_queries_per_second ({rate:g}/s); retry after {wait:g} s",
                               retry_after=wait)
        try:
            request = parse_request(data)
            async with tenant.lock:
                if self._stopping:
                    raise StorageError("UNAVAILABLE", "the storage service is restarting; retry shortly")
                if operation == STATUS_OPERATION:
                    folder = entry.get("folder")
                    result = await self._run(tenant.db.migration_status, Path(folder) if folder else None)
                else:
                    result = await self._run(OPERATIONS[operation], tenant.db, request)
        except StorageError as exc:
            tenant.counters.errors += 1
            self._refusal(tenant, subject, exc)
            raise
        tenant.counters.ok += 1
        return {"success": True, **result}

    def _check_identity(self, plugin_id: str, entry: dict, headers: dict | None) -> None:
        """The server's Nats-Request-Info names the requesting account; it must
        be this plugin's (requests from inside the platform carry none)."""
        info = (headers or {}).get(headers_wire.REQUEST_INFO)
        if info is None:
            return
        try:
            account = json.loads(info).get("acc")
        except (ValueError, AttributeError):
            account = None
        expected = entry.get("account_key")
        if not account or not expected or account != expected:
            if account and self.fleet.plugin_for_account(account) == plugin_id:
                return   # fleet.json was re-read just now and agrees
            raise StorageError("IDENTITY_MISMATCH", "the requesting account is not this plugin's")

    # -- the platform's own requests ---------------------------------------------------

    async def _on_admin_migrate(self, msg) -> None:
        task = asyncio.create_task(self._admin_migrate(msg))
        self._inflight.add(task)
        task.add_done_callback(self._inflight.discard)

    async def _admin_migrate(self, msg) -> None:
        try:
            request = parse_request(msg.data)
            plugin_id = request.get("plugin")
            if not isinstance(plugin_id, str) or not PLUGIN_ID.fullmatch(plugin_id):
                raise StorageError("VALIDATION_ERROR", "'plugin' must be a plugin id")
            entry = self.fleet.get(plugin_id) or {}
            folder = request.get("folder") or entry.get("folder")
            if not isinstance(folder, str):
                raise StorageError("VALIDATION_ERROR", "'folder' (the plugin folder) is required")
            plan = entry.get("plan") or {"limits": {"disk_bytes": request.get("disk_bytes", 0)}}
            tenant = await self._tenant(plugin_id, plan)
            async with tenant.lock:
                result = await self._run(tenant.db.pending, Path(folder))
                if result is None:
                    try:
                        result = await self._migrate_in_worker(tenant, Path(folder), plan)
                    except StorageError as exc:
                        self._refusal(tenant, f"migrations of {plugin_id}", exc)
                        raise
                    finally:
                        tenant.db.forget_schema()
            if result["applied"]:
                log.info("storage: %s migrated to version %d (%s)", plugin_id, result["current_version"],
                         ", ".join(str(a["version"]) for a in result["applied"]))
            reply = {"success": True, **result}
        except StorageError as exc:
            log.error("storage: migrating %s failed: %s", msg.data[:200], exc.message)
            reply = exc.reply()
        except Exception:  # noqa: BLE001
            log.exception("storage: migration crashed")
            reply = error("INTERNAL_ERROR", "unexpected error while migrating")
        await self._respond(msg, reply)

    async def _migrate_in_worker(self, tenant: Tenant, folder: Path, plan: dict) -> dict:
        """Run PluginDB.migrate in services/migrator.py, held to this plugin's
        heap budget and killed at the deadline (see that module)."""
        memory = int((plan.get("limits") or {}).get("memory_bytes") or 0)
        request = {"db": str(tenant.db.path), "folder": str(folder), "max_bytes": tenant.db.max_bytes,
                   "heap_bytes": heap_budget(memory)}
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "precinct.services.migrator", stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        started = time.monotonic()
        try:
            out, err = await asyncio.wait_for(proc.communicate(json.dumps(request).encode()),
                                              MIGRATION_SECONDS + MIGRATOR_GRACE)
        except asyncio.TimeoutError:
            proc.kill()
            await proc.wait()
            raise StorageError("MIGRATION_FAILED", f"the migrations ran longer than {MIGRATION_SECONDS:g} s and "
                                                   "were stopped (the unfinished one was rolled back)",
                               cause="QUERY_TIMEOUT") from None
        try:
            reply = json.loads(out.decode().strip().splitlines()[-1])
        except (ValueError, IndexError):
            tail = err.decode(errors="replace").strip().splitlines()[-1:] or [f"exit status {proc.returncode}"]
            raise StorageError("MIGRATION_FAILED", f"the migrator died after {time.monotonic() - started:.1f} s: "
                                                   f"{tail[0][:300]}") from None
        if not reply.pop("success", False):
            err_body = reply.get("error") or {}
            raise StorageError(err_body.get("code", "MIGRATION_FAILED"), err_body.get("message", "migration failed"),
                               **{k: v for k, v in err_body.items() if k not in ("code", "message")},
                               **{k: reply[k] for k in REPLY_TOP_LEVEL if k in reply})
        reply.pop("heap_limited", None)
        return reply

    async def _on_stats(self, msg) -> None:
        stats = {}
        for pid, tenant in sorted(self.tenants.items()):
            # A plugin busy with a long queue keeps its last known size: stats
            # must not wait behind it.
            if tenant.db.conn is not None and not tenant.lock.locked():
                async with tenant.lock:
                    tenant.used_bytes = await self._run(tenant.db.usage)
            stats[pid] = {**vars(tenant.counters), "used_bytes": tenant.used_bytes, "limit_bytes": tenant.db.max_bytes,
                          "in_flight": self._per_plugin.get(pid, 0)}
        await self._respond(msg, {"success": True, "plugins": stats, "busy_unknown": self._busy_unknown,
                                  "in_flight": len(self._inflight),
                                  "heap_limit": self.heap_limit or "unavailable"})


async def serve(args: argparse.Namespace) -> None:
    stop = stop_on_signals()
    loop = asyncio.get_running_loop()
    nc = await connect(args.server, args.creds, "precinct-storage", log)
    service = StorageService(nc, FleetFile(args.fleet), args.data_dir)
    await service.start()
    loop.add_signal_handler(signal.SIGHUP, service.reload)
    log.info("storage ready on %s, databases in %s", args.server, args.data_dir)
    await stop.wait()
    await service.stop()
    await nc.drain()


def main() -> None:
    parser = argparse.ArgumentParser(description="Precinct's storage service: Rosey's row/KV APIs over SQLite.")
    parser.add_argument("--server", required=True)
    parser.add_argument("--creds", required=True, help="platform credentials")
    parser.add_argument("--fleet", required=True, type=Path, help="fleet.json written by the supervisor")
    parser.add_argument("--data-dir", required=True, type=Path, help="one <plugin id>.db per plugin")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s storage %(levelname)s %(message)s")
    asyncio.run(serve(args))


if __name__ == "__main__":
    main()
