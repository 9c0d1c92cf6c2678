"""Markov chatter: learns word chains from public chat and talks back.

Every chat message seen on `rosey.platform.*.chatMsg` (needs read_messages)
is learned as a chain of words; `!markov [seed words]` answers with a
generated sentence, and every `chatter_every` learned messages the plugin
says an unprompted line in that channel via `rosey.chat.<channel>.send`
(needs send_messages).

The chain holds the most recent `max_messages` messages and is kept in
Rosey's key/value storage (needs database_read and database_write), so what
it learned survives a restart. Like any Rosey plugin it only uses the NATS
client it is given: `rosey.db.kv.{get,set,delete}` requests, with Rosey's
`plugin_name` in the payload (Precinct ignores it and uses the plugin's own
identity). The messages are stored in chunks of at most ~32 KB:

  chain.meta          {"version": 1, "chunks": [[n, messages], ...], "next": n}
  chain.chunk.<n>     {"messages": [["word", ...], ...]}

New messages are written every `persist_every` seconds (and at shutdown),
so a crash loses at most that much. Without storage (no responders, a
refusal, a timeout) the plugin keeps working from memory and retries later.

Config (all optional):
  order          words of context per step (default 2)
  chatter_every  learned messages between unprompted lines; 0 = never (default 50)
  max_words      longest generated sentence (default 30)
  min_words      shorter messages are not learned (default 3)
  max_messages   messages the chain remembers (default 5000)
  ignore_users   usernames never learned from, e.g. the bot itself (default [])
  persist        keep the chain in storage (default true)
  persist_every  seconds between writes of newly learned messages (default 5)
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import random
import re
import time

NAMESPACE = "markov"
VERSION = "1.0.0"
DESCRIPTION = "Learns how the channel talks and makes up sentences in its style."

CHAT_SUBJECT = "rosey.platform.*.chatMsg"
COMMAND_SUBJECT = "rosey.command.markov.markov"
KV_GET, KV_SET, KV_DELETE = "rosey.db.kv.get", "rosey.db.kv.set", "rosey.db.kv.delete"
META_KEY = "chain.meta"
CHUNK_BYTES = 32_000        # well under Rosey's 64 KB per value
CHUNK_MESSAGES = 500
REQUEST_TIMEOUT = 3.0
LOAD_WAIT = 3.0             # initialize() waits this long for storage to answer, then loads in the background

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


class StoreError(Exception):
    pass


def chunk_key(number: int) -> str:
    return f"chain.chunk.{number}"


class ChainStore:
    """Keeps the chain's messages in Rosey's KV storage, in numbered chunks.

    The meta key lists the chunks (number, message count); a chunk is always
    written before the meta that names it, and a trimmed chunk is deleted
    only after the meta stopped naming it, so a crash at any point leaves a
    readable chain."""

    def __init__(self, nats_client, chain: Chain, *, namespace: str = NAMESPACE) -> None:
        self.nats = nats_client
        self.chain = chain
        self.namespace = namespace
        self.loaded = False
        self.chunks: list[list[int]] = []           # [[number, messages], ...] oldest first
        self.next = 0
        self.open: list[list[str]] = []              # messages of the last chunk
        self.open_bytes = 0
        self.unsaved: dict[int, list[list[str]]] = {}
        self.backlog: list[list[str]] = []           # learned before the stored chain was loaded
        self.dirty = False
        self._warned = False

    async def _request(self, subject: str, body: dict, retries: int = 3) -> dict:
        body = {"plugin_name": self.namespace, **body}
        for attempt in range(retries):
            try:
                msg = await self.nats.request(subject, json.dumps(body).encode(), timeout=REQUEST_TIMEOUT)
            except Exception as exc:  # no responders, timeout, permission refused
                raise StoreError(f"{subject}: {exc.__class__.__name__} {exc}") from None
            try:
                reply = json.loads(msg.data)
            except (ValueError, UnicodeDecodeError):
                raise StoreError(f"{subject}: the answer is not JSON") from None
            if reply.get("success"):
                return reply
            err = reply.get("error")
            code = err.get("code") if isinstance(err, dict) else None
            if code == "RATE_LIMITED" and attempt + 1 < retries:
                await asyncio.sleep(min(2.0, float(err.get("retry_after") or 0.2)))
                continue
            raise StoreError(f"{subject}: {err}")
        raise StoreError(f"{subject}: still rate limited")

    async def _get(self, key: str):
        data = (await self._request(KV_GET, {"key": key})).get("data") or {}
        return data.get("value") if data.get("exists") else None

    async def load(self) -> int:
        """Read the stored chain into memory; returns the messages loaded."""
        meta = await self._get(META_KEY)
        chunks, nxt, messages = [], 0, []
        if isinstance(meta, dict) and isinstance(meta.get("chunks"), list):
            nxt = int(meta.get("next", 0))
            for number, _count in meta["chunks"]:
                chunk = await self._get(chunk_key(int(number)))
                stored = chunk.get("messages") if isinstance(chunk, dict) else None
                stored = [m for m in (stored or []) if isinstance(m, list) and all(isinstance(w, str) for w in m)]
                chunks.append([int(number), len(stored)])
                messages.append(stored)
        self.chunks, self.next = chunks, max(nxt, max((c[0] + 1 for c in chunks), default=0))
        total = 0
        for stored in messages:
            for words in stored:
                self.chain.learn(words)
                total += 1
        # Keep filling the last chunk if it has room, so restarts do not leave many small chunks.
        if chunks and chunks[-1][1] < CHUNK_MESSAGES:
            self.open = messages[-1]
            self.open_bytes = sum(len(json.dumps(m)) for m in self.open)
        else:
            self._new_chunk()
        self.loaded = True
        backlog, self.backlog = self.backlog, []
        for words in backlog:
            self.add(words)
        return total

    def _new_chunk(self) -> None:
        self.chunks.append([self.next, 0])
        self.next += 1
        self.open, self.open_bytes = [], 0

    def add(self, words: list[str]) -> None:
        """A newly learned message, to be written at the next flush."""
        if not self.loaded:
            self.backlog = (self.backlog + [words])[-self.chain.max_messages:]
            return
        size = len(json.dumps(words)) + 1
        if self.open and (self.open_bytes + size > CHUNK_BYTES or len(self.open) >= CHUNK_MESSAGES):
            self._new_chunk()
        self.open.append(words)
        self.open_bytes += size
        self.chunks[-1][1] = len(self.open)
        self.unsaved[self.chunks[-1][0]] = self.open
        self.dirty = True

    async def flush(self) -> None:
        if not self.loaded:
            await self.load()
        if not self.dirty:
            return
        for number in sorted(self.unsaved):
            await self._request(KV_SET, {"key": chunk_key(number), "value": {"messages": self.unsaved[number]}})
            del self.unsaved[number]
        trimmed = []
        total = sum(c[1] for c in self.chunks)
        while len(self.chunks) > 1 and total - self.chunks[0][1] >= self.chain.max_messages:
            total -= self.chunks[0][1]
            trimmed.append(self.chunks.pop(0)[0])
        await self._request(KV_SET, {"key": META_KEY, "value": {"version": 1, "chunks": self.chunks, "next": self.next}})
        self.dirty = False
        for number in trimmed:
            try:
                await self._request(KV_DELETE, {"key": chunk_key(number)})
            except StoreError as exc:
                log.debug("could not delete an old chunk: %s", exc)

    def warn_once(self, exc: Exception) -> None:
        if not self._warned:
            log.warning("markov storage unavailable, learning in memory only for now: %s", exc)
            self._warned = True
        else:
            log.debug("markov storage still unavailable: %s", exc)


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
        self.persist = bool(self.config.get("persist", True))
        self.persist_every = max(0.2, float(self.config.get("persist_every", 5)))
        self.store = ChainStore(self.nats, self.chain)
        self._flusher = None

    async def initialize(self):
        if self.persist:
            await self._load()
            self._flusher = asyncio.ensure_future(self._flush_loop())
        self._subscriptions.append(await self.nats.subscribe(CHAT_SUBJECT, cb=self._on_chat))
        self._subscriptions.append(await self.nats.subscribe(COMMAND_SUBJECT, cb=self._on_command))
        log.info("markov ready (order %d, chatter every %d messages, %d remembered)",
                 self.order, self.chatter_every, len(self.chain))

    async def _load(self):
        deadline = time.monotonic() + LOAD_WAIT
        while True:
            try:
                loaded = await self.store.load()
                log.info("markov loaded %d messages from storage", loaded)
                return
            except StoreError as exc:
                # Storage may still be starting; later flushes keep trying.
                if time.monotonic() + 0.5 > deadline or "NoResponders" not in str(exc):
                    self.store.warn_once(exc)
                    return
                await asyncio.sleep(0.5)

    async def _flush_loop(self):
        while True:
            await asyncio.sleep(self.persist_every)
            try:
                await self.store.flush()
            except StoreError as exc:
                self.store.warn_once(exc)
            except Exception:  # never let persistence take the plugin down
                log.exception("markov: saving the chain failed")

    async def shutdown(self):
        if self._flusher is not None:
            self._flusher.cancel()
            self._flusher = None
            try:
                await asyncio.wait_for(self.store.flush(), 3.0)
            except Exception as exc:  # best effort: the last few seconds may be lost
                log.debug("markov: final save failed: %s", exc)
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
        if self.persist:
            self.store.add(words)
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
