"""Steady command load for hot-reload tests and benchmarks/hot_reload.py.

`CommandLoad` plays a chat platform with the core credentials (like
`precinct say`): it publishes `!count` chat events with unique correlation
ids at a steady rate and records, per correlation id, every dispatcher
outcome (`precinct.dispatch.console.result`) and every answer on `rosey.platform.console.message`.
A command is *lost* when it has no outcome, *failed* when its outcome is not
"ok", *duplicated* when it got more than one outcome or answer.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections import defaultdict
from pathlib import Path

import nats

from precinct.runtime.chat import chat_event, read_endpoint
from precinct.wire.subjects import dispatch_result as result_subject

ANSWER = re.compile(r"rev=(\d+) pid=(\w+) greeting=(.*)")


class CommandLoad:
    def __init__(self, state_dir: Path, rate: float = 25.0, word: str = "!count") -> None:
        self.state_dir, self.rate, self.word = state_dir, rate, word
        self.sent: dict[str, float] = {}
        self.outcomes: dict[str, list[dict]] = defaultdict(list)
        self.answers: dict[str, list[str]] = defaultdict(list)
        self._stop = asyncio.Event()
        self._task: asyncio.Task | None = None
        self.nc = None

    async def start(self) -> None:
        endpoint = read_endpoint(self.state_dir)
        self.nc = await nats.connect(endpoint.nats, user_credentials=endpoint.core_creds, name="reload-load")

        async def on_result(msg) -> None:
            body = json.loads(msg.data)
            self.outcomes[body.get("correlation_id", "")].append(body)

        async def on_message(msg) -> None:
            body = json.loads(msg.data)
            if body.get("in_reply_to"):
                self.answers[body["in_reply_to"]].append(body.get("message", ""))

        await self.nc.subscribe(result_subject("console"), cb=on_result)
        await self.nc.subscribe("rosey.platform.console.message", cb=on_message)
        await self.nc.flush()
        await self._warm_up()
        self._task = asyncio.create_task(self._send_loop())

    async def _warm_up(self, timeout: float = 60.0) -> None:
        """Chat is a plain publish: until the dispatcher subscribes (it starts
        beside the plugins), a chat event reaches nobody. Probe until one is
        answered; probes are not counted."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            correlation, payload = chat_event(self.word, "loadtester", "reload")
            await self.nc.publish("rosey.platform.console.chatMsg", payload)
            end = time.monotonic() + 1.0
            while time.monotonic() < end:
                outs = self.outcomes.get(correlation)
                if outs and outs[0].get("status") == "ok":
                    self.outcomes.clear()
                    self.answers.clear()
                    return
                await asyncio.sleep(0.02)
        raise AssertionError("the dispatcher never answered a probe command")

    async def _send_loop(self) -> None:
        period = 1.0 / self.rate
        while not self._stop.is_set():
            correlation, payload = chat_event(self.word, "loadtester", "reload")
            self.sent[correlation] = time.monotonic()
            await self.nc.publish("rosey.platform.console.chatMsg", payload)
            try:
                await asyncio.wait_for(self._stop.wait(), period)
            except asyncio.TimeoutError:
                pass

    async def stop(self, settle: float = 12.0) -> None:
        """Stop sending; wait (bounded) until every command has an outcome."""
        self._stop.set()
        if self._task:
            await self._task
        deadline = time.monotonic() + settle
        while time.monotonic() < deadline and any(c not in self.outcomes for c in self.sent):
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.5)  # late duplicates, if any, would arrive now
        await self.nc.close()

    def latest(self) -> tuple[int, str, str] | None:
        """(revision, pid, greeting) of the most recent ok answer."""
        best = None
        for correlation, outs in self.outcomes.items():
            for out in outs:
                m = ANSWER.match(out.get("message", "")) if out.get("status") == "ok" else None
                if m and (best is None or self.sent.get(correlation, 0) > best[0]):
                    best = (self.sent.get(correlation, 0), (int(m[1]), m[2], m[3]))
        return best[1] if best else None

    async def wait_for(self, predicate, timeout: float = 60.0) -> tuple[int, str, str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            last = self.latest()
            if last is not None and predicate(last):
                return last
            await asyncio.sleep(0.05)
        raise AssertionError(f"timed out; latest answer {self.latest()}")

    def summary(self) -> dict:
        lost = [c for c in self.sent if c not in self.outcomes]
        failed = [(c, o[0]) for c, o in self.outcomes.items() if c in self.sent and o[0].get("status") != "ok"]
        duplicated = [c for c in self.sent
                      if len(self.outcomes.get(c, [])) > 1 or len(self.answers.get(c, [])) > 1]
        latencies = sorted(o[0].get("elapsed_ms", 0) for c, o in self.outcomes.items() if c in self.sent)
        return {"sent": len(self.sent), "answered": len(self.sent) - len(lost) - len(failed),
                "lost": len(lost), "failed": len(failed), "duplicated": len(duplicated),
                "failures": failed[:5], "p99_ms": latencies[int(0.99 * (len(latencies) - 1))] if latencies else None,
                "max_ms": latencies[-1] if latencies else None}
