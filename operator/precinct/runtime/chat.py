"""Talking to the bot from a terminal: `precinct say` and `precinct console`.

Both connect with the core credentials and behave like a chat platform
adapter (in the spirit of Hubot's shell adapter): what you type is published
as a Rosey chat event on `rosey.platform.console.chatMsg`, so plugins with
`read_messages` see it and the dispatcher routes `!commands`; answers come
back on `rosey.platform.console.message`.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

import nats

from ..spec.chat import parse_command
from ..wire import subjects as wire

PLATFORM = "console"


class ChatError(RuntimeError):
    pass


@dataclass(frozen=True)
class Endpoint:
    nats: str
    core_creds: str


def read_endpoint(state_dir: Path) -> Endpoint:
    path = state_dir / "endpoint.json"
    try:
        data = json.loads(path.read_text())
        return Endpoint(data["nats"], data["core_creds"])
    except FileNotFoundError:
        raise ChatError(f"no supervisor is running on {state_dir} (start one with `precinct up`)") from None
    except PermissionError:
        raise ChatError(f"cannot read {path}: run as the user that runs `precinct up`") from None
    except (ValueError, KeyError):
        raise ChatError(f"{path} is damaged; restart `precinct up`") from None


def chat_event(text: str, user: str, channel: str) -> tuple[str, bytes]:
    """A Rosey platform envelope for one line of chat."""
    correlation = secrets.token_hex(8)
    subject = wire.platform_event(PLATFORM, "chatMsg")
    envelope = {
        "subject": subject, "event_type": "chatMsg", "source": PLATFORM,
        "data": {"username": user, "message": text, "time": int(time.time() * 1000), "channel": channel},
        "correlation_id": correlation, "timestamp": time.time(), "priority": 1,
        "metadata": {"channel": channel},
    }
    return correlation, json.dumps(envelope).encode()


class ChatClient:
    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint
        self.nc = None
        self._results: dict[str, asyncio.Future] = {}
        self.on_message = None  # callback(dict) for everything said on the console platform

    async def connect(self) -> None:
        try:
            self.nc = await nats.connect(self.endpoint.nats, user_credentials=self.endpoint.core_creds,
                                         name="precinct-console", allow_reconnect=True,
                                         max_reconnect_attempts=3, connect_timeout=3)
        except Exception as exc:
            raise ChatError(f"cannot connect to NATS at {self.endpoint.nats}: {exc}") from None
        await self.nc.subscribe(wire.dispatch_result(PLATFORM), cb=self._on_result)
        await self.nc.subscribe(wire.to_platform(PLATFORM), cb=self._on_message)

    async def close(self) -> None:
        if self.nc:
            await self.nc.drain()

    async def _on_result(self, msg) -> None:
        try:
            body = json.loads(msg.data)
        except ValueError:
            return
        fut = self._results.get(body.get("correlation_id"))
        if fut and not fut.done():
            fut.set_result(body)

    async def _on_message(self, msg) -> None:
        if self.on_message:
            try:
                self.on_message(json.loads(msg.data))
            except ValueError:
                pass

    async def say(self, text: str, user: str = "console", channel: str = PLATFORM, timeout: float = 10.0) -> dict | None:
        """Publish one line; for a `!command`, wait for the dispatcher's outcome."""
        correlation, payload = chat_event(text, user, channel)
        is_command = parse_command(text) is not None
        if is_command:
            self._results[correlation] = asyncio.get_running_loop().create_future()
        await self.nc.publish(wire.platform_event(PLATFORM, "chatMsg"), payload)
        await self.nc.flush()
        if not is_command:
            return None
        try:
            return await asyncio.wait_for(self._results[correlation], timeout)
        except asyncio.TimeoutError:
            raise ChatError(f"no answer within {timeout:g} s: is the dispatcher running? (precinct status)") from None
        finally:
            self._results.pop(correlation, None)
