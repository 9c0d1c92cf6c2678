"""The plugin's only way out of its network namespace: TCP relays the
supervisor owns.

Design (docs/confinement.md, "Network"): each plugin instance gets a fresh
network namespace holding nothing but a loopback interface. Its trusted
init, as root inside that namespace, creates listening sockets on
127.0.0.1 there (the NATS port the runner is told to use, and the egress
proxy's port when `http_requests` is granted) and hands the listening file
descriptors to the supervisor over the handshake unix socket (SCM_RIGHTS).
A socket keeps belonging to the namespace it was created in, so the
supervisor, in the host namespace, accepts connections made inside the
plugin's namespace and opens its own connection to the real NATS server
(here) or to a checked public address (egress.py). No veth, no routes, no
iptables, no process of ours inside the namespace, and nothing listening on
the host that a plugin could reach.

The plugin cannot bind those ports itself (they are taken, and Landlock
grants no TCP bind), and cannot reach any other address: the namespace has
no route anywhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from typing import Awaitable, Callable

log = logging.getLogger("precinct.confine.relay")

CHUNK = 64 * 1024
MAX_CONNECTIONS = 16          # per listener; NATS allows a plugin account 4


async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            data = await reader.read(CHUNK)
            if not data:
                break
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError, asyncio.CancelledError):
        pass
    finally:
        with contextlib.suppress(Exception):
            if writer.can_write_eof():
                writer.write_eof()


async def splice(a: tuple[asyncio.StreamReader, asyncio.StreamWriter],
                 b: tuple[asyncio.StreamReader, asyncio.StreamWriter]) -> None:
    """Copy both ways until both directions are done, then close both."""
    try:
        await asyncio.gather(pipe(a[0], b[1]), pipe(b[0], a[1]))
    finally:
        for _r, w in (a, b):
            with contextlib.suppress(Exception):
                w.close()


Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class ListenerServer:
    """Serve connections accepted on a listening socket from another namespace."""

    def __init__(self, name: str, listener: socket.socket, handler: Handler) -> None:
        self.name = name
        self.listener = listener
        self.handler = handler
        self.server: asyncio.AbstractServer | None = None
        self.connections: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self.listener.setblocking(False)
        self.server = await asyncio.start_server(self._serve, sock=self.listener)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(self.connections) >= MAX_CONNECTIONS:
            writer.close()
            return
        self.connections.add(writer)
        try:
            await self.handler(reader, writer)
        except Exception as exc:  # noqa: BLE001 - one bad connection must not hurt the supervisor
            log.debug("%s: connection failed: %s", self.name, exc)
        finally:
            self.connections.discard(writer)
            with contextlib.suppress(Exception):
                writer.close()

    def close(self) -> None:
        if self.server is not None:
            self.server.close()
        else:
            with contextlib.suppress(OSError):
                self.listener.close()
        for writer in list(self.connections):
            with contextlib.suppress(Exception):
                writer.close()
        self.connections.clear()


def nats_relay(name: str, listener: socket.socket, host: str, port: int) -> ListenerServer:
    async def relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            upstream = await asyncio.wait_for(asyncio.open_connection(host, port), 5)
        except (OSError, asyncio.TimeoutError) as exc:
            log.debug("%s: NATS at %s:%d unreachable: %s", name, host, port, exc)
            return
        await splice((reader, writer), upstream)

    return ListenerServer(name, listener, relay)
