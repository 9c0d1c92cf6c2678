"""The client the plugin sees: the real nats-py client, except that
subscriptions to its claimed command subjects join a queue group.

With the queue group, two instances of one plugin (a hot reload, or replicas
on Kubernetes) split the requests between them instead of both answering.
This is a convenience, not a boundary: the NATS server caps answers at one
per request whatever the runner does.
"""

from __future__ import annotations

from typing import Any


def queue_group(plugin_id: str) -> str:
    return f"precinct.{plugin_id}"


def subject_matches(pattern: str, subject: str) -> bool:
    """NATS wildcard match: `*` is one token, a final `>` one or more."""
    p, s = pattern.split("."), subject.split(".")
    for i, token in enumerate(p):
        if token == ">":
            return i == len(p) - 1 and len(s) > i
        if i >= len(s) or (token != "*" and token != s[i]):
            return False
    return len(p) == len(s)


class ClientProxy:
    """Passes everything through to the real client; only `subscribe()` to a
    claimed command subject (or a `rosey.command.` wildcard that covers one)
    is changed, to use the plugin's queue group."""

    def __init__(self, client: Any, plugin_id: str, commands: list[str] | tuple[str, ...]):
        object.__setattr__(self, "_client", client)
        object.__setattr__(self, "_queue", queue_group(plugin_id))
        object.__setattr__(self, "_commands", frozenset(commands))

    def _queued(self, subject: str) -> bool:
        if subject in self._commands:
            return True
        if subject.startswith("rosey.command.") and ("*" in subject or ">" in subject):
            return any(subject_matches(subject, command) for command in self._commands)
        return False

    async def subscribe(self, subject: str, *args: Any, **kwargs: Any):
        if self._queued(subject):
            if args:                       # subscribe(subject, queue, cb, ...)
                args = (self._queue, *args[1:])
            else:
                kwargs["queue"] = self._queue
        return await self._client.subscribe(subject, *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._client, name, value)

    def __repr__(self) -> str:
        return f"<precinct ClientProxy queue={self._queue!r} of {self._client!r}>"
