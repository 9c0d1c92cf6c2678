"""The gateway: the trusted relay between plugins and the core (platform account).

What a plugin publishes toward the core never reaches it directly. The NATS
server delivers it to the platform account under the plugin's import prefix
(docs/nats.md, "The edges"), and only this process republishes it:

  plugin.<id>.rosey.chat.<ch>.send          -> rosey.chat.<ch>.send
  plugin.<id>.rosey.channel.<ch>.message    -> rosey.channel.<ch>.message
  plugin.<id>.rosey.event.<ns>.<what>       -> rosey.event.<ns>.<what>
  plugin.<id>.<event root>.<what>           -> <event root>.<what>
  plugin.<id>.rosey.reply.<id>.<nonce>      -> rosey.reply.<id>.<nonce>   (first one per nonce only)

Every republished message carries the header `Precinct-Plugin: <id>`; the
plugin's own `Precinct-*` and `Nats-*` headers are dropped. The platform
exports the plain subjects to the core, so the core sees only what passed.

The plugin id comes from the subject prefix the server wrote, never from the
payload.

Calls between plugins. A caller's `precinct.call.<ns>.<action>` request
arrives here as `precinct.relay.<caller id>.<ns>.<action>` (the server
wrote the id; the caller may only publish the calls its manifest declares).
The gateway checks the pair (the caller declared the call; the plugin whose
subject namespace is <ns> exports <action>), takes a token from the caller's
`calls_per_second` bucket, and asks the callee on
`precinct.export.<callee id>.<action>` with the headers `Precinct-Caller:
<caller id>` and `Precinct-Caller-Namespace: <ns>` (the caller's own
`Precinct-*` and `Nats-*` headers dropped first), then passes the answer
back. What it refuses is answered at once with
`{"ok": false, "code": ..., "error": ...}` (codes in CALL_ERRORS) and counted;
a refused pair or rate is also reported as a violation.

Isolation. Each plugin is relayed over a NATS connection of its own (named
`precinct-gateway:<id>`), which also carries what the gateway republishes
for it. The server buffers up to `max_pending` bytes per connection and cuts
a connection that falls further behind ("slow consumer"): with one shared
connection, one plugin flooding large events got the whole gateway cut, and
every other plugin's messages were lost with it, or arrived late in a bunch
and cost them rate-limit drops. With one connection per plugin the cut hits
only the flooder's connection (the gateway reconnects it), and the client
drops early what does not fit a small per-plugin buffer
(`PENDING_MSGS`/`PENDING_BYTES`). Both are counted on that plugin (`dropped`,
`disconnects`) and reported as violations of kind `overflow`. Per plugin, chat and events share a token bucket
(`messages_per_second`, `burst`); payload replies have a bucket of their own
with the same numbers, so a chatty plugin still gets its answers through.
What a bucket refuses is dropped and counted.

Violations. Rate-limit excess and duplicate payload replies are seen here;
permission violations only appear in the NATS server's log, which this
process tails (serverlog.py). All of them are aggregated per plugin, kind and
source over `--report-interval` seconds and published as one event each on
`precinct.violations.<id>` in the platform account:

  {"plugin": "flooder", "kind": "rate_limit", "subject": "rosey.chat.x.send",
   "subjects": ["rosey.chat.x.send"], "count": 195,
   "first": "2026-11-27T22:45:55.355Z", "last": "2026-11-27T22:45:56.901Z",
   "source": "gateway", "window_seconds": 2.0}

`kind` is `rate_limit`, `permission`, `duplicate_reply` or `overflow` (the
plugin sent faster than the gateway could even read: dropped unread); `source` is
`gateway` or `nats-server-log`. A flood therefore yields at most a few events
per plugin per interval, however many messages it sends.

`precinct.gateway.stats` (platform) answers with per-plugin counters.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import logging
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Awaitable, Callable

import nats
from nats.errors import NoRespondersError, SlowConsumerError

from .buckets import TokenBucket
from ..wire import headers as headers_wire
from ..wire import subjects as wire
from .lifecycle import connect, stop_on_signals
from .fleetfile import FleetFile
from .serverlog import LogTail, parse_violation
from .violationevents import REPORT_INTERVAL, Aggregator, publish_events

log = logging.getLogger("precinct.gateway")


RATE_LIMIT, PERMISSION, DUPLICATE_REPLY, OVERFLOW = "rate_limit", "permission", "duplicate_reply", "overflow"
SOURCE_GATEWAY, SOURCE_LOG = "gateway", "nats-server-log"

NONCE_TTL = 600.0             # seconds a payload-reply nonce is remembered
NONCES_PER_PLUGIN = 10_000    # bound on remembered nonces per plugin (oldest forgotten first)
LOG_POLL = 0.25               # seconds between reads of the server log
STALE_LOG_LINE = 600.0        # log lines older than this are not reported
PENDING_MSGS = 8_192          # per-plugin buffer in the gateway before it drops unread...
PENDING_BYTES = 8 * 2**20     # ...or this many bytes (16 messages of the largest size)
CUT_SUBJECT = "(connection cut by the server: slow consumer)"
VERDICT_CACHE = 4096          # remembered subject checks per plugin
CALL_TIMEOUT = 8.0            # seconds a callee may take (the runner's callers wait 10 s by default)
CALLS_IN_FLIGHT = 32          # per caller: calls awaiting their callee at once

# Why the gateway answered a call itself instead of the callee.
NOT_DECLARED, RATE_LIMITED, UNAVAILABLE, TIMEOUT, BUSY = "not_declared", "rate_limited", "unavailable", "timeout", "busy"
CALL_ERRORS = (NOT_DECLARED, RATE_LIMITED, UNAVAILABLE, TIMEOUT, BUSY)


def subject_matches(pattern: str, subject: str) -> bool:
    """NATS wildcard match: `*` one token, a final `>` one or more."""
    p, s = pattern.split("."), subject.split(".")
    for i, token in enumerate(p):
        if token == ">":  # nosec B105 - a NATS subject wildcard, not a password
            return i == len(p) - 1 and len(s) > i
        if i >= len(s) or (token != "*" and token != s[i]):  # nosec B105 - a NATS subject wildcard, not a password
            return False
    return len(p) == len(s)


# -- one plugin's state --------------------------------------------------------------


@dataclass
class Counters:
    forwarded: int = 0
    rate_limited: int = 0
    duplicate_replies: int = 0
    foreign_replies: int = 0
    not_allowed: int = 0
    permission_violations: int = 0
    dropped: int = 0             # dropped unread: the plugin's buffer in the gateway was full
    disconnects: int = 0         # the server cut this plugin's gateway connection (slow consumer)
    calls_answered: int = 0      # its calls the callee answered
    calls_rate_limited: int = 0  # its calls refused by calls_per_second (or too many in flight)
    calls_failed: int = 0        # its calls refused otherwise: not declared, nobody exports it, no answer in time
    calls_served: int = 0        # calls to its exports it answered


class PluginState:
    def __init__(self, plugin_id: str, plan: dict[str, Any]) -> None:
        self.id = plugin_id
        self.header = {headers_wire.PLUGIN: plugin_id}
        rate, burst = self._rates(plan)
        self.out_bucket = TokenBucket(rate, burst)      # a new plugin may send its burst at once
        self.reply_bucket = TokenBucket(rate, burst)
        self.call_bucket = TokenBucket(*self._call_rates(plan))
        self.calls_in_flight = 0
        self.namespace = plugin_id
        self.calls: frozenset[str] = frozenset()
        self.exports: frozenset[str] = frozenset()
        self.allowed: tuple[str, ...] = ()
        self._verdicts: dict[str, bool] = {}          # subject -> allowed, so the match runs once per subject
        self.nonces: collections.OrderedDict[str, float] = collections.OrderedDict()
        self.counters = Counters()
        self.subscription = None
        self.call_subscription = None
        self.nc = None               # this plugin's own connection (None: the gateway's shared one)
        self.configure(plan)

    @staticmethod
    def _rates(plan: dict[str, Any]) -> tuple[float, float]:
        rates = plan.get("rates") or {}
        rate = float(rates.get("messages_per_second") or 1.0)
        return rate, float(rates.get("burst") or max(1, int(rate + 0.999)))

    @staticmethod
    def _call_rates(plan: dict[str, Any]) -> tuple[float, float]:
        rate = float((plan.get("rates") or {}).get("calls_per_second") or 1.0)
        return rate, float(max(1, int(rate + 0.999)))      # one second's worth

    def configure(self, plan: dict[str, Any]) -> None:
        rate, burst = self._rates(plan)
        self.out_bucket.reconfigure(rate, burst)
        self.reply_bucket.reconfigure(rate, burst)
        self.call_bucket.reconfigure(*self._call_rates(plan))
        self.namespace = plan.get("namespace") or self.id
        self.calls = frozenset(plan.get("calls") or ())
        self.exports = frozenset(plan.get("exports") or ())
        # Defence in depth: the server already refuses anything else, but the
        # plan is what this plugin was granted, so check against it too.
        exports = (plan.get("account") or {}).get("exports") or []
        self.allowed = tuple(e["subject"] for e in exports if e.get("kind") == "stream")
        self._verdicts = {}

    def is_allowed(self, subject: str) -> bool:
        verdict = self._verdicts.get(subject)
        if verdict is None:
            verdict = any(subject_matches(p, subject) for p in self.allowed)
            if len(self._verdicts) >= VERDICT_CACHE:
                self._verdicts.clear()
            self._verdicts[subject] = verdict
        return verdict

    def first_reply(self, nonce: str, now: float) -> bool:
        """True the first time `nonce` is seen (within the TTL and the memory bound)."""
        nonces = self.nonces
        while nonces:
            oldest, stamp = next(iter(nonces.items()))
            if now - stamp <= NONCE_TTL and len(nonces) < NONCES_PER_PLUGIN:
                break
            nonces.popitem(last=False)
        if nonce in nonces:
            return False
        nonces[nonce] = now
        return True


# -- the gateway ---------------------------------------------------------------------


LinkFactory = Callable[[str, Callable[[Exception], Awaitable[None]], Callable[[], Awaitable[None]]], Awaitable[Any]]


class Gateway:
    """`connect_link(name, error_cb, disconnected_cb)` opens one plugin's own
    connection; without it every plugin shares `nc` (unit tests only)."""

    def __init__(self, nc, fleet: FleetFile, *, report_interval: float = REPORT_INTERVAL,
                 server_log: Path | None = None, offset_file: Path | None = None,
                 connect_link: LinkFactory | None = None) -> None:
        self.nc = nc
        self.connect_link = connect_link
        self.fleet = fleet
        self.aggregator = Aggregator(report_interval)
        self.report_interval = report_interval
        self.plugins: dict[str, PluginState] = {}
        self.by_namespace: dict[str, PluginState] = {}    # subject namespace -> plugin (callees by name)
        self._calls: set[asyncio.Task] = set()
        self.tail = LogTail(server_log, offset_file) if server_log else None
        self.unknown_accounts: collections.Counter[str] = collections.Counter()
        self._tasks: list[asyncio.Task] = []
        self._stats_sub = None
        self._sync_lock = asyncio.Lock()   # SIGHUP and the mtime watch may both ask for a sync

    # -- lifecycle ----------------------------------------------------------------

    async def start(self) -> None:
        self.fleet.reload(force=True)
        await self.sync()
        self._stats_sub = await self.nc.subscribe(wire.GATEWAY_STATS, cb=self._on_stats)
        self._tasks.append(asyncio.create_task(self._report_loop(), name="gateway-report"))
        self._tasks.append(asyncio.create_task(self._watch_fleet(), name="gateway-fleet"))
        if self.tail:
            self._tasks.append(asyncio.create_task(self._tail_loop(), name="gateway-log"))

    async def stop(self) -> None:
        for task in [*self._tasks, *self._calls]:
            task.cancel()
        for task in [*self._tasks, *self._calls]:
            try:
                await task
            except (asyncio.CancelledError, Exception):
                pass
        for state in self.plugins.values():
            await self._close_link(state)
        await self.report()   # what was counted still gets reported
        if self.tail:
            self.tail.save_offset()
            self.tail.close()

    async def reload(self) -> None:
        self.fleet.reload(force=True)
        await self.sync()

    async def sync(self) -> None:
        """One connection and subscription per plugin, `plugin.<id>.>`: a
        flooding plugin fills only its own buffers, and a slow-consumer cut
        by the server hits only its own connection."""
        async with self._sync_lock:
            await self._sync()

    async def _sync(self) -> None:
        wanted = self.fleet.plugins
        changed = self.fleet.take_changes()
        for pid in [p for p in self.plugins if p not in wanted]:
            await self._close_link(self.plugins.pop(pid))
            log.info("gateway: %s removed", pid)
        new = []
        for pid, entry in wanted.items():
            state = self.plugins.get(pid)
            if state is None:
                state = self.plugins[pid] = PluginState(pid, entry["plan"])
                new.append(state)
            elif pid in changed:
                state.configure(entry["plan"])
        # Subject namespaces are claimed by one plugin each (spec/ownership.py).
        self.by_namespace = {state.namespace: state for state in self.plugins.values()}
        results = await asyncio.gather(*(self._open_link(state) for state in new), return_exceptions=True)
        for state, result in zip(new, results):
            if isinstance(result, BaseException):
                # Retried by the next sync (the fleet watch asks for one); the others go ahead.
                log.error("gateway: cannot relay %s: %s", state.id, result)
                await self._close_link(self.plugins.pop(state.id))
                if self.by_namespace.get(state.namespace) is state:
                    del self.by_namespace[state.namespace]
            else:
                log.info("gateway: relaying %s", state.id)

    async def _open_link(self, state: PluginState) -> None:
        if self.connect_link is not None:
            state.nc = await self.connect_link(f"precinct-gateway:{state.id}", self._link_error(state),
                                               self._link_cut(state))
        nc = state.nc or self.nc
        state.subscription = await nc.subscribe(f"plugin.{state.id}.>", cb=self._handler(state),
                                                pending_msgs_limit=PENDING_MSGS, pending_bytes_limit=PENDING_BYTES)
        # Every plugin, not only those declaring calls now: a changed manifest
        # reconfigures a plugin without reopening its link.
        state.call_subscription = await nc.subscribe(wire.relayed_calls(state.id), cb=self._call_handler(state),
                                                     pending_msgs_limit=PENDING_MSGS,
                                                     pending_bytes_limit=PENDING_BYTES)

    async def _close_link(self, state: PluginState) -> None:
        nc, state.nc = state.nc, None
        try:
            if nc is not None:
                await nc.close()
            else:
                for sub in (state.subscription, state.call_subscription):
                    if sub is not None:
                        await sub.unsubscribe()
        except Exception:  # noqa: BLE001 - the connection may be gone  # nosec B110 - best-effort during teardown
            pass

    def _link_error(self, state: PluginState):
        async def on_error(exc: Exception) -> None:
            if isinstance(exc, SlowConsumerError):
                self.dropped(state, exc.subject or "")
            else:
                log.warning("nats (%s): %s", state.id, exc)
        return on_error

    def _link_cut(self, state: PluginState):
        async def on_disconnected() -> None:
            if state.nc is None or state.nc.is_closed:
                return   # we closed it
            state.counters.disconnects += 1
            self.aggregator.add(state.id, OVERFLOW, CUT_SUBJECT, SOURCE_GATEWAY)
            log.warning("gateway: %s's connection was cut (slow consumer); reconnecting", state.id)
        return on_disconnected

    def dropped(self, state: PluginState, subject: str) -> None:
        """A message from `state` dropped unread (its buffer here was full)."""
        state.counters.dropped += 1
        prefix = f"plugin.{state.id}."
        self.aggregator.add(state.id, OVERFLOW, subject[len(prefix):] if subject.startswith(prefix) else subject,
                            SOURCE_GATEWAY)

    async def _watch_fleet(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            try:
                if self.fleet.reload() or set(self.fleet.plugins) - set(self.plugins):
                    await self.sync()
            except Exception:  # noqa: BLE001 - keep relaying with the fleet we have
                log.exception("gateway: fleet reload failed")

    # -- relaying -----------------------------------------------------------------

    def _handler(self, state: PluginState):
        prefix = f"plugin.{state.id}."
        cut = len(prefix)

        async def on_message(msg) -> None:
            subject = msg.subject
            if not subject.startswith(prefix):   # cannot happen: the subscription is plugin.<id>.>
                return
            await self.relay(state, subject[cut:], msg.data, msg.headers)

        return on_message

    async def relay(self, state: PluginState, subject: str, data: bytes, headers: dict | None) -> bool:
        """Forward one message from plugin `state.id` if it passes; True if forwarded."""
        now = time.monotonic()
        if subject.startswith(wire.REPLY_ROOT + "."):
            parts = subject.split(".")
            if len(parts) != 4 or parts[2] != state.id:
                state.counters.foreign_replies += 1
                self.aggregator.add(state.id, PERMISSION, subject, SOURCE_GATEWAY)
                return False
            if not state.first_reply(parts[3], now):
                state.counters.duplicate_replies += 1
                self.aggregator.add(state.id, DUPLICATE_REPLY, subject, SOURCE_GATEWAY)
                return False
            bucket = state.reply_bucket
        else:
            if not state.is_allowed(subject):
                state.counters.not_allowed += 1
                self.aggregator.add(state.id, PERMISSION, subject, SOURCE_GATEWAY)
                return False
            bucket = state.out_bucket
        if not bucket.take(now):
            state.counters.rate_limited += 1
            self.aggregator.add(state.id, RATE_LIMIT, subject, SOURCE_GATEWAY)
            return False
        if headers:
            out = {k: v for k, v in headers.items() if not k.lower().startswith(("nats-", "precinct-"))}
            out[headers_wire.PLUGIN] = state.id
        else:
            out = state.header          # the common case: nothing to filter, no dict to build
        await (state.nc or self.nc).publish(subject, data, headers=out)
        state.counters.forwarded += 1
        return True

    # -- calls between plugins ---------------------------------------------------------

    def _call_handler(self, state: PluginState):
        cut = len(wire.relayed_calls(state.id, ""))

        async def on_call(msg) -> None:
            await self.call(state, msg.subject[cut:], msg)

        return on_call

    async def call(self, caller: PluginState, target: str, msg) -> None:
        """One call from `caller` (its id from the subject the server wrote) to
        `target` (`<ns>.<action>`). Checked and counted here, at once; the
        callee is awaited in a task of its own, so a slow callee holds up
        neither this caller's other calls nor anyone else's."""
        subject = wire.call(target)       # what the caller published: what its reports name
        if not msg.reply:
            caller.counters.calls_failed += 1      # a call nobody waits for: nothing to pass on
            return
        if target not in caller.calls:
            # The server already refuses an undeclared call; were the mapping ever wrong, this still does.
            caller.counters.calls_failed += 1
            self.aggregator.add(caller.id, PERMISSION, subject, SOURCE_GATEWAY)
            return await self._refuse(caller, msg, NOT_DECLARED, f"{target} is not among the calls {caller.id} declares")
        if not caller.call_bucket.take():
            caller.counters.calls_rate_limited += 1
            self.aggregator.add(caller.id, RATE_LIMIT, subject, SOURCE_GATEWAY)
            return await self._refuse(caller, msg, RATE_LIMITED,
                                      f"over calls_per_second ({caller.call_bucket.rate:g}/s)")
        namespace, _, action = target.partition(".")
        callee = self.by_namespace.get(namespace)
        if callee is None or action not in callee.exports:
            caller.counters.calls_failed += 1
            return await self._refuse(caller, msg, UNAVAILABLE, f"no plugin in this fleet exports {target}")
        if caller.calls_in_flight >= CALLS_IN_FLIGHT:
            caller.counters.calls_rate_limited += 1
            self.aggregator.add(caller.id, RATE_LIMIT, subject, SOURCE_GATEWAY)
            return await self._refuse(caller, msg, BUSY, f"{CALLS_IN_FLIGHT} calls already waiting for an answer")
        headers = {k: v for k, v in (msg.headers or {}).items() if not k.lower().startswith(("nats-", "precinct-"))}
        headers[headers_wire.CALLER] = caller.id
        headers[headers_wire.CALLER_NAMESPACE] = caller.namespace
        caller.calls_in_flight += 1
        task = asyncio.create_task(self._forward_call(caller, callee, action, msg, headers))
        self._calls.add(task)
        task.add_done_callback(self._calls.discard)

    async def _forward_call(self, caller: PluginState, callee: PluginState, action: str, msg, headers: dict) -> None:
        nc = caller.nc or self.nc
        try:
            answer = await nc.request(wire.export(callee.id, action), msg.data, timeout=CALL_TIMEOUT, headers=headers)
        except NoRespondersError:
            caller.counters.calls_failed += 1
            await self._refuse(caller, msg, UNAVAILABLE, f"{callee.id} is not running")
        except asyncio.TimeoutError:
            caller.counters.calls_failed += 1
            await self._refuse(caller, msg, TIMEOUT, f"{callee.id} did not answer within {CALL_TIMEOUT:g} s")
        except Exception as exc:  # noqa: BLE001 - e.g. the link reconnecting: the caller gets an answer anyway
            caller.counters.calls_failed += 1
            await self._refuse(caller, msg, UNAVAILABLE, f"relaying to {callee.id} failed: {type(exc).__name__}")
        else:
            caller.counters.calls_answered += 1
            callee.counters.calls_served += 1
            await self._answer(caller, msg, answer.data)
        finally:
            caller.calls_in_flight -= 1

    async def _refuse(self, caller: PluginState, msg, code: str, why: str) -> None:
        await self._answer(caller, msg, json.dumps({"ok": False, "code": code, "error": why}).encode())

    async def _answer(self, caller: PluginState, msg, data: bytes) -> None:
        try:
            await (caller.nc or self.nc).publish(msg.reply, data)
        except Exception as exc:  # noqa: BLE001 - the caller's link may be gone; it times out instead
            log.debug("gateway: answering %s's call failed: %s", caller.id, exc)

    # -- the server log -------------------------------------------------------------

    def ingest_log_lines(self, lines: list[str]) -> int:
        """Attribute violation lines to plugins; returns how many were counted."""
        counted = 0
        now = time.time()
        for line in lines:
            violation = parse_violation(line, now)
            if violation is None:
                continue
            pid = self.fleet.plugin_for_account(violation.account)
            if pid is None:
                # core, platform, system, or a plugin already removed
                self.unknown_accounts[violation.account] += 1
                continue
            if now - violation.at > STALE_LOG_LINE:
                continue
            kind = DUPLICATE_REPLY if violation.subject.startswith("_R_.") else PERMISSION
            self.aggregator.add(pid, kind, violation.subject, SOURCE_LOG, at=min(violation.at, now))
            state = self.plugins.get(pid)
            if state is not None:
                state.counters.permission_violations += 1
            counted += 1
        return counted

    async def _tail_loop(self) -> None:
        assert self.tail is not None
        saved_at = time.monotonic()
        while True:
            try:
                lines = await asyncio.to_thread(self.tail.read_lines)
                if lines:
                    self.ingest_log_lines(lines)
                if time.monotonic() - saved_at > 2.0:
                    self.tail.save_offset()
                    saved_at = time.monotonic()
            except Exception:  # noqa: BLE001 - a bad line must not stop the tail
                log.exception("gateway: reading the server log failed")
            await asyncio.sleep(LOG_POLL)

    # -- reporting --------------------------------------------------------------------

    async def report(self) -> list[dict[str, Any]]:
        return await publish_events(self.nc, self.aggregator, log)

    async def _report_loop(self) -> None:
        while True:
            await asyncio.sleep(self.report_interval)
            await self.report()

    def stats(self) -> dict[str, Any]:
        return {
            "plugins": {pid: vars(state.counters) for pid, state in sorted(self.plugins.items())},
            "unknown_accounts": dict(self.unknown_accounts),
        }

    async def _on_stats(self, msg) -> None:
        if msg.reply:
            await msg.respond(json.dumps(self.stats()).encode())


async def serve(args: argparse.Namespace) -> None:
    stop = stop_on_signals()
    loop = asyncio.get_running_loop()
    nc = await connect(args.server, args.creds, "precinct-gateway", log)

    async def connect_link(name, error_cb, disconnected_cb):
        return await nats.connect(args.server, user_credentials=args.creds, name=name, error_cb=error_cb,
                                  disconnected_cb=disconnected_cb, max_reconnect_attempts=-1,
                                  reconnect_time_wait=0.5)

    gateway = Gateway(nc, FleetFile(args.fleet), report_interval=args.report_interval,
                      server_log=args.server_log, offset_file=args.offset_file, connect_link=connect_link)
    await gateway.start()
    loop.add_signal_handler(signal.SIGHUP, lambda: asyncio.ensure_future(gateway.reload()))
    log.info("gateway ready on %s", args.server)
    await stop.wait()
    await gateway.stop()
    await nc.drain()


def main() -> None:
    parser = argparse.ArgumentParser(
        description="Precinct's gateway: rate-limits and relays plugin traffic to the core; reports violations.")
    parser.add_argument("--server", required=True)
    parser.add_argument("--creds", required=True, help="platform credentials")
    parser.add_argument("--fleet", required=True, type=Path, help="fleet.json written by the supervisor")
    parser.add_argument("--server-log", type=Path, help="the NATS server's log file, tailed for violations")
    parser.add_argument("--offset-file", type=Path, help="where to remember the position in the server log")
    parser.add_argument("--report-interval", type=float, default=REPORT_INTERVAL,
                        help="seconds over which violations are aggregated into one event")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s gateway %(levelname)s %(message)s")
    asyncio.run(serve(args))


if __name__ == "__main__":
    main()
