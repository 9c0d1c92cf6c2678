"""The gateway against a real nats-server: plugins publish with their own
credentials, the server's import prefixes deliver to the platform, the
gateway decides what reaches the core. Plus its two parsers (server log
lines, log rotation) as plain unit tests."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from nats.aio.msg import Msg

from conftest import NatsEnv, eventually, make_plugins
from precinct.services.gateway import Aggregator
from precinct.wire.subjects import GATEWAY_STATS as STATS_SUBJECT
from precinct.services.serverlog import LogTail, parse_violation
from services_support import ask, started_gateway, wait_until

ACC = "A" + "B" * 55
OTHER = "A" + "C" * 55
USER = "U" + "D" * 55
QUIET = 0.5
REPORT = 0.3     # the gateway's violation window in these tests (seconds)


# -- the server log -------------------------------------------------------------------


def test_violation_lines_are_parsed_from_the_right():
    line = (f'[21430] 2026/11/27 22:45:55.375575 [ERR] 127.0.0.1:41148 - cid:7 - "v2.16.0:python3:quiet" - '
            f'"{ACC}/plugin:mute/jwt:{USER}" - Publish Violation - Subject "rosey.chat.lobby.send"')
    v = parse_violation(line)
    assert v is not None and (v.account, v.operation, v.subject) == (ACC, "publish", "rosey.chat.lobby.send")
    assert abs(v.at - time.mktime(time.strptime("2026-11-27 22:45:55", "%Y-%m-%d %H:%M:%S")) - 0.375575) < 0.01

    sub = parse_violation(f'[1] 2026/11/27 22:45:55.1 [ERR] x - "{ACC}/plugin:mute/jwt:{USER}" - '
                          'Subscription Violation - Subject "rosey.x.>", Queue: "qq", SID 2')
    assert sub is not None and (sub.operation, sub.subject) == ("subscribe", "rosey.x.>")
    escaped = parse_violation(f'[1] 2026/11/27 22:45:55.1 [ERR] x - "{ACC}/plugin:mute/jwt:{USER}" - '
                              'Publish Violation - Subject "we\\"ird.sub"')
    assert escaped is not None and escaped.subject == 'we"ird.sub'

    # A client name crafted to look like another account's violation (the server escapes its quotes).
    forged = (f'[1] 2026/11/27 22:45:55.1 [ERR] 127.0.0.1:1 - cid:7 - "v2.16.0:python3:evil\\" - '
              f'\\"{OTHER}/plugin:victim/jwt:{USER}\\" - Publish Violation - Subject \\"framed" - '
              f'"{ACC}/plugin:evil/jwt:{USER}" - Publish Violation - Subject "real.subject"')
    v = parse_violation(forged)
    assert v is not None and (v.account, v.subject) == (ACC, "real.subject")
    name_only = (f'[1] 2026/11/27 22:45:55.1 [INF] 127.0.0.1:1 - cid:7 - "v2.16.0:python3:x\\" - '
                 f'\\"{OTHER}/plugin:victim/jwt:{USER}\\" - Publish Violation - Subject \\"framed" - Client connected')
    assert parse_violation(name_only) is None
    assert parse_violation("[1] 2026/11/27 22:45:55.1 [INF] Server is ready") is None


def test_log_tail_follows_appends_rotation_and_resumes(tmp_path):
    log, offsets = tmp_path / "nats-server.log", tmp_path / "offset.json"
    log.write_text("[1] old run\n[2] 2026/01/01 00:00:00 [INF] Starting nats-server\nline A\n")
    tail = LogTail(log, offsets)
    assert tail.read_lines() == ["[2] 2026/01/01 00:00:00 [INF] Starting nats-server", "line A"]
    with open(log, "a") as fh:
        fh.write("line B\npartial")
    assert tail.read_lines() == ["line B"]
    with open(log, "a") as fh:
        fh.write(" done\n")
    assert tail.read_lines() == ["partial done"]
    tail.save_offset()
    tail.close()

    # A restarted reader resumes exactly where the last one stopped.
    with open(log, "a") as fh:
        fh.write("line C\n")
    resumed = LogTail(log, offsets)
    assert resumed.read_lines() == ["line C"]

    # Rotation: the server renames the file and starts a new one.
    with open(log, "a") as fh:
        fh.write("last of old\n")
    log.rename(tmp_path / "nats-server.log.1")
    log.write_text("first of new\n")
    assert resumed.read_lines() == ["last of old", "first of new"]
    # Truncation in place (shorter than what was read): start over.
    log.write_text("cut\n")
    assert resumed.read_lines() == ["cut"]


def test_aggregator_turns_a_flood_into_one_event_per_kind():
    agg = Aggregator(interval=2.0)
    for i in range(10_000):
        agg.add("flooder", "rate_limit", f"rosey.chat.c{i % 50}.send", "gateway", at=1000.0 + i / 1000)
    agg.add("flooder", "permission", "rosey.platform.x.message", "nats-server-log", at=1001.0)
    events = agg.drain()
    assert len(events) == 2
    flood = next(e for e in events if e["kind"] == "rate_limit")
    assert flood["count"] == 10_000 and flood["plugin"] == "flooder" and flood["subject"] == "rosey.chat.c0.send"
    assert len(flood["subjects"]) == 10 and flood["first"] < flood["last"]
    assert flood["first"].endswith("Z") and flood["window_seconds"] == 2.0
    assert agg.drain() == []


# -- relaying against a real server ------------------------------------------------------


@pytest.fixture
async def gateway(nats_env: NatsEnv, tmp_path):
    plans = make_plugins(
        ("talker", {"permissions": ["send_messages"], "events": ["talkstats"],
                    "resources": {"rate_limits": {"messages_per_second": 5, "burst": 5}}}),
        ("polite", {"permissions": ["send_messages"]}),
        ("mute", {}),
    )
    gw, platform = await started_gateway(nats_env, tmp_path, plans, REPORT)
    violations = await platform.collect("precinct.violations.>")
    core = await nats_env.core()
    try:
        yield gw, core, violations, platform
    finally:
        await gw.stop()


def events(violations: list[Msg], plugin: str, kind: str) -> list[dict]:
    out = [json.loads(m.data) for m in violations if m.subject == f"precinct.violations.{plugin}"]
    return [e for e in out if e["kind"] == kind]


async def test_chat_is_rate_limited_per_plugin_and_marked_with_its_id(gateway, nats_env: NatsEnv):
    gw, core, violations, platform = gateway
    at_core = await core.collect("rosey.chat.*.send")
    talker, polite = await nats_env.plugin("talker"), await nats_env.plugin("polite")

    sent = 300
    for i in range(sent):
        await talker.nc.publish("rosey.chat.lobby.send", json.dumps({"message": f"spam {i}"}).encode(),
                                headers={"Precinct-Plugin": "polite", "X-Trace": "t1"})
    await talker.nc.flush()
    await polite.nc.publish("rosey.chat.lobby.send", b'{"message": "hello"}')
    await polite.nc.flush()

    await eventually(lambda: any(m.headers.get("Precinct-Plugin") == "polite" for m in at_core), 10,
                     "polite's message at the core")
    stats = await wait_until(lambda: ask(platform.nc, STATS_SUBJECT, {}), "gateway stats")

    async def all_counted():
        s = await ask(platform.nc, STATS_SUBJECT, {})
        c = s["plugins"]["talker"]
        return s if c["forwarded"] + c["rate_limited"] == sent else None

    stats = await wait_until(all_counted, "every talker message to be forwarded or dropped")
    counted = stats["plugins"]["talker"]
    from_talker = [m for m in at_core if m.headers.get("Precinct-Plugin") == "talker"]
    assert len(from_talker) == counted["forwarded"]
    assert 5 <= counted["forwarded"] < sent and counted["rate_limited"] > 0
    # The header is the gateway's, whatever the plugin put there; other headers pass.
    assert all(m.headers["X-Trace"] == "t1" for m in from_talker)
    assert stats["plugins"]["polite"]["forwarded"] == 1 and stats["plugins"]["polite"]["rate_limited"] == 0

    # Reported: a few aggregated events whose counts add up to what was dropped.
    await wait_until(lambda: sum(e["count"] for e in events(violations, "talker", "rate_limit"))
                     == counted["rate_limited"], "rate-limit events covering every drop")
    reported = events(violations, "talker", "rate_limit")
    assert len(reported) < 20, "a flood must not become a flood of events"
    assert all(e["plugin"] == "talker" and e["subject"] == "rosey.chat.lobby.send" and e["source"] == "gateway"
               and e["first"] <= e["last"] for e in reported)
    assert not events(violations, "polite", "rate_limit")


async def test_payload_replies_once_per_nonce_and_events_pass(gateway, nats_env: NatsEnv):
    gw, core, violations, _platform = gateway
    replies = await core.collect("rosey.reply.>")
    at_core_events = await core.collect("rosey.event.>")
    at_core_roots = await core.collect("talkstats.>")
    talker = await nats_env.plugin("talker")

    await talker.nc.publish("rosey.reply.talker.n1", b'{"success": true}')
    await talker.nc.publish("rosey.reply.talker.n1", b'{"success": true, "again": 1}')   # second answer
    await talker.nc.publish("rosey.reply.talker.n2", b'{"success": true}')
    await talker.nc.publish("rosey.event.talker.scored", b"{}")
    await talker.nc.publish("talkstats.daily", b"{}")
    await talker.nc.flush()

    await eventually(lambda: len(replies) == 2 and at_core_events and at_core_roots, 10, "relayed messages")
    await asyncio.sleep(QUIET)
    assert sorted(m.subject for m in replies) == ["rosey.reply.talker.n1", "rosey.reply.talker.n2"]
    assert next(m for m in replies if m.subject.endswith("n1")).data == b'{"success": true}'   # the first wins
    assert [m.subject for m in at_core_events] == ["rosey.event.talker.scored"]
    assert [m.subject for m in at_core_roots] == ["talkstats.daily"]
    await wait_until(lambda: events(violations, "talker", "duplicate_reply"), "a duplicate_reply event")
    dup = events(violations, "talker", "duplicate_reply")[0]
    assert dup["count"] == 1 and dup["subject"] == "rosey.reply.talker.n1"


async def test_defence_in_depth_refuses_what_the_plan_does_not_grant(gateway):
    """What the server already stops must not pass the gateway either (were the
    mapping ever wrong): foreign replies and ungranted subjects are dropped."""
    gw, core, violations, _platform = gateway
    at_core = await core.collect(">")
    state = gw.plugins["talker"]
    assert not await gw.relay(state, "rosey.reply.polite.n1", b"{}", None)
    assert not await gw.relay(state, "rosey.platform.cytube.message", b"{}", None)
    assert await gw.relay(state, "rosey.channel.lobby.message", b"{}", None)
    await core.nc.flush()
    await eventually(lambda: len(at_core) == 1, 10, "the granted message")
    await asyncio.sleep(QUIET)
    assert [m.subject for m in at_core] == ["rosey.channel.lobby.message"]
    await wait_until(lambda: events(violations, "talker", "permission"), "permission events")
    subjects = {s for e in events(violations, "talker", "permission") for s in e["subjects"]}
    assert subjects == {"rosey.reply.polite.n1", "rosey.platform.cytube.message"}


async def test_permission_violations_come_from_the_server_log(gateway, nats_env: NatsEnv):
    gw, core, violations, _platform = gateway
    # A client name crafted to frame another plugin: attribution uses the server's account key.
    mute = await nats_env.connect(
        nats_env.identity.creds_for("mute"),
        name=f'x" - "{nats_env.identity.account_key("plugin:polite")}/plugin:polite/jwt:{USER}" - '
             'Publish Violation - Subject "framed')
    await mute.nc.publish("rosey.chat.lobby.send", b"psst")          # not granted: the server refuses
    await mute.nc.subscribe("rosey.platform.*.pm")
    await mute.violation('publish to "rosey.chat.lobby.send"')

    await wait_until(lambda: len({s for e in events(violations, "mute", "permission") for s in e["subjects"]}) == 2,
                     "both violations attributed to mute")
    found = events(violations, "mute", "permission")
    assert {s for e in found for s in e["subjects"]} == {"rosey.chat.lobby.send", "rosey.platform.*.pm"}
    assert all(e["source"] == "nats-server-log" for e in found)
    await asyncio.sleep(REPORT * 3)
    assert not [m for m in violations if m.subject == "precinct.violations.polite"]
    assert gw.stats()["plugins"]["mute"]["permission_violations"] == 2


async def test_a_flooding_plugin_does_not_hold_up_another(gateway, nats_env: NatsEnv):
    gw, core, _violations, _platform = gateway
    at_core = await core.collect("rosey.chat.*.send")
    talker, polite = await nats_env.plugin("talker"), await nats_env.plugin("polite")

    async def flood():
        for i in range(20_000):
            await talker.nc.publish("rosey.chat.flood.send", b"x")
        await talker.nc.flush()

    flooding = asyncio.create_task(flood())
    await asyncio.sleep(0.05)
    await polite.nc.publish("rosey.chat.lobby.send", b'{"message": "still here"}')
    await polite.nc.flush()
    await eventually(lambda: any(m.subject == "rosey.chat.lobby.send" for m in at_core), 20, "polite's message")
    await flooding
    assert [m.headers["Precinct-Plugin"] for m in at_core if m.subject == "rosey.chat.lobby.send"] == ["polite"]
