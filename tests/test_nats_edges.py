"""What the NATS server enforces for each plugin account, checked against a
real nats-server: the four grants NATS enforces, the command, payload-reply,
chat/event and storage edges, and isolation between plugins.

Every "refused" below is the server's own permissions violation, seen
through the client's error callback, not a check in our code."""

from __future__ import annotations

import asyncio
import json

from nats.aio.msg import Msg

from conftest import NatsEnv, eventually, make_plugins, settle

QUIET = 0.3  # how long "nothing arrives" is watched for


async def storage_standin(env: NatsEnv) -> list[Msg]:
    """Platform-side responders for every plugin's storage service."""
    platform = await env.platform()
    seen: list[Msg] = []

    async def answer(msg: Msg) -> None:
        seen.append(msg)
        await msg.respond(json.dumps({"success": True, "subject": msg.subject}).encode())

    await platform.nc.subscribe("precinct.storage.>", cb=answer)
    await settle(platform.nc)
    return seen


# -- the four grants NATS enforces ------------------------------------------------

async def test_read_messages_grant(nats_env: NatsEnv) -> None:
    await nats_env.sync(*make_plugins(("reader", {"permissions": ["read_messages"]}), ("deaf", {})))
    core = await nats_env.core()
    reader, deaf = await nats_env.plugin("reader"), await nats_env.plugin("deaf")
    chat = await reader.collect("rosey.platform.*.chatMsg")
    await deaf.nc.subscribe("rosey.platform.*.chatMsg")
    await deaf.violation('subscription to "rosey.platform.*.chatmsg"')

    await core.nc.publish("rosey.platform.cytube.chatMsg", b'{"msg":"hi"}')
    await eventually(lambda: len(chat) == 1, what="chat to reach the reader")
    assert chat[0].subject == "rosey.platform.cytube.chatMsg"
    # Private messages are never exported, even with the grant.
    await reader.nc.subscribe("rosey.platform.*.pm")
    await reader.violation("rosey.platform.*.pm")


async def test_send_messages_grant(nats_env: NatsEnv) -> None:
    await nats_env.sync(*make_plugins(("talker", {"permissions": ["send_messages"]}), ("mute", {})))
    platform = await nats_env.platform()
    seen = await platform.collect("plugin.>")
    talker, mute = await nats_env.plugin("talker"), await nats_env.plugin("mute")

    await talker.nc.publish("rosey.chat.lobby.send", b"hello")
    await talker.nc.publish("rosey.channel.lobby.message", b"hello")
    await mute.nc.publish("rosey.chat.lobby.send", b"psst")
    await mute.violation('publish to "rosey.chat.lobby.send"')
    await eventually(lambda: len(seen) == 2, what="talker's chat at the platform")
    await asyncio.sleep(QUIET)
    assert sorted(m.subject for m in seen) == [
        "plugin.talker.rosey.channel.lobby.message",
        "plugin.talker.rosey.chat.lobby.send",
    ]
    assert not talker.violations()


async def test_database_read_grant(nats_env: NatsEnv) -> None:
    await nats_env.sync(*make_plugins(("reader", {"permissions": ["database_read"]}), ("nodb", {})))
    seen = await storage_standin(nats_env)
    reader, nodb = await nats_env.plugin("reader"), await nats_env.plugin("nodb")

    assert json.loads((await reader.nc.request("rosey.db.kv.get", b"{}", timeout=2)).data)["success"]
    assert json.loads((await reader.nc.request("rosey.db.row.reader.select", b"{}", timeout=2)).data)["success"]
    await reader.nc.publish("rosey.db.kv.set", b"{}")   # reading does not allow writing
    await reader.violation('publish to "rosey.db.kv.set"')
    await nodb.nc.publish("rosey.db.kv.get", b"{}")
    await nodb.violation('publish to "rosey.db.kv.get"')
    await asyncio.sleep(QUIET)
    assert [m.subject for m in seen] == ["precinct.storage.reader.kv.get", "precinct.storage.reader.row.select"]


async def test_database_write_grant(nats_env: NatsEnv) -> None:
    await nats_env.sync(*make_plugins(("writer", {"permissions": ["database_write"]}), ("viewer", {"permissions": ["database_read"]})))
    seen = await storage_standin(nats_env)
    writer, viewer = await nats_env.plugin("writer"), await nats_env.plugin("viewer")

    for subject in ("rosey.db.kv.set", "rosey.db.row.writer.insert", "rosey.db.row.writer.schema.register"):
        assert json.loads((await writer.nc.request(subject, b"{}", timeout=2)).data)["success"], subject
    await viewer.nc.publish("rosey.db.kv.set", b"{}")
    await viewer.nc.publish("rosey.db.row.viewer.insert", b"{}")
    await viewer.violation('publish to "rosey.db.kv.set"')
    await viewer.violation('publish to "rosey.db.row.viewer.insert"')
    await asyncio.sleep(QUIET)
    assert [m.subject for m in seen] == [
        "precinct.storage.writer.kv.set",
        "precinct.storage.writer.row.insert",
        "precinct.storage.writer.row.schema.register",
    ]


async def test_observe_grant_sees_chat_and_events_but_nothing_private(nats_env: NatsEnv) -> None:
    """observe_chat_and_events (Rosey's inspector): `>` in its own account shows
    the fleet's chat in, relayed chat out and events under precinct.observe,
    and none of what another plugin is asked, answers or stores, nor PMs."""
    await nats_env.sync(*make_plugins(
        ("watcher", {"permissions": ["observe_chat_and_events"]}),
        ("dice", {"commands": {"roll": "dice.roll"}, "permissions": ["database_write", "send_messages"]}),
    ))
    storage = await storage_standin(nats_env)
    core, platform = await nats_env.core(), await nats_env.platform()
    watcher, dice = await nats_env.plugin("watcher"), await nats_env.plugin("dice")
    seen = await watcher.collect(">")

    async def roll(msg: Msg) -> None:
        await msg.respond(b'{"success":true,"result":{"formatted":"6"}}')

    await dice.nc.subscribe("rosey.command.dice.roll", cb=roll)
    await settle(dice.nc)
    # Everything below happens in the fleet; only the first three are observable.
    await core.nc.publish("rosey.platform.cytube.chatMsg", b'{"msg":"hi"}')        # chat in
    await platform.nc.publish("rosey.chat.lobby.send", b'{"text":"relayed"}')      # chat out, as the gateway relays it
    await platform.nc.publish("rosey.event.x.y", b'{"what":"scored"}')             # an event, as the gateway republishes it
    await core.nc.publish("rosey.platform.cytube.pm", b'{"msg":"secret"}')          # a private message
    reply = await core.nc.request("rosey.command.dice.roll", b'{"args":"1d6"}', timeout=2)   # command + inbox reply
    assert b'"6"' in reply.data
    await dice.nc.publish("rosey.reply.dice.n0nce", b'{"answer":"6"}')              # a payload reply...
    await platform.nc.publish("rosey.reply.dice.n0nce", b'{"answer":"6"}')          # ...as the gateway forwards it
    assert json.loads((await dice.nc.request("rosey.db.kv.set", b'{"key":"k"}', timeout=2)).data)["success"]
    await dice.nc.publish("rosey.chat.lobby.send", b"unrelayed")                    # before the gateway's checks
    await platform.nc.publish("precinct.violations.dice", b"{}")

    observed = ["precinct.observe.rosey.platform.cytube.chatMsg",
                "precinct.observe.rosey.chat.lobby.send",
                "precinct.observe.rosey.event.x.y"]
    await eventually(lambda: len(seen) >= len(observed), what="the chat and event at the observer")
    await asyncio.sleep(QUIET)
    assert sorted(m.subject for m in seen) == sorted(observed)
    assert [m.subject for m in storage] == ["precinct.storage.dice.kv.set"]   # the storage request did happen
    assert not watcher.violations()
    assert "has issues importing" not in nats_env.server.config.log_file.read_text()   # every import taken
    # Read-only: observing grants no publishing, not even onto what it observes.
    await watcher.nc.publish("precinct.observe.rosey.chat.lobby.send", b"forged")
    await watcher.violation('publish to "precinct.observe.rosey.chat.lobby.send"')
    await watcher.nc.publish("rosey.chat.lobby.send", b"forged")
    await watcher.violation('publish to "rosey.chat.lobby.send"')


async def test_an_observer_still_answers_each_request_once(nats_env: NatsEnv) -> None:
    """Its `>` subscription receives its own commands and pings as well: they
    are still answered, once (Rosey's inspector is such a plugin); a second
    answer is still refused, and without `>` the core still gets one answer."""
    await nats_env.sync(*make_plugins(("watcher", {"permissions": ["observe_chat_and_events"],
                                                   "commands": {"w": "watcher.w", "v": "watcher.v"}})))
    core, platform, watcher = await nats_env.core(), await nats_env.platform(), await nats_env.plugin("watcher")

    async def twice(msg: Msg) -> None:
        await msg.respond(b"one")
        await msg.respond(b"two")

    async def pong(msg: Msg) -> None:
        await msg.respond(b"pong")

    await watcher.nc.subscribe("rosey.command.watcher.v", cb=twice)   # before `>`: the only delivery
    await settle(watcher.nc)
    alone = await core.collect("_INBOX.test.v")
    await core.nc.publish("rosey.command.watcher.v", b"{}", reply="_INBOX.test.v")
    await eventually(lambda: len(alone) == 1, what="the answer without `>`")

    everything = await watcher.collect(">")
    await watcher.nc.subscribe("precinct.ping.watcher.*", cb=pong)
    await watcher.nc.subscribe("rosey.command.watcher.w", cb=twice)
    await settle(watcher.nc)
    assert (await platform.nc.request("precinct.ping.watcher.a1", b"", timeout=2)).data == b"pong"
    replies = await core.collect("_INBOX.test.w")
    await core.nc.publish("rosey.command.watcher.w", b"{}", reply="_INBOX.test.w")
    await eventually(lambda: len(replies) == 1, what="the command's answer in core")
    await watcher.violation('publish to "_r_.')    # its second answer, refused
    await asyncio.sleep(QUIET)
    assert [m.data for m in replies] == [b"one"] and [m.data for m in alone] == [b"one"]
    assert "precinct.ping.watcher.a1" in [m.subject for m in everything]   # `>` did see the ping


async def test_observe_grant_combines_with_read_messages(nats_env: NatsEnv) -> None:
    """The server takes one import of a subject from an account, so with
    read_messages too, core's chat arrives once, unprefixed; the rest is
    still observed under the prefix."""
    await nats_env.sync(*make_plugins(("watcher", {"permissions": ["read_messages", "observe_chat_and_events"]})))
    core, platform, watcher = await nats_env.core(), await nats_env.platform(), await nats_env.plugin("watcher")
    seen = await watcher.collect(">")
    await core.nc.publish("rosey.platform.cytube.chatMsg", b"{}")
    await platform.nc.publish("rosey.event.x.y", b"{}")
    await eventually(lambda: len(seen) >= 2, what="the chat and the event")
    await asyncio.sleep(QUIET)
    assert sorted(m.subject for m in seen) == ["precinct.observe.rosey.event.x.y", "rosey.platform.cytube.chatMsg"]
    assert not watcher.violations()
    assert "has issues importing" not in nats_env.server.config.log_file.read_text()


# -- the edges ----------------------------------------------------------------------

async def test_command_reaches_owner_and_only_one_reply_returns(nats_env: NatsEnv) -> None:
    await nats_env.sync(*make_plugins(("dice", {"commands": {"roll": "dice.roll"}})))
    core, dice = await nats_env.core(), await nats_env.plugin("dice")
    commands: list[Msg] = []

    async def roll(msg: Msg) -> None:
        commands.append(msg)
        await msg.respond(b'{"success":true,"result":{"formatted":"4"}}')
        await msg.respond(b'{"success":true,"result":{"formatted":"5"}}')   # one too many

    await dice.nc.subscribe("rosey.command.dice.roll", cb=roll)
    await settle(dice.nc)
    replies = await core.collect("_INBOX.test.roll")
    await core.nc.publish("rosey.command.dice.roll", b'{"args":"1d6"}', reply="_INBOX.test.roll")
    await eventually(lambda: len(replies) == 1, what="the reply in core")
    await dice.violation("publish to \"_r_.")   # the second reply, refused
    await asyncio.sleep(QUIET)
    assert [m.data for m in replies] == [b'{"success":true,"result":{"formatted":"4"}}']
    assert commands[0].data == b'{"args":"1d6"}'
    # Health checks travel the same way, from the platform.
    platform = await nats_env.platform()

    async def pong(msg: Msg) -> None:
        await msg.respond(b"pong")

    await dice.nc.subscribe("precinct.ping.dice.*", cb=pong)
    await settle(dice.nc)
    assert (await platform.nc.request("precinct.ping.dice.a1", b"", timeout=2)).data == b"pong"


async def test_what_a_plugin_publishes_reaches_platform_only_under_its_prefix(nats_env: NatsEnv) -> None:
    await nats_env.sync(*make_plugins(
        ("alpha", {"permissions": ["send_messages"], "events": ["alphastats"]}),
        ("beta", {"permissions": ["send_messages"]}),
    ))
    platform, core = await nats_env.platform(), await nats_env.core()
    at_platform = await platform.collect(">")
    at_core = await core.collect(">")
    alpha, beta = await nats_env.plugin("alpha"), await nats_env.plugin("beta")
    sent = [
        "rosey.chat.lobby.send",
        "rosey.channel.lobby.message",
        "rosey.event.alpha.scored",
        "alphastats.daily",
        "rosey.reply.alpha.n0nce",
    ]
    for subject in sent:
        await alpha.nc.publish(subject, b"x")
    await alpha.nc.publish("rosey.reply.beta.n0nce", b"forged")   # another plugin's reply
    await alpha.violation('publish to "rosey.reply.beta.n0nce"')
    await beta.nc.publish("rosey.chat.lobby.send", b"y")
    await eventually(lambda: len(at_platform) == len(sent) + 1, what="everything at the platform")
    await asyncio.sleep(QUIET)
    assert sorted(m.subject for m in at_platform) == sorted(
        [f"plugin.alpha.{s}" for s in sent] + ["plugin.beta.rosey.chat.lobby.send"]
    )
    assert at_core == []   # nothing reaches core except what the gateway republishes


async def test_plugins_never_see_each_others_traffic(nats_env: NatsEnv) -> None:
    await nats_env.sync(*make_plugins(
        ("alpha", {"commands": {"ask": "alpha.ask"}}),
        ("beta", {"commands": {"roll": "beta.roll"}, "permissions": ["send_messages", "database_write", "read_messages"]}),
    ))
    seen = await storage_standin(nats_env)
    core = await nats_env.core()
    alpha, beta = await nats_env.plugin("alpha"), await nats_env.plugin("beta")

    # Everything alpha may subscribe to, it does.
    alpha_boxes = [await alpha.collect(s) for s in ("rosey.command.alpha.ask", "precinct.ping.alpha.*", "_INBOX.>")]
    # Everything else is refused by the server.
    for subject in (">", "rosey.>", "rosey.command.beta.roll", "rosey.reply.>", "rosey.db.>",
                    "precinct.storage.>", "plugin.>", "rosey.platform.*.chatMsg"):
        await alpha.nc.subscribe(subject)
        await alpha.violation(f'subscription to "{subject.lower()}"')

    async def roll(msg: Msg) -> None:
        await msg.respond(b"6")

    await beta.nc.subscribe("rosey.command.beta.roll", cb=roll)
    beta_chat = await beta.collect("rosey.platform.*.chatMsg")
    assert (await core.nc.request("rosey.command.beta.roll", b"{}", timeout=2)).data == b"6"
    await beta.nc.publish("rosey.reply.beta.n0nce", b"{}")
    assert json.loads((await beta.nc.request("rosey.db.kv.get", b"{}", timeout=2)).data)["success"]
    await core.nc.publish("rosey.platform.cytube.chatMsg", b"{}")
    await eventually(lambda: len(beta_chat) == 1, what="chat at beta")
    await asyncio.sleep(QUIET)
    assert all(box == [] for box in alpha_boxes)
    assert [m.subject for m in seen] == ["precinct.storage.beta.kv.get"]


async def test_storage_identity_comes_from_the_account_not_the_payload(nats_env: NatsEnv) -> None:
    await nats_env.sync(*make_plugins(
        ("alpha", {"subject_namespace": "alf", "permissions": ["database_write"]}),
        ("beta", {"permissions": ["database_write"]}),
    ))
    seen = await storage_standin(nats_env)
    alpha = await nats_env.plugin("alpha")
    alpha_key = nats_env.identity.account_key("plugin:alpha")
    beta_key = nats_env.identity.account_key("plugin:beta")

    forged = json.dumps({"plugin_name": "beta", "key": "secret"}).encode()
    await alpha.nc.request("rosey.db.kv.get", forged, timeout=2,
                           headers={"Nats-Request-Info": json.dumps({"acc": beta_key})})
    await alpha.nc.request("rosey.db.kv.alf.get", forged, timeout=2)
    await alpha.nc.request("rosey.db.row.alf.select", b"{}", timeout=2)
    await alpha.nc.publish("rosey.db.row.beta.select", b"{}")     # beta's rows: not even publishable
    await alpha.violation('publish to "rosey.db.row.beta.select"')
    await asyncio.sleep(QUIET)

    assert [m.subject for m in seen] == [
        "precinct.storage.alpha.kv.get",
        "precinct.storage.alpha.kv.get",
        "precinct.storage.alpha.row.select",
    ]
    assert seen[0].data == forged   # the payload is passed on untouched, and ignored for identity
    for msg in seen:
        assert msg.headers is not None
        info = json.loads(msg.headers["Nats-Request-Info"])
        assert info["acc"] == alpha_key, info   # the server's word, not the forged header


async def test_violations_are_logged_with_the_account_key(nats_env: NatsEnv) -> None:
    """NATS publishes no event for a violation; its log line is the only
    trusted record, and it names the account by key (the gateway maps it)."""
    await nats_env.sync(*make_plugins(("mute", {})))
    mute = await nats_env.plugin("mute")
    key = nats_env.identity.account_key("plugin:mute")
    assert nats_env.identity.account_roles()[key] == "plugin:mute"
    await mute.nc.publish("rosey.chat.lobby.send", b"psst")
    await mute.violation("rosey.chat.lobby.send")
    log = nats_env.server.config.log_file

    def logged() -> bool:
        return any(key in line and 'Publish Violation - Subject "rosey.chat.lobby.send"' in line
                   for line in log.read_text().splitlines())

    await eventually(logged, what="the violation in the server log")
