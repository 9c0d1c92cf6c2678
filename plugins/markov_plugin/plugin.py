"""Markov chatter: learns word chains from public chat and talks back.

Every chat message seen on `rosey.platform.*.chatMsg` (needs read_messages)
is learned as a chain of words; `!markov [seed words]` answers with a
generated sentence, and every `chatter_every` learned messages the plugin
says an unprompted line in that channel via `rosey.chat.<channel>.send`
(needs send_messages).

The chain lives in memory only and holds the most recent `max_messages`
messages, so it is bounded and starts empty after each restart. Persistence
arrives with Precinct's storage service.

Config (all optional):
  order          words of context per step (default 2)
  chatter_every  learned messages between unprompted lines; 0 = never (default 50)
  max_words      longest generated sentence (default 30)
  min_words      shorter messages are not learned (default 3)
  max_messages   messages the chain remembers (default 5000)
  ignore_users   usernames never learned from, e.g. the bot itself (default [])
"""

from __future__ import annotations

import collections
import json
import logging
import random
import re

NAMESPACE = "markov"
VERSION = "1.0.0"
DESCRIPTION = "Learns how the channel talks and makes up sentences in its style."

CHAT_SUBJECT = "rosey.platform.*.chatMsg"
COMMAND_SUBJECT = "rosey.command.markov.markov"

BEGIN = "\x02"          # control characters are stripped from chat, so these never collide
END = "\x03"
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_CHANNEL = re.compile(r"^[A-Za-z0-9_-]{1,64}$")

log = logging.getLogger(__name__)


def words_of(text: str) -> list[str]:
    return _CONTROL.sub(" ", text).split()


class Chain:
    """Counts of `state -> next word` over a sliding window of messages."""

    def __init__(self, order: int, max_messages: int) -> None:
        self.order = order
        self.transitions: dict[tuple[str, ...], collections.Counter] = {}
        self.window: collections.deque[list[str]] = collections.deque()
        self.max_messages = max_messages

    def _steps(self, words: list[str]):
        tokens = [BEGIN] * self.order + words + [END]
        for i in range(len(words) + 1):
            yield tuple(tokens[i:i + self.order]), tokens[i + self.order]

    def learn(self, words: list[str]) -> None:
        for state, nxt in self._steps(words):
            self.transitions.setdefault(state, collections.Counter())[nxt] += 1
        self.window.append(words)
        while len(self.window) > self.max_messages:
            self._forget(self.window.popleft())

    def _forget(self, words: list[str]) -> None:
        for state, nxt in self._steps(words):
            counter = self.transitions.get(state)
            if counter is None:
                continue
            counter[nxt] -= 1
            if counter[nxt] <= 0:
                del counter[nxt]
            if not counter:
                del self.transitions[state]

    def __len__(self) -> int:
        return len(self.window)

    def _start_for(self, seed: list[str], rng: random.Random) -> tuple[list[str], tuple[str, ...]] | None:
        """Generated words so far and the state to continue from, or None if
        the seed was never seen."""
        if not seed:
            return [], (BEGIN,) * self.order
        tail = tuple(seed[-self.order:])
        if len(tail) == self.order and tail in self.transitions:
            return list(seed), tail
        # Otherwise continue from any state whose last word is the seed's last word.
        last = seed[-1].lower()
        states = [s for s in self.transitions if s[-1] not in (BEGIN, END) and s[-1].lower() == last]
        if not states:
            return None
        state = rng.choice(states)
        return list(seed[:-1]) + [w for w in state if w != BEGIN], state

    def generate(self, rng: random.Random, seed: list[str] | None = None, max_words: int = 30) -> str | None:
        start = self._start_for(seed or [], rng)
        if start is None:
            return None
        out, state = start
        while len(out) < max_words:
            counter = self.transitions.get(state)
            if not counter:
                break
            nxt = rng.choices(list(counter), weights=list(counter.values()))[0]
            if nxt == END:
                break
            out.append(nxt)
            state = (*state[1:], nxt)
        return " ".join(out) if out else None


class MarkovPlugin:
    NAMESPACE = NAMESPACE
    VERSION = VERSION
    DESCRIPTION = DESCRIPTION

    def __init__(self, nats_client, config=None):
        self.nats = nats_client
        self.config = dict(config or {})
        self.order = max(1, int(self.config.get("order", 2)))
        self.chatter_every = max(0, int(self.config.get("chatter_every", 50)))
        self.max_words = max(1, int(self.config.get("max_words", 30)))
        self.min_words = max(1, int(self.config.get("min_words", 3)))
        self.ignore_users = {str(u).lower() for u in self.config.get("ignore_users", [])}
        self.chain = Chain(self.order, max(1, int(self.config.get("max_messages", 5000))))
        self.random = random.Random()
        self.learned = 0
        self._subscriptions = []

    async def initialize(self):
        self._subscriptions.append(await self.nats.subscribe(CHAT_SUBJECT, cb=self._on_chat))
        self._subscriptions.append(await self.nats.subscribe(COMMAND_SUBJECT, cb=self._on_command))
        log.info("markov ready (order %d, chatter every %d messages)", self.order, self.chatter_every)

    async def shutdown(self):
        subscriptions, self._subscriptions = self._subscriptions, []
        for sub in subscriptions:
            try:
                await sub.unsubscribe()
            except Exception as exc:
                log.debug("unsubscribe failed: %s", exc)

    # -- chat in ----------------------------------------------------------------

    async def _on_chat(self, msg):
        try:
            envelope = json.loads(msg.data)
        except (ValueError, UnicodeDecodeError):
            return
        data = envelope.get("data") if isinstance(envelope, dict) else None
        if not isinstance(data, dict):
            return
        text, user = data.get("message"), str(data.get("username") or "")
        if not isinstance(text, str) or text.lstrip().startswith("!") or user.lower() in self.ignore_users:
            return
        words = words_of(text)
        if len(words) < self.min_words:
            return
        self.chain.learn(words)
        self.learned += 1
        if self.chatter_every and self.learned % self.chatter_every == 0:
            channel = self._channel(envelope, data, msg.subject)
            line = self.chain.generate(self.random, max_words=self.max_words)
            if channel and line:
                body = {"channel": channel, "message": line, "type": "chat"}
                await self.nats.publish(f"rosey.chat.{channel}.send", json.dumps(body).encode())

    @staticmethod
    def _channel(envelope: dict, data: dict, subject: str) -> str | None:
        metadata = envelope.get("metadata") if isinstance(envelope.get("metadata"), dict) else {}
        for candidate in (data.get("channel"), metadata.get("channel"), envelope.get("channel")):
            if isinstance(candidate, str) and _CHANNEL.match(candidate):
                return candidate
        # Fall back to the platform token of rosey.platform.<platform>.chatMsg.
        parts = subject.split(".")
        return parts[2] if len(parts) == 4 and _CHANNEL.match(parts[2]) else None

    # -- command ----------------------------------------------------------------

    async def _on_command(self, msg):
        try:
            payload = json.loads(msg.data or b"{}")
        except (ValueError, UnicodeDecodeError):
            payload = None
        if not isinstance(payload, dict):
            return await self._respond(msg, {"success": False, "error": "request must be a JSON object"})
        args = payload.get("args")
        seed = words_of(" ".join(map(str, args)) if isinstance(args, list) else str(args or ""))
        if not len(self.chain):
            return await self._respond(msg, {"success": False, "error": "I haven't heard enough chat to say anything yet"})
        sentence = self.chain.generate(self.random, seed=seed, max_words=self.max_words)
        if sentence is None:
            return await self._respond(msg, {"success": False, "error": f"I haven't heard anyone say {seed[-1]!r} yet"})
        await self._respond(msg, {"success": True, "result": {
            "text": sentence, "seed": " ".join(seed), "learned": len(self.chain), "formatted": sentence,
        }})

    @staticmethod
    async def _respond(msg, body: dict):
        if not msg.reply:
            log.warning("request on %s had no reply inbox; answer dropped", msg.subject)
            return
        await msg.respond(json.dumps(body).encode())
