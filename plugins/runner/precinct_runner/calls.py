"""Calls between plugins, as a plugin sees them (docs/plugin-api.md#calls-between-plugins).

A caller asks `await self.nats.call("quotes.lookup", {"q": "tea"})`: the
target names the callee by its subject namespace, and the manifest must list
it under `calls:`. The NATS server passes the request only to the gateway,
which checks it, rate-limits it and asks the callee, stamping the caller's id
in a header. A callee registers one handler per action it lists under
`exports:` with `await self.nats.export("lookup", handler)`; the handler gets
the payload and a `Caller` built from the gateway's stamp, never from the
payload.

The answer on the wire is JSON: `{"ok": true, "result": ...}` or
`{"ok": false, "code": ..., "error": ...}`; the gateway answers refusals
(rate_limited, unavailable, timeout, ...) in the same form.

Nothing here is a boundary: the runner is inside the sandbox. It only makes
the right thing easy and the wrong thing fail with a clear message.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import re
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

from . import wire

DEFAULT_TIMEOUT = 10.0     # the gateway gives a callee 8 s, so its "timeout" answer arrives first
TARGET = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?\.[A-Za-z0-9]([A-Za-z0-9_-]*[A-Za-z0-9])?$")


class CallError(Exception):
    """A call that got no result: `code` says why (rate_limited, unavailable,
    timeout, not_declared, busy, error, bad_answer), the message in words."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{message} [{code}]")
        self.code = code


@dataclass(frozen=True)
class Caller:
    """Who called, as the gateway stamped it: the caller's plugin id (differs
    between runtimes) and its subject namespace (the same everywhere)."""

    id: str
    namespace: str


Handler = Callable[[Any, Caller], Any | Awaitable[Any]]


async def call(client: Any, target: str, payload: Any = None, timeout: float = DEFAULT_TIMEOUT) -> Any:
    """Call another plugin's exported action; return its result or raise CallError."""
    from nats.errors import NoRespondersError

    if not isinstance(target, str) or not TARGET.fullmatch(target):
        raise ValueError(f"call target {target!r} must be '<subject namespace>.<action>', e.g. quotes.lookup")
    try:
        data = json.dumps(payload).encode()
    except (TypeError, ValueError) as exc:
        raise ValueError(f"call payload must be JSON data: {exc}") from None
    try:
        msg = await client.request(wire.call(target), data, timeout=timeout)
    except NoRespondersError:
        raise CallError("unavailable", f"nothing relays calls to {target} right now (is the gateway running?)") from None
    except asyncio.TimeoutError:
        raise CallError("timeout", f"no answer to {target} within {timeout:g} s; a plugin may only call what its "
                                   f"plugin.yaml lists under calls:, anything else is refused by the server") from None
    try:
        answer = json.loads(msg.data)
    except ValueError:
        answer = None
    if not isinstance(answer, dict) or not isinstance(answer.get("ok"), bool):
        raise CallError("bad_answer", f"{target} answered something that is not a call answer")
    if answer["ok"]:
        return answer.get("result")
    raise CallError(str(answer.get("code") or "error"), str(answer.get("error") or "refused"))


class Exports:
    """A callee's handlers, one subscription per action in its manifest."""

    def __init__(self, client: Any, plugin_id: str, actions: list[str] | tuple[str, ...]) -> None:
        self.client, self.plugin_id, self.actions = client, plugin_id, tuple(actions)
        self.handlers: dict[str, Handler] = {}
        self.subscriptions: list[Any] = []
        self._tasks: set[asyncio.Task] = set()

    def register(self, action: str, handler: Handler) -> None:
        if action not in self.actions:
            listed = ", ".join(self.actions) or "none"
            raise ValueError(f"{action!r} is not among the exports in plugin.yaml ({listed}); "
                             f"the server refuses calls to anything else")
        if not callable(handler):
            raise TypeError(f"the handler for {action!r} must be callable")
        self.handlers[action] = handler

    async def serve(self, queue: str) -> list[Any]:
        """Subscribe every exported action (the runner does, after initialize());
        an action without a handler answers `unavailable`."""
        for action in self.actions:
            sub = await self.client.subscribe(wire.export(self.plugin_id, action), queue=queue, cb=self._on(action))
            self.subscriptions.append(sub)
        return self.subscriptions

    def _on(self, action: str):
        async def on_request(msg) -> None:
            # Each call in a task of its own: a slow handler does not hold up the next caller.
            task = asyncio.ensure_future(self._answer(action, msg))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return on_request

    async def _answer(self, action: str, msg) -> None:
        if not msg.reply:
            return
        headers = msg.headers or {}
        caller_id, namespace = headers.get(wire.CALLER), headers.get(wire.CALLER_NAMESPACE)
        handler = self.handlers.get(action)
        if not caller_id or not namespace:
            # Only the gateway can reach this subject from outside, and it always stamps.
            answer = {"ok": False, "code": "unstamped", "error": "a call must come through the gateway"}
        elif handler is None:
            answer = {"ok": False, "code": "unavailable", "error": f"{self.plugin_id} has no handler for {action}"}
        else:
            try:
                payload = json.loads(msg.data) if msg.data else None
                result = handler(payload, Caller(caller_id, namespace))
                if inspect.isawaitable(result):
                    result = await result
                answer = {"ok": True, "result": result}
                body = json.dumps(answer).encode()
            except Exception as exc:  # noqa: BLE001 - the caller gets the error, the callee keeps serving
                answer = {"ok": False, "code": "error", "error": f"{type(exc).__name__}: {exc}"}
            else:
                await msg.respond(body)
                return
        await msg.respond(json.dumps(answer).encode())
