"""Token buckets: the one rate-limit primitive the gateway and storage share.

A bucket holds at most `capacity` tokens and refills at `rate` tokens per
second; each message (or query) takes one. A full bucket lets a burst of
`capacity` through at once, after which traffic is held to `rate`. NATS has
no per-user message rate limit (docs/nats.md, "What NATS cannot do"), so
these live in the trusted services, keyed by the plugin id the server's subject mapping carries.
"""

from __future__ import annotations

import time


class TokenBucket:
    __slots__ = ("rate", "capacity", "tokens", "stamp")

    def __init__(self, rate: float, capacity: float, now: float | None = None) -> None:
        self.rate = float(rate)
        self.capacity = float(max(1.0, capacity))
        self.tokens = self.capacity          # a fresh plugin may send its burst at once
        self.stamp = time.monotonic() if now is None else now

    def _refill(self, now: float) -> None:
        if now > self.stamp:
            self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
            self.stamp = now

    def take(self, now: float | None = None) -> bool:
        """Take one token if there is one."""
        self._refill(time.monotonic() if now is None else now)
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False

    def retry_after(self, now: float | None = None) -> float:
        """Seconds until the next token is available (0 if one is now)."""
        self._refill(time.monotonic() if now is None else now)
        if self.tokens >= 1.0 or self.rate <= 0:
            return 0.0
        return (1.0 - self.tokens) / self.rate

    def reconfigure(self, rate: float, capacity: float) -> None:
        """A changed manifest: new numbers, tokens carried over (never above the new capacity)."""
        self._refill(time.monotonic())
        self.rate = float(rate)
        self.capacity = float(max(1.0, capacity))
        self.tokens = min(self.tokens, self.capacity)
