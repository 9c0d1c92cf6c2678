"""Shared fixtures. The NATS ones start a real nats-server (no mocks): what
the tests check is what the server enforces."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg

from precinct.natsauth.identity import Identity, SyncResult
from precinct.natsauth.server import NatsServer, find_binary
from precinct.plan.sandbox import SandboxPlan, compile_plan
from precinct.spec.model import load_manifest
from precinct.spec.ownership import Plugin, resolve


def make_plugin(name: str, **manifest: Any) -> SandboxPlan:
    """A compiled plan from a manifest written inline."""
    loaded = load_manifest({"name": name, "version": "1.0.0", **manifest})
    return compile_plan(Plugin(loaded.id, loaded.without_name()))


def make_plugins(*specs: tuple[str, dict[str, Any]]) -> list[SandboxPlan]:
    """Several plans, checked for ownership conflicts like the runtimes do."""
    plugins = []
    for name, manifest in specs:
        loaded = load_manifest({"name": name, "version": "1.0.0", **manifest})
        plugins.append(Plugin(loaded.id, loaded.without_name()))
    owned = resolve(plugins)
    assert not owned.rejected, owned.rejected
    return [compile_plan(p) for p in owned.accepted]


async def eventually(check: Callable[[], bool], timeout: float = 2.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.01)


async def settle(nc: Client) -> None:
    """Return once the server has processed everything `nc` sent so far
    (typically a SUB another client is about to rely on).

    `flush()` alone does not promise that with nats-py 2.16: it writes its
    PING straight to the socket, ahead of commands still queued for the
    client's flusher task, so the PING travels *before* a SUB just made. On
    a busy machine the server answered the PING, the test's other client
    sent its request, and the SUB was processed after it: NoRespondersError
    in tests/test_nats_live.py::test_restart_keeps_identities_and_credentials
    (1 run in 9 at load ~5; the server's trace showed the plugin's PING, then
    core's PUB, then the plugin's SUB). Writing the queue out first puts the
    SUB before the PING, and the server handles one connection in order
    (0 failures in 60 runs at the same load).
    """
    flush_pending = getattr(nc, "_flush_pending", None)
    if flush_pending is not None:
        await flush_pending(force_flush=True)
    await nc.flush()


async def serve_once(nc: Client, subject: str, answer: bytes) -> None:
    """Answer every request on `subject` with `answer`, subscribed for sure."""
    async def respond(msg: Msg) -> None:
        await msg.respond(answer)

    await nc.subscribe(subject, cb=respond)
    await settle(nc)


@dataclass
class Conn:
    """A client plus everything the server told it."""

    nc: Client
    errors: list[Exception] = field(default_factory=list)
    disconnects: int = 0
    received: list[Msg] = field(default_factory=list)

    def violations(self) -> list[str]:
        return [str(e) for e in self.errors if "permissions violation" in str(e).lower()]

    async def violation(self, fragment: str, timeout: float = 2.0) -> str:
        """Wait for a permissions violation whose text contains `fragment`."""
        found: list[str] = []

        def seen() -> bool:
            found[:] = [v for v in self.violations() if fragment.lower() in v.lower()]
            return bool(found)

        await eventually(seen, timeout, f"a permissions violation mentioning {fragment!r}; got {self.violations()}")
        return found[0]

    async def collect(self, subject: str) -> list[Msg]:
        """Subscribe and return the list that fills as messages arrive."""
        box: list[Msg] = []

        async def cb(msg: Msg) -> None:
            box.append(msg)

        await self.nc.subscribe(subject, cb=cb)
        await settle(self.nc)
        return box


class NatsEnv:
    def __init__(self, identity: Identity, server: NatsServer) -> None:
        self.identity = identity
        self.server = server
        self.conns: list[Conn] = []

    async def sync(self, *plans: SandboxPlan) -> SyncResult:
        return await self.identity.sync(list(plans))

    async def connect(self, creds: Path, name: str = "test", **options: Any) -> Conn:
        conn = Conn(nc=Client())

        async def error_cb(exc: Exception) -> None:
            conn.errors.append(exc)

        async def disconnected_cb() -> None:
            conn.disconnects += 1

        options.setdefault("allow_reconnect", False)
        await conn.nc.connect(
            self.server.url, user_credentials=str(creds), name=name,
            error_cb=error_cb, disconnected_cb=disconnected_cb, **options,
        )
        self.conns.append(conn)
        return conn

    async def core(self) -> Conn:
        return await self.connect(self.identity.core_creds(), "core")

    async def platform(self) -> Conn:
        return await self.connect(self.identity.platform_creds(), "platform")

    async def plugin(self, plugin_id: str) -> Conn:
        return await self.connect(self.identity.creds_for(plugin_id), plugin_id)

    async def close(self) -> None:
        for conn in self.conns:
            if not conn.nc.is_closed:
                try:
                    await conn.nc.close()
                except Exception:  # noqa: BLE001 - already gone
                    pass


@pytest.fixture
def nats_binary() -> str:
    try:
        return find_binary()
    except RuntimeError as exc:
        pytest.skip(str(exc))


@pytest.fixture
async def nats_env(tmp_path: Path, nats_binary: str) -> AsyncIterator[NatsEnv]:
    """A fresh operator, a nats-server on a free loopback port, and an
    Identity connected to it as the system user. No plugins yet."""
    identity = Identity(tmp_path / "state")
    identity.prepare([])
    server = NatsServer(identity.server_config(), binary=nats_binary)
    await server.start()
    await identity.connect(server.url)
    env = NatsEnv(identity, server)
    try:
        yield env
    finally:
        await env.close()
        await identity.close()
        await server.stop()


@pytest.fixture
def fleet(tmp_path):
    """A `precinct up` factory: `start("dice-roller", "8ball")` copies those
    example or fixture plugins into a fresh plugins dir and starts the
    supervisor on a fresh state dir; everything is stopped afterwards."""
    from runtime_support import EXAMPLES, FIXTURES, Up, copy_plugin

    plugins = tmp_path / "plugins"
    plugins.mkdir()
    state = tmp_path / "state"
    ups: list = []

    def start(*names: str, extra: tuple[str, ...] = ()):
        for name in names:
            src = EXAMPLES / name if (EXAMPLES / name).exists() else FIXTURES / name
            if not (plugins / name).exists():
                copy_plugin(src, plugins)
        up = Up(plugins, state, *extra)
        ups.append(up)
        return up

    yield start, plugins, state
    for up in ups:
        up.stop()
