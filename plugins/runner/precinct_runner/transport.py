"""NATS connections handed in by the platform, for a runner in a sandbox.

Confined by `precinct up`, the runner's network namespace has nothing but
loopback: it cannot open a connection to NATS itself. Instead its trusted
monitor, outside, opens one and passes the connected socket over a unix
channel (fd PRECINCT_NATS_FD): the runner writes a request byte and gets
`ok` with the socket, or `no: <why>` (rate limited, NATS down), which
nats-py then treats like any failed connect and retries with its backoff.
No byte of NATS traffic is copied by anyone: nats-server and the plugin
share the socket.

This changes nothing about what the plugin may do: the platform owns the
channel's other end, and enforcement (routing, Landlock, seccomp, the NATS
account's permissions) happens outside the sandbox.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket

from nats.aio import client as nats_client
from nats.aio.transport import TcpTransport

REQUEST = b"c"
REPLY_MAX = 256


class HandoffError(ConnectionError):
    pass


class _Channel:
    """The unix channel to the monitor; one request in flight at a time."""

    def __init__(self, fd: int) -> None:
        self.sock = socket.socket(fileno=fd)
        if self.sock.family != socket.AF_UNIX:
            raise HandoffError(f"fd {fd} is not the platform's unix channel")
        self.sock.setblocking(False)
        self.lock = asyncio.Lock()

    def _drain_stale(self) -> None:
        """Drop answers to requests whose connect timed out (their sockets too)."""
        while True:
            try:
                _msg, fds, _flags, _addr = socket.recv_fds(self.sock, REPLY_MAX, 4)
            except (BlockingIOError, InterruptedError):
                return
            for fd in fds:
                with contextlib.suppress(OSError):
                    socket.close(fd)
            if not _msg:
                return

    async def connection(self) -> socket.socket:
        loop = asyncio.get_running_loop()
        async with self.lock:
            self._drain_stale()
            await loop.sock_sendall(self.sock, REQUEST)
            readable = loop.create_future()
            loop.add_reader(self.sock.fileno(), lambda: readable.done() or readable.set_result(None))
            try:
                await readable
            finally:
                loop.remove_reader(self.sock.fileno())
            msg, fds, _flags, _addr = socket.recv_fds(self.sock, REPLY_MAX, 4)
        if msg == b"ok" and len(fds) == 1:
            return socket.socket(fileno=fds[0])
        for fd in fds:
            with contextlib.suppress(OSError):
                socket.close(fd)
        if not msg:
            raise HandoffError("the platform closed the NATS channel")
        raise HandoffError(msg.decode(errors="replace"))


class HandedTransport(TcpTransport):
    """nats-py's TCP transport, connected with a socket from the channel (the URL is ignored)."""

    channel: _Channel | None = None

    async def connect(self, uri, buffer_size: int, connect_timeout: int) -> None:
        if self.channel is None:
            raise HandoffError("no NATS channel installed")
        sock = await asyncio.wait_for(self.channel.connection(), connect_timeout)
        reader, writer = await asyncio.open_connection(sock=sock, limit=buffer_size)
        # As TcpTransport does: keep the bare streams (nats-py swaps them on a TLS upgrade).
        self._bare_io_reader = self._io_reader = reader
        self._bare_io_writer = self._io_writer = writer


def install(fd: int) -> None:
    """Every nats-py client in this process (the runner's and any a plugin
    makes) connects through the channel on `fd`. nats-py 2.x builds its TCP
    transport by that module-level name on each client's first connect."""
    HandedTransport.channel = _Channel(fd)
    nats_client.TcpTransport = HandedTransport
