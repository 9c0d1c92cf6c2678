"""The dispatcher: turns chat into plugin commands, in the core account.

It stands where Rosey's router stood, so a real Rosey CyTube connector works
against Precinct unchanged:

  rosey.platform.<p>.chatMsg  "!roll 2d6"
      -> request rosey.command.dice.roll  {"channel","user","args","reply_to"}
         (a NATS inbox AND a payload reply_to rosey.reply.<id>.<nonce>;
          whichever answer arrives first wins, the other is ignored)
      -> rosey.platform.<p>.message  {"message": <formatted answer>, ...}

Unsolicited chat that the gateway relays from plugins (rosey.chat.<ch>.send,
rosey.channel.<ch>.message) is forwarded to the platform the channel was last
seen on. Every command's outcome is also published on
`precinct.dispatch.<p>.result` so `precinct say` can tell "no plugin owns
this", "no answer in time" and "answered" apart.

Routes come from a JSON file the supervisor rewrites atomically (SIGHUP or a
changed mtime reloads it): chat word -> owning plugin and either one subject
(`!roll 2d6`) or a command group (`!countdown list`, `!countdown movie` vs
`!countdown movie 2026-12-01 20:00`: subcommands, and a default action chosen
by the number of words). `!help` is answered here from the same table.
Answers are rendered as chat text (render_result): `formatted`, else
`message`, else a plain string, else short readable text, never JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import secrets
import signal
import time
from pathlib import Path
from typing import Any

from nats.errors import NoRespondersError, TimeoutError as NatsTimeout

from ..spec.chat import MAX_ARGS, parse_command
from ..spec.identity import arg_count_range
from ..wire import headers as headers_wire
from ..wire import subjects as wire
from .lifecycle import connect, stop_on_signals

log = logging.getLogger("precinct.dispatcher")

MAX_ANSWER = 500          # characters of a rendered non-text result: chat, not a dump
MAX_REPLY_IN_OUTCOME = 64 * 1024   # bytes of a plugin's reply copied into the outcome
MAX_DEPTH = 3


def readable(value: Any, depth: int = 0) -> str:
    """Any JSON value as short text a person reads in chat: `key: value`
    pairs, lists joined with commas, yes/no for booleans; never JSON."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if value is None:
        return "none"
    if isinstance(value, (int, float, str)):
        return str(value)
    if depth >= MAX_DEPTH:
        return "…"
    if isinstance(value, dict):
        parts = []
        for key, item in value.items():
            text = readable(item, depth + 1)
            if isinstance(item, (dict, list)) and item:
                text = f"({text})"
            parts.append(f"{str(key).replace('_', ' ')}: {text}")
        return ", ".join(parts) or "nothing"
    if isinstance(value, list):
        sep = "; " if any(isinstance(i, (dict, list)) for i in value) else ", "
        return sep.join(readable(i, depth + 1) for i in value) or "nothing"
    return str(value)


def _short(text: str) -> str:
    return text if len(text) <= MAX_ANSWER else text[: MAX_ANSWER - 1] + "…"


def render_result(result: Any) -> str:
    """A successful result as chat text. In order: `formatted`, `message`,
    a plain string, else readable(result), shortened."""
    if isinstance(result, dict):
        for key in ("formatted", "message"):
            text = result.get(key)
            if text is not None and str(text).strip():
                return str(text)
    if isinstance(result, str):
        return result
    if result is None or result == {}:
        return "done"
    return _short(readable(result))


def render_error(error: Any) -> str:
    """`error` of a failed reply: a string, or Rosey's {"code", "message"}."""
    if isinstance(error, dict) and error.get("message"):
        return str(error["message"])
    if error is None or error == "" or error == {}:
        return "the plugin reported an error"
    return error if isinstance(error, str) else _short(readable(error))


def _is_json(raw: bytes) -> bool:
    try:
        json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return False
    return True


def format_answer(raw: bytes) -> tuple[bool, str]:
    """A Rosey reply -> (success, text for chat)."""
    try:
        reply = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return False, "the plugin answered with something that is not JSON"
    if not isinstance(reply, dict):
        return True, render_result(reply)[:MAX_ARGS]
    if reply.get("success") is False:
        return False, render_error(reply.get("error"))[:MAX_ARGS]
    if "result" in reply:
        result = reply["result"]
    else:  # a bare answer without Rosey's envelope
        result = {k: v for k, v in reply.items() if k != "success"}
    return True, render_result(result)[:MAX_ARGS]


# -- routes -------------------------------------------------------------------


def choose(route: dict[str, Any], args: str) -> tuple[str, str] | None:
    """(subject, args for the plugin) for `!word args` under `route`, or None.

    A plain word sends everything after it. A command group sends what
    follows a known subcommand to that subcommand's subject; otherwise the
    default action for that many words gets the whole rest of the line."""
    if "subject" in route:
        return route["subject"], args
    words = args.split()
    subcommands = route.get("subcommands") or {}
    if words and words[0].lower() in subcommands:
        return subcommands[words[0].lower()], args[len(words[0]):].strip()
    for key, subject in (route.get("default") or {}).items():
        try:
            low, high = arg_count_range(key)
        except ValueError:
            continue
        if len(words) >= low and (high is None or len(words) <= high):
            return subject, args
    return None


def _word_count(key: str) -> str:
    low, high = arg_count_range(key)
    if high is None:
        return f"{low} or more words"
    return "nothing" if low == 0 else f"{low} word" + ("s" if low > 1 else "")


def describe(word: str, route: dict[str, Any]) -> str:
    """`!countdown list|ls, delete, …, or 1 word, 2 or more words`: the
    usage line for one chat word (subcommand aliases grouped)."""
    if "subject" in route:
        return f"!{word}"
    by_subject: dict[str, list[str]] = {}
    for sub, subject in (route.get("subcommands") or {}).items():
        by_subject.setdefault(subject, []).append(sub)
    parts = ["|".join(subs) for subs in by_subject.values()]
    parts += [f"<{_word_count(key)}>" for key in (route.get("default") or {})]
    return f"!{word} " + ", ".join(parts)


def help_text(table: dict[str, dict[str, Any]], topic: str = "") -> str:
    """`!help`: every word the fleet serves; `!help WORD`: that word's usage."""
    topic = topic.lstrip("!").lower()
    if topic:
        route = table.get(topic)
        if route is None:
            return f"no plugin handles !{topic}"
        owner = route.get("alias_of")
        line = describe(topic, route) + (f" (same as !{owner})" if owner else "")
        if route.get("description"):
            line += f" — {route['description']}"
        return line
    aliases: dict[str, list[str]] = {}
    for word, route in table.items():
        if route.get("alias_of"):
            aliases.setdefault(route["alias_of"], []).append(word)
    shown = []
    for word, route in sorted(table.items()):
        if route.get("alias_of"):
            continue
        name = "/".join(f"!{w}" for w in [word, *sorted(aliases.get(word, []))])
        if "subject" in route:
            shown.append(name)
        else:
            shown.append(f"{name} ({describe(word, route).split(' ', 1)[1]})")
    if not shown:
        return "no commands are available right now"
    return ("Commands: " + "; ".join(shown) + ". Say !help WORD for one command.")[:MAX_ARGS]


class Routes:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.table: dict[str, dict[str, str]] = {}
        self._mtime = 0.0

    def reload(self, force: bool = False) -> None:
        try:
            mtime = self.path.stat().st_mtime
        except FileNotFoundError:
            self.table = {}
            return
        if not force and mtime == self._mtime:
            return
        try:
            self.table = json.loads(self.path.read_text())
            self._mtime = mtime
            log.info("routes loaded: %s", ", ".join(f"!{w}" for w in sorted(self.table)) or "(none)")
        except (OSError, ValueError) as exc:
            log.error("cannot read routes %s: %s (keeping the previous table)", self.path, exc)

    def get(self, word: str) -> dict[str, Any] | None:
        self.reload()
        return self.table.get(word)

    def all(self) -> dict[str, dict[str, Any]]:
        self.reload()
        return self.table


NO_RESPONDERS_RETRY = 4.0   # seconds a request that found no subscriber is retried (plugin reloading)
NO_RESPONDERS_PAUSE = 0.05


class Dispatcher:
    def __init__(self, nc, routes: Routes, timeout: float = 5.0, no_responders_retry: float = NO_RESPONDERS_RETRY) -> None:
        self.nc = nc
        self.routes = routes
        self.timeout = timeout
        # A plugin being reloaded has a short gap with no subscriber (handover,
        # runtime/rollout.py): a request that found nobody reached nobody, so
        # sending it again cannot answer it twice. Retry for this long.
        self.no_responders_retry = min(no_responders_retry, timeout)
        self.channel_platform: dict[str, str] = {}
        self._tasks: set[asyncio.Task] = set()

    async def start(self) -> None:
        await self.nc.subscribe(wire.CHAT_MESSAGES, cb=self._on_chat)
        await self.nc.subscribe(wire.CHAT_SEND, cb=self._on_relay)
        await self.nc.subscribe(wire.CHANNEL_MESSAGE, cb=self._on_relay)

    async def _on_chat(self, msg) -> None:
        platform = msg.subject.split(".")[2]
        try:
            envelope = json.loads(msg.data)
            data = envelope.get("data") or {}
            text = str(data.get("message", ""))
            user = str(data.get("username", ""))
            channel = str(data.get("channel") or (envelope.get("metadata") or {}).get("channel") or platform)
            correlation = str(envelope.get("correlation_id") or secrets.token_hex(8))
        except (ValueError, AttributeError, TypeError):
            log.warning("ignoring a chat event on %s that is not a Rosey envelope", msg.subject)
            return
        self.channel_platform[channel] = platform
        parsed = parse_command(text)
        if not parsed:
            return
        task = asyncio.create_task(self._dispatch(platform, channel, user, correlation, *parsed))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _dispatch(self, platform: str, channel: str, user: str, correlation: str, word: str, args: str) -> None:
        outcome: dict[str, Any] = {"correlation_id": correlation, "word": word, "channel": channel}
        if word == "help":  # reserved: no plugin may claim it (spec/model.py)
            text = help_text(self.routes.all(), args)
            outcome.update(status="ok", message=text)
            await self._say(platform, channel, correlation, text)
            await self._publish(wire.dispatch_result(platform), outcome)
            return
        route = self.routes.get(word)
        if route is None:
            outcome.update(status="no_route", message=f"no plugin handles !{word}")
            await self._publish(wire.dispatch_result(platform), outcome)
            return
        plugin = route["plugin"]
        chosen = choose(route, args)
        if chosen is None:  # a known word, but no subcommand or default action fits
            text = "usage: " + describe(word, route)
            outcome.update(plugin=plugin, status="usage", message=text)
            await self._say(platform, channel, correlation, text, plugin)
            await self._publish(wire.dispatch_result(platform), outcome)
            return
        subject, args = chosen
        reply_to = wire.replies_of(plugin, secrets.token_hex(8))
        payload = json.dumps({"channel": channel, "user": user, "args": args, "reply_to": reply_to}).encode()
        outcome.update(plugin=plugin, subject=subject)
        started = time.monotonic()
        answer: asyncio.Future = asyncio.get_running_loop().create_future()

        async def on_payload_reply(msg) -> None:
            if not answer.done():
                answer.set_result(msg.data)

        sub = await self.nc.subscribe(reply_to, cb=on_payload_reply, max_msgs=1)

        async def via_inbox() -> None:
            retry_until = started + self.no_responders_retry
            while True:
                try:
                    left = max(0.05, self.timeout - (time.monotonic() - started))
                    msg = await self.nc.request(subject, payload, timeout=left)
                    if not answer.done():
                        answer.set_result(msg.data)
                except NoRespondersError:
                    if time.monotonic() < retry_until:
                        await asyncio.sleep(NO_RESPONDERS_PAUSE)
                        continue
                    if not answer.done():
                        answer.set_exception(NoRespondersError())
                except NatsTimeout:
                    pass  # the payload reply may still come; the overall wait decides
                return

        inbox_task = asyncio.create_task(via_inbox())
        try:
            raw = await asyncio.wait_for(answer, self.timeout)
        except NoRespondersError:
            outcome.update(status="no_responders", message=f"plugin {plugin} is not running")
        except asyncio.TimeoutError:
            outcome.update(status="timeout", message=f"plugin {plugin} did not answer !{word} within {self.timeout:g} s")
        else:
            ok, text = format_answer(raw)
            # "error": the plugin answered `success: false` (an ordinary answer,
            # e.g. an unknown quote); "bad_reply": what came back is not JSON.
            outcome.update(status="ok" if ok else ("error" if _is_json(raw) else "bad_reply"), message=text)
            if len(raw) <= MAX_REPLY_IN_OUTCOME:
                # The plugin's own reply, for scripts (`precinct say --json`): chat gets the text.
                with contextlib.suppress(ValueError, UnicodeDecodeError):
                    outcome["reply"] = json.loads(raw)
            await self._say(platform, channel, correlation, text, plugin)
        finally:
            inbox_task.cancel()
            try:
                await sub.unsubscribe()
            except Exception:  # the subscription may already be gone after max_msgs  # nosec B110 - best-effort cleanup of a subscription
                pass
        outcome["elapsed_ms"] = round((time.monotonic() - started) * 1000, 3)
        await self._publish(wire.dispatch_result(platform), outcome)

    async def _on_relay(self, msg) -> None:
        channel = msg.subject.split(".")[2]
        try:
            body = json.loads(msg.data)
            text = str(body.get("message", ""))[:MAX_ARGS]
        except (ValueError, AttributeError):
            return
        platform = self.channel_platform.get(channel, "console")
        plugin = (msg.headers or {}).get(headers_wire.PLUGIN, "")
        await self._publish(wire.to_platform(platform),
                            {"message": text, "channel": channel, "plugin": plugin, "unsolicited": True})

    async def _say(self, platform: str, channel: str, correlation: str, text: str, plugin: str = "") -> None:
        await self._publish(wire.to_platform(platform),
                            {"message": text, "channel": channel, "in_reply_to": correlation, "plugin": plugin})

    async def _publish(self, subject: str, body: dict) -> None:
        # ensure_ascii=False: emoji travel as UTF-8, not as \ud83c escapes.
        await self.nc.publish(subject, json.dumps(body, ensure_ascii=False).encode())


async def serve(server: str, creds: str, routes_path: Path, timeout: float,
                no_responders_retry: float = NO_RESPONDERS_RETRY) -> None:
    stop = stop_on_signals()
    routes = Routes(routes_path)
    routes.reload(force=True)
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGHUP, lambda: routes.reload(force=True))
    nc = await connect(server, creds, "precinct-dispatcher", log)
    dispatcher = Dispatcher(nc, routes, timeout, no_responders_retry)
    await dispatcher.start()
    log.info("dispatcher ready on %s", server)
    await stop.wait()
    await nc.drain()


def main() -> None:
    parser = argparse.ArgumentParser(description="Precinct's dispatcher: chat commands -> plugin requests (core account).")
    parser.add_argument("--server", required=True)
    parser.add_argument("--creds", required=True)
    parser.add_argument("--routes", required=True, type=Path)
    parser.add_argument("--timeout", type=float, default=5.0)
    parser.add_argument("--no-responders-retry", type=float, default=NO_RESPONDERS_RETRY,
                        help="seconds to retry a command nobody subscribes to (a plugin being reloaded)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s dispatcher %(levelname)s %(message)s")
    asyncio.run(serve(args.server, args.creds, args.routes, args.timeout, args.no_responders_retry))


if __name__ == "__main__":
    main()
