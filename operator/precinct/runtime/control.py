"""The supervisor's local control API: a Unix socket in the state dir.

Plugins must never reach it. Three locks, any one of which suffices on its
own: the state dir is mode 0700 (plugins run under other uids and, with
Landlock, cannot open it at all); the kernel reports the caller's uid
(SO_PEERCRED) and only the supervisor's own uid or root is served; and every
request carries a token from a 0600 file next to the socket.

Protocol: one JSON object per line each way: `{"token": ..., "op": "status"}`.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import socket
import struct
from pathlib import Path
from typing import Any, Awaitable, Callable

SOCKET_NAME = "control.sock"
TOKEN_NAME = "control.token"  # nosec B105 - a file name, not a secret
MAX_REQUEST = 64 * 1024

Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


class ControlError(RuntimeError):
    pass


def _peer_uid(sock: socket.socket) -> int:
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return uid


class ControlServer:
    def __init__(self, state_dir: Path, handlers: dict[str, Handler]) -> None:
        self.path = state_dir / SOCKET_NAME
        self.token_path = state_dir / TOKEN_NAME
        self.handlers = handlers
        self._server: asyncio.AbstractServer | None = None
        self._token = ""  # nosec B105 - empty until start() generates the random control token

    async def start(self) -> None:
        self._token = secrets.token_urlsafe(32)
        fd = os.open(self.token_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(self._token)
        self.path.unlink(missing_ok=True)
        old = os.umask(0o177)
        try:
            self._server = await asyncio.start_unix_server(self._serve, path=str(self.path), limit=MAX_REQUEST)
        finally:
            os.umask(old)

    async def close(self) -> None:
        if self._server:
            self._server.close()
            await self._server.wait_closed()
        self.path.unlink(missing_ok=True)
        self.token_path.unlink(missing_ok=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            sock = writer.get_extra_info("socket")
            uid = _peer_uid(sock)
            if uid not in (0, os.geteuid()):
                await self._reply(writer, {"ok": False, "error": f"uid {uid} may not use the control API"})
                return
            line = await reader.readline()
            try:
                request = json.loads(line)
                assert isinstance(request, dict)
            except (ValueError, AssertionError):
                await self._reply(writer, {"ok": False, "error": "expected one JSON object per line"})
                return
            if not secrets.compare_digest(str(request.get("token", "")), self._token):
                await self._reply(writer, {"ok": False, "error": "bad or missing token"})
                return
            handler = self.handlers.get(str(request.get("op")))
            if handler is None:
                await self._reply(writer, {"ok": False, "error": f"unknown op {request.get('op')!r}; "
                                                                 f"known: {', '.join(sorted(self.handlers))}"})
                return
            try:
                result = await handler(request)
            except ControlError as exc:
                await self._reply(writer, {"ok": False, "error": str(exc)})
                return
            await self._reply(writer, {"ok": True, **result})
        except (ConnectionError, asyncio.IncompleteReadError, ValueError):
            pass
        finally:
            writer.close()

    @staticmethod
    async def _reply(writer: asyncio.StreamWriter, body: dict[str, Any]) -> None:
        writer.write(json.dumps(body).encode() + b"\n")
        await writer.drain()


def call(state_dir: Path, op: str, timeout: float = 10.0, **params: Any) -> dict[str, Any]:
    """Client side, used by `precinct status` and friends (synchronous)."""
    path = state_dir / SOCKET_NAME
    try:
        token = (state_dir / TOKEN_NAME).read_text().strip()
    except FileNotFoundError:
        raise ControlError(f"no supervisor is running on {state_dir} (start one with `precinct up`)") from None
    except PermissionError:
        raise ControlError(f"cannot read {state_dir / TOKEN_NAME}: run as the user that runs `precinct up`") from None
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(str(path))
        except (FileNotFoundError, ConnectionRefusedError):
            raise ControlError(f"no supervisor is running on {state_dir} (start one with `precinct up`)") from None
        sock.sendall(json.dumps({"token": token, "op": op, **params}).encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    try:
        reply = json.loads(data)
    except ValueError:
        raise ControlError("the supervisor closed the connection without an answer") from None
    if not reply.get("ok"):
        raise ControlError(reply.get("error", "request refused"))
    return reply
