"""A plugin flooding large events cannot starve the gateway (issue 14, item 3).

Real parts only: a real nats-server, the gateway as its own process (as
`precinct up` runs it), the flooding plugin as its own process publishing
with its own credentials as fast as its connection allows, and an innocent
plugin chatting at a pace well inside its rate limit. The innocent plugin
must lose nothing and collect no rate-limit drop; the flood must be dropped
and counted on the flooder, where status and metrics read it."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time

from conftest import NatsEnv, make_plugins
from precinct.wire.subjects import GATEWAY_STATS as STATS_SUBJECT
from services_support import ServiceProcess, ask, wait_until, write_fleet

EVENT_BYTES = 400 * 1024     # under the account's 512 KiB max payload
INNOCENT_MESSAGES = 40
INNOCENT_EVERY = 0.25        # seconds: 4 a second against a limit of 5

FLOODER = r"""
import asyncio, sys, time
import nats

# The attack at full speed: PUB frames written straight to the socket, no
# per-message work in the client, as a hostile plugin would.
async def main(url, creds, seconds, size):
    nc = await nats.connect(url, user_credentials=creds, name="flooder", max_reconnect_attempts=-1,
                            reconnect_time_wait=0.1)
    frame = b"PUB rosey.event.flooder.blob %d\r\n" % size + b"x" * size + b"\r\n"
    batch = frame * 16
    end, sent = time.monotonic() + seconds, 0
    while time.monotonic() < end:
        try:
            nc._transport.write(batch)
            await nc._transport.drain()
            sent += 16
        except Exception:
            await asyncio.sleep(0.05)
    print(sent, flush=True)
    await nc.close()

asyncio.run(main(sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4])))
"""


async def test_an_innocent_plugin_loses_nothing_while_a_neighbour_floods_large_events(nats_env: NatsEnv, tmp_path):
    plans = make_plugins(
        ("flooder", {"resources": {"rate_limits": {"messages_per_second": 5, "burst": 5}}}),
        ("innocent", {"permissions": ["send_messages"],
                      "resources": {"rate_limits": {"messages_per_second": 5, "burst": 5}}}),
    )
    await nats_env.sync(*plans)
    fleet = write_fleet(tmp_path / "fleet.json", plans, nats_env.identity)
    args = ["--server", nats_env.server.url, "--creds", str(nats_env.identity.platform_creds()),
            "--fleet", str(fleet), "--report-interval", "0.5"]
    gateway = ServiceProcess("precinct.services.gateway", args, tmp_path / "gateway.log")
    gateway.start()
    platform, core = await nats_env.platform(), await nats_env.core()
    try:
        async def gateway_relays_both():
            try:
                stats = await ask(platform.nc, STATS_SUBJECT, {}, timeout=1)
            except Exception:  # noqa: BLE001 - not up yet
                return None
            return stats if {"flooder", "innocent"} <= set(stats["plugins"]) else None

        await wait_until(gateway_relays_both, f"the gateway to relay both plugins\n{gateway.output()}")
        chat = await core.collect("rosey.chat.*.send")
        violations = await platform.collect("precinct.violations.>")

        def reported(plugin: str, kind: str) -> int:
            events = [json.loads(m.data) for m in violations if m.subject == f"precinct.violations.{plugin}"]
            return sum(e["count"] for e in events if e["kind"] == kind)

        flood_events = await core.collect("rosey.event.flooder.>")
        innocent = await nats_env.plugin("innocent")

        flood_seconds = INNOCENT_MESSAGES * INNOCENT_EVERY + 4
        flooder = subprocess.Popen(
            [sys.executable, "-c", FLOODER, nats_env.server.url, str(nats_env.identity.creds_for("flooder")),
             str(flood_seconds), str(EVENT_BYTES)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            await asyncio.sleep(2)          # the flood is well under way before the first innocent line
            started = time.monotonic()
            for i in range(INNOCENT_MESSAGES):
                await innocent.nc.publish("rosey.chat.lobby.send", json.dumps({"message": f"line {i}"}).encode())
                await innocent.nc.flush()
                await asyncio.sleep(max(0.0, started + (i + 1) * INNOCENT_EVERY - time.monotonic()))
            out, err = await asyncio.to_thread(flooder.communicate, timeout=120)
        finally:
            if flooder.poll() is None:
                flooder.kill()
                flooder.wait()
        flood_sent = int(out.strip() or 0)
        assert flood_sent > 200, f"the flood did not happen: {out} {err}"

        def innocents():
            return [m for m in chat if m.headers.get("Precinct-Plugin") == "innocent"]

        await wait_until(lambda: len(innocents()) == INNOCENT_MESSAGES,
                         f"every innocent line at the core (got {len(innocents())})\n{gateway.output()[-3000:]}")
        lines = [json.loads(m.data)["message"] for m in innocents()]
        assert lines == [f"line {i}" for i in range(INNOCENT_MESSAGES)]

        stats = (await ask(platform.nc, STATS_SUBJECT, {}))["plugins"]
        assert stats["innocent"]["forwarded"] == INNOCENT_MESSAGES, stats
        assert (stats["innocent"]["rate_limited"], stats["innocent"]["dropped"], stats["innocent"]["disconnects"]) \
            == (0, 0, 0), stats
        # The flood was cut, and every cut is counted on the flooder and reported.
        flooder_stats = stats["flooder"]
        assert len(flood_events) < flood_sent and flooder_stats["rate_limited"] > 0, flooder_stats
        # Whether the raw flood also outruns the gateway (drops, a cut connection) depends on
        # how fast this machine's gateway reads; when it does, every cut is reported.
        overflowed = flooder_stats["dropped"] + flooder_stats["disconnects"]
        if overflowed:
            await wait_until(lambda: reported("flooder", "overflow") >= overflowed,
                             "overflow events covering every cut")
        else:
            print(f"the gateway kept up with the raw flood here (no drop, no cut): {flooder_stats}")
        assert reported("innocent", "overflow") == reported("innocent", "rate_limit") == 0, violations
    finally:
        gateway.stop()
