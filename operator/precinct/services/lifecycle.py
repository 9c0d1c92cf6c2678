"""What every trusted service does the same way: stop on SIGTERM/SIGINT and
hold a NATS connection that survives server restarts (the supervisor
restarts nats-server after a crash; the services must simply reconnect)."""

from __future__ import annotations

import asyncio
import logging
import signal

import nats
from nats.aio.client import Client


def stop_on_signals() -> asyncio.Event:
    """An event set by SIGTERM or SIGINT (call from inside the running loop)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    return stop


async def connect(server: str, creds: str, name: str, log: logging.Logger) -> Client:
    async def on_error(exc: Exception) -> None:
        log.warning("nats: %s", exc)

    return await nats.connect(server, user_credentials=creds, name=name,
                              max_reconnect_attempts=-1, reconnect_time_wait=0.5, error_cb=on_error)
