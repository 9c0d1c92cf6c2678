"""Calls between plugins against a real nats-server and the real gateway.

Each plugin connects with its own credentials, compiled from its manifest;
the callee is the example quotes plugin (plugins/quotes) hosted by the
runner's client proxy, or a bare subscription where a test needs to see
exactly what arrives. The caller uses the runner's `call()` or a bare
request where it misbehaves on purpose."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import pytest

from conftest import NatsEnv, eventually, make_plugins, settle
from pydantic.alias_generators import to_camel

from precinct.plan.sandbox import compile_plan
from precinct.spec.identity import kubernetes_id
from precinct.spec.model import load_botplugin_spec
from precinct.spec.ownership import Plugin
from precinct.wire import headers as wire_headers
from precinct.wire.subjects import GATEWAY_STATS
from services_support import ask, started_gateway, wait_until

ROOT = Path(__file__).parents[1]
sys.path.insert(0, str(ROOT / "plugins" / "runner"))
from precinct_runner.calls import CallError  # noqa: E402
from precinct_runner.loader import construct, load_plugin_class  # noqa: E402
from precinct_runner.proxy import ClientProxy  # noqa: E402

REPORT = 0.3     # the gateway's violation window here (seconds)
QUOTES = {"subject_namespace": "quotes", "exports": ["lookup", "count"],
          "config": {"quotes": ["Tea is liquid wisdom.", "Make it work, make it right, make it fast."]}}


@pytest.fixture
async def calls(nats_env: NatsEnv, tmp_path):
    plans = make_plugins(
        ("quotes", QUOTES),
        ("inspire", {"calls": ["quotes.lookup", "echo.whoami"],
                     "resources": {"rate_limits": {"calls_per_second": 2}}}),
        ("patient", {"calls": ["quotes.lookup", "ghost.boo", "echo.silent"]}),
        ("echo", {"subject_namespace": "echo", "exports": ["whoami", "silent"]}),
    )
    gw, platform, violations, plugin = await start(nats_env, tmp_path, plans, "quotes")
    try:
        yield gw, platform, violations
    finally:
        await plugin.shutdown()
        await gw.stop()


async def start(nats_env: NatsEnv, tmp_path: Path, plans, quotes_id: str):
    """Accounts for `plans`, the gateway as serve() runs it, and the example
    quotes plugin (id `quotes_id`) hosted as the runner hosts it."""
    gw, platform = await started_gateway(nats_env, tmp_path, plans, REPORT)
    violations = await platform.collect("precinct.violations.>")
    quotes = await nats_env.plugin(quotes_id)
    proxy = ClientProxy(quotes.nc, quotes_id, [], QUOTES["exports"])
    plugin = construct(load_plugin_class(ROOT / "plugins" / "quotes"), proxy, QUOTES["config"])
    await plugin.initialize()
    await proxy.serve_exports()
    await settle(quotes.nc)
    return gw, platform, violations, plugin


def events(violations, plugin: str, kind: str) -> list[dict]:
    out = [json.loads(m.data) for m in violations if m.subject == f"precinct.violations.{plugin}"]
    return [e for e in out if e["kind"] == kind]


async def caller(nats_env: NatsEnv, plugin_id: str):
    conn = await nats_env.plugin(plugin_id)
    return conn, ClientProxy(conn.nc, plugin_id, [])


async def stats(platform) -> dict:
    return (await ask(platform.nc, GATEWAY_STATS, {}))["plugins"]


async def test_a_declared_call_reaches_the_callee_which_learns_the_caller_from_the_gateway(calls, nats_env):
    gw, platform, violations = calls
    _conn, inspire = await caller(nats_env, "inspire")
    result = await inspire.call("quotes.lookup", {"word": "tea"})
    assert result == {"quote": "Tea is liquid wisdom.", "asked_by": "inspire", "asked_by_namespace": "inspire"}

    counted = await stats(platform)
    assert counted["inspire"]["calls_answered"] == 1 and counted["quotes"]["calls_served"] == 1
    # A handler's error reaches the caller as a CallError; the callee keeps serving.
    with pytest.raises(CallError, match="word must be a string") as refused:
        await inspire.call("quotes.lookup", {"word": 7})
    assert refused.value.code == "error"
    _conn, patient = await caller(nats_env, "patient")        # (inspire's 2 calls a second are spent)
    assert (await patient.call("quotes.lookup", {"word": "fast"})) == {
        "quote": "Make it work, make it right, make it fast.", "asked_by": "patient", "asked_by_namespace": "patient"}


async def test_a_forged_caller_id_in_payload_or_headers_is_not_believed(calls, nats_env):
    gw, platform, violations = calls
    echo = await nats_env.plugin("echo")
    seen = []

    async def whoami(msg):
        seen.append((dict(msg.headers or {}), json.loads(msg.data)))
        await msg.respond(json.dumps({"ok": True, "result": "seen"}).encode())

    await echo.nc.subscribe("precinct.export.echo.whoami", cb=whoami)
    await settle(echo.nc)

    conn, _ = await caller(nats_env, "inspire")
    forged = {wire_headers.CALLER: "quotes", wire_headers.CALLER_NAMESPACE: "core",
              "precinct-caller": "admin", "Nats-Request-Info": '{"acc": "core"}', "X-Trace": "t1"}
    answer = await ask(conn.nc, "precinct.call.echo.whoami", {"caller": "quotes", "from": "core"}, headers=forged)
    assert answer == {"ok": True, "result": "seen"}
    (headers, payload), = seen
    # The stamp is the gateway's; the payload arrives untouched (and means nothing about who sent it).
    assert headers[wire_headers.CALLER] == "inspire" and headers[wire_headers.CALLER_NAMESPACE] == "inspire"
    assert "admin" not in json.dumps(headers) and "core" not in json.dumps(headers)
    assert headers["X-Trace"] == "t1" and payload == {"caller": "quotes", "from": "core"}

    # Going round the gateway: the platform subject of another caller, or the callee's own subject.
    await conn.nc.publish("precinct.relay.patient.echo.whoami", b"{}", headers={"reply": "x"})
    await conn.nc.publish("precinct.export.echo.whoami", b"{}")
    await conn.violation('publish to "precinct.relay.patient.echo.whoami"')
    await conn.violation('publish to "precinct.export.echo.whoami"')
    await wait_until(lambda: {s for e in events(violations, "inspire", "permission") for s in e["subjects"]}
                     >= {"precinct.relay.patient.echo.whoami", "precinct.export.echo.whoami"},
                     "both attempts reported as permission violations of inspire")
    await asyncio.sleep(REPORT * 2)
    assert len(seen) == 1, "a call that went round the gateway reached the callee"


async def test_an_undeclared_call_is_refused_by_the_server_and_reported(calls, nats_env):
    gw, platform, violations = calls
    conn, inspire = await caller(nats_env, "inspire")
    with pytest.raises(CallError) as refused:            # quotes exports count, but inspire never declared it
        await inspire.call("quotes.count", {}, timeout=1.5)
    assert refused.value.code == "timeout" and "calls:" in str(refused.value)
    await conn.violation('publish to "precinct.call.quotes.count"')
    await wait_until(lambda: [e for e in events(violations, "inspire", "permission")
                              if e["subject"] == "precinct.call.quotes.count" and e["source"] == "nats-server-log"],
                     "the undeclared call reported as a permission violation from the server's log")
    assert (await stats(platform))["quotes"]["calls_served"] == 0

    # Declared, but nobody exports it / nobody serves it: answered at once, not a violation.
    _conn, patient = await caller(nats_env, "patient")
    with pytest.raises(CallError, match="no plugin in this fleet exports ghost.boo") as missing:
        await patient.call("ghost.boo")
    assert missing.value.code == "unavailable"
    with pytest.raises(CallError, match="echo is not running") as idle:
        await patient.call("echo.silent")
    assert idle.value.code == "unavailable"
    assert not events(violations, "patient", "permission")


async def test_a_call_storm_is_rate_limited_per_caller_and_reported(calls, nats_env):
    gw, platform, violations = calls
    _conn, inspire = await caller(nats_env, "inspire")
    _conn2, patient = await caller(nats_env, "patient")

    async def one(proxy):
        try:
            await proxy.call("quotes.lookup", {"word": "tea"})
            return "answered"
        except CallError as exc:
            return exc.code

    storm = 200
    outcomes = await asyncio.gather(*(one(inspire) for _ in range(storm)))
    answered = outcomes.count("answered")
    assert 1 <= answered <= 10, outcomes                 # calls_per_second 2: a burst of 2, then 2 a second
    assert outcomes.count("rate_limited") + outcomes.count("busy") == storm - answered, set(outcomes)
    # Another caller is not held up by the storm: its own bucket.
    assert await one(patient) == "answered"

    counted = await stats(platform)
    assert counted["inspire"]["calls_answered"] == answered
    assert counted["inspire"]["calls_rate_limited"] == storm - answered
    assert counted["patient"]["calls_rate_limited"] == 0
    await wait_until(lambda: sum(e["count"] for e in events(violations, "inspire", "rate_limit")) == storm - answered,
                     "rate-limit events covering every refused call")
    reported = events(violations, "inspire", "rate_limit")
    assert len(reported) < 10 and all(e["subject"] == "precinct.call.quotes.lookup" for e in reported)
    assert not events(violations, "patient", "rate_limit")


async def test_the_gateway_checks_the_pair_itself(calls, nats_env):
    """Defence in depth: were the server's mapping ever wrong, a call the caller
    never declared is still refused and reported by the gateway."""
    gw, platform, violations = calls
    answers = []

    class Msg:
        subject, data, headers, reply = "precinct.relay.inspire.quotes.count", b"{}", None, "_INBOX.test.1"

    async def keep(msg):
        answers.append(json.loads(msg.data))

    conn = await nats_env.platform()
    await conn.nc.subscribe("_INBOX.test.1", cb=keep)
    await settle(conn.nc)
    await gw.call(gw.plugins["inspire"], "quotes.count", Msg())
    await eventually(lambda: answers, 10, "the gateway's refusal")
    assert answers[0]["ok"] is False and answers[0]["code"] == "not_declared"
    await wait_until(lambda: [e for e in events(violations, "inspire", "permission")
                              if e["subject"] == "precinct.call.quotes.count" and e["source"] == "gateway"],
                     "the refusal reported")


async def test_the_same_manifests_work_with_kubernetes_ids(nats_env: NatsEnv, tmp_path):
    """On Kubernetes plugin ids carry the namespace (`bots-quotes`); the caller
    still names the callee by subject namespace, and the compiled accounts
    are the same code's."""
    plugins = []
    for name, fields in (("quotes", QUOTES), ("inspire", {"calls": ["quotes.lookup"]})):
        spec = load_botplugin_spec({"version": "1", "image": "r/p@sha256:" + "0" * 64,
                                    **{to_camel(k): v for k, v in fields.items()}})
        plugins.append(Plugin(kubernetes_id("bots", name), spec))
    plans = [compile_plan(p) for p in plugins]
    assert [(p.id, p.namespace) for p in plans] == [("bots-quotes", "quotes"), ("bots-inspire", "bots-inspire")]
    gw, platform, violations, plugin = await start(nats_env, tmp_path, plans, "bots-quotes")
    try:
        _conn, inspire = await caller(nats_env, "bots-inspire")
        result = await inspire.call("quotes.lookup", {"word": "tea"})
        # The callee's namespace is declared; the caller's is not, so it is its id, which differs per runtime.
        assert result == {"quote": "Tea is liquid wisdom.", "asked_by": "bots-inspire",
                          "asked_by_namespace": "bots-inspire"}
    finally:
        await plugin.shutdown()
        await gw.stop()


def test_the_example_pair_works_under_precinct_up(fleet):
    """plugins/inspire asks plugins/quotes through the supervisor's real
    gateway and runners, as docs/secure-plugins.md shows."""
    start, _plugins, _state = fleet
    up = start("quotes", "inspire")
    up.wait_running("quotes", "inspire")
    said = up.say("!inspire tea", "--json")
    assert said.returncode == 0, (said.stdout, said.stderr)
    reply = json.loads(said.stdout)["reply"]["result"]
    # Two of the book's quotes mention tea; either is the right answer.
    assert reply["quote"] in ("Tea is liquid wisdom.", "There is always tea time."), reply
    assert reply["asked_by"] == "inspire", reply
    missing = up.say("!inspire zebra")
    assert missing.returncode != 0 and "no quote with 'zebra'" in missing.stdout + missing.stderr
