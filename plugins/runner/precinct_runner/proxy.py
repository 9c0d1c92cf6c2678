"""The client the plugin sees: the real nats-py client, except that
subscriptions to its claimed command subjects join a queue group, plus two
methods for calls between plugins (calls.py): `call(target, payload)` and
`export(action, handler)`. A Rosey plugin that uses neither sees a plain
nats-py client.

With the queue group, two instances of one plugin (a hot reload, or replicas
on Kubernetes) split the requests between them instead of both answering.
This is a convenience, not a boundary: the NATS server caps answers at one
per request whatever the runner does.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from . import wire
from .calls import DEFAULT_TIMEOUT, Exports, Handler, call


def subject_matches(pattern: str, subject: str) -> bool:
    """NATS wildcard match: `*` is one token, a final `>` one or more."""
    p, s = pattern.split("."), subject.split(".")
    for i, token in enumerate(p):
        if token == ">":  # nosec B105 - a NATS subject wildcard, not a password
            return i == len(p) - 1 and len(s) > i
        if i >= len(s) or (token != "*" and token != s[i]):  # nosec B105 - a NATS subject wildcard, not a password
            return False
    return len(p) == len(s)


class ClientProxy:
    """Passes everything through to the real client; only `subscribe()` to a
    claimed command subject (or a `rosey.command.` wildcard that covers one)
    is changed, to use the plugin's queue group."""

    def __init__(self, client: Any, plugin_id: str, commands: list[str] | tuple[str, ...],
                 exports: list[str] | tuple[str, ...] = ()):
        object.__setattr__(self, "_client", client)
        object.__setattr__(self, "_exports", Exports(client, plugin_id, exports))
        object.__setattr__(self, "_queue", wire.queue_group(plugin_id))
        object.__setattr__(self, "_commands", frozenset(commands))
        object.__setattr__(self, "_command_subs", [])

    def _queued(self, subject: str) -> bool:
        if subject in self._commands:
            return True
        if subject.startswith(wire.COMMAND_ROOT + ".") and ("*" in subject or ">" in subject):
            return any(subject_matches(subject, command) for command in self._commands)
        return False

    async def subscribe(self, subject: str, *args: Any, **kwargs: Any):
        if self._queued(subject):
            if args:                       # subscribe(subject, queue, cb, ...)
                args = (self._queue, *args[1:])
            else:
                kwargs["queue"] = self._queue
            sub = await self._client.subscribe(subject, *args, **kwargs)
            self._command_subs.append(sub)
            return sub
        return await self._client.subscribe(subject, *args, **kwargs)

    async def call(self, target: str, payload: Any = None, timeout: float = DEFAULT_TIMEOUT) -> Any:
        """Call another plugin's exported action (`quotes.lookup`, listed under
        `calls:` in plugin.yaml); its result, or CallError."""
        return await call(self._client, target, payload, timeout)

    async def export(self, action: str, handler: Handler) -> None:
        """Answer calls to `action` (listed under `exports:` in plugin.yaml)
        with `handler(payload, caller)`, sync or async; its return value
        (JSON data) is the caller's result, an exception its CallError."""
        self._exports.register(action, handler)

    async def serve_exports(self) -> None:
        """The runner's: subscribe every exported action in the plugin's queue
        group (drained with the commands on SIGTERM)."""
        self._command_subs.extend(await self._exports.serve(self._queue))

    async def drain_commands(self, timeout: float) -> None:
        """Stop taking commands but answer the ones already delivered: each
        command subscription is drained (UNSUB, then its pending messages are
        handled). Called on SIGTERM before the plugin's shutdown(), so a hot
        reload loses no request that reached this instance; the queue group
        sends new ones to the other instance. The plugin's own later
        unsubscribe() of a drained subscription becomes a no-op."""
        subs = [s for s in self._command_subs if not getattr(s, "_closed", False)]

        async def noop(*_a: Any, **_k: Any) -> None:
            return None

        async def drain(sub: Any) -> None:
            with contextlib.suppress(Exception):
                await sub.drain()
            with contextlib.suppress(Exception):
                sub.unsubscribe = noop
                sub.drain = noop

        if subs:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.gather(*(drain(s) for s in subs)), timeout)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._client, name, value)

    def __repr__(self) -> str:
        return f"<precinct ClientProxy queue={self._queue!r} of {self._client!r}>"
