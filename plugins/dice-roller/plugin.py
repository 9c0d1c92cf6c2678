"""Dice roller: `!roll 2d6`, `!roll d20`, `!roll 3d6+2`, `!flip`.

A Rosey-style plugin: a plain class constructed with a connected NATS client
and its config, subscribing in initialize() and unsubscribing in shutdown().
Answers go back on the request's reply inbox.

Config: max_dice (dice per roll, default 20), max_sides (default 1000).
"""

from __future__ import annotations

import json
import logging
import random
import re

NAMESPACE = "dice"
VERSION = "1.0.0"
DESCRIPTION = "Rolls dice (NdS+M) and flips coins."

ROLL_SUBJECT = "rosey.command.dice.roll"
FLIP_SUBJECT = "rosey.command.dice.flip"

DEFAULT_NOTATION = "1d6"
MAX_MODIFIER = 1_000_000
NOTATION = re.compile(r"^(?P<count>\d*)d(?P<sides>\d+)(?:(?P<sign>[+-])(?P<mod>\d+))?$", re.IGNORECASE)

log = logging.getLogger(__name__)


class DiceError(ValueError):
    """Bad input from a user; the message is shown in chat."""


def parse_notation(text: str, max_dice: int, max_sides: int) -> tuple[int, int, int]:
    """'3d6+2' -> (3, 6, 2). Raises DiceError with a message for people."""
    compact = "".join(text.split())
    match = NOTATION.match(compact)
    if not match or len(compact) > 32:
        raise DiceError(f"can't read {text.strip()[:32]!r}: use NdS like 2d6, d20 or 3d6+2")
    count = int(match["count"]) if match["count"] else 1
    sides = int(match["sides"])
    modifier = int(match["mod"]) if match["mod"] else 0
    if match["sign"] == "-":
        modifier = -modifier
    if count < 1:
        raise DiceError("roll at least one die")
    if count > max_dice:
        raise DiceError(f"too many dice: {count} (at most {max_dice})")
    if sides < 2:
        raise DiceError("a die needs at least 2 sides")
    if sides > max_sides:
        raise DiceError(f"too many sides: {sides} (at most {max_sides})")
    if abs(modifier) > MAX_MODIFIER:
        raise DiceError(f"modifier too large (at most {MAX_MODIFIER:,})")
    return count, sides, modifier


def _args_text(args) -> str:
    if args is None:
        return ""
    if isinstance(args, (list, tuple)):
        return " ".join(str(a) for a in args)
    return str(args)


class DiceRollerPlugin:
    NAMESPACE = NAMESPACE
    VERSION = VERSION
    DESCRIPTION = DESCRIPTION

    def __init__(self, nats_client, config=None):
        self.nats = nats_client
        self.config = dict(config or {})
        self.max_dice = int(self.config.get("max_dice", 20))
        self.max_sides = int(self.config.get("max_sides", 1000))
        self.random = random.SystemRandom()
        self._subscriptions = []

    async def initialize(self):
        self._subscriptions.append(await self.nats.subscribe(ROLL_SUBJECT, cb=self._on_roll))
        self._subscriptions.append(await self.nats.subscribe(FLIP_SUBJECT, cb=self._on_flip))
        log.info("dice roller ready (max %d dice, %d sides)", self.max_dice, self.max_sides)

    async def shutdown(self):
        subscriptions, self._subscriptions = self._subscriptions, []
        for sub in subscriptions:
            try:
                await sub.unsubscribe()
            except Exception as exc:           # connection already gone: nothing to undo
                log.debug("unsubscribe failed: %s", exc)

    # -- commands ---------------------------------------------------------------

    def roll(self, notation: str, user: str | None = None) -> dict:
        count, sides, modifier = parse_notation(notation or DEFAULT_NOTATION, self.max_dice, self.max_sides)
        rolls = [self.random.randint(1, sides) for _ in range(count)]
        total = sum(rolls) + modifier
        label = f"{count}d{sides}" + (f"{modifier:+d}" if modifier else "")
        shown = ", ".join(str(r) for r in rolls)
        detail = f"[{shown}]" + (f" {modifier:+d}" if modifier else "")
        who = f"{user} rolled" if user else "Rolled"
        formatted = f"🎲 {who} {label}: {detail} = {total}" if (count > 1 or modifier) else f"🎲 {who} {label}: {total}"
        return {"notation": label, "count": count, "sides": sides, "modifier": modifier,
                "rolls": rolls, "total": total, "formatted": formatted}

    def flip(self, user: str | None = None) -> dict:
        side = self.random.choice(("heads", "tails"))
        who = f"{user} flipped a coin" if user else "Coin flip"
        return {"side": side, "formatted": f"🪙 {who}: {side.capitalize()}"}

    async def _on_roll(self, msg):
        payload = self._payload(msg)
        if payload is None:
            return await self._respond(msg, {"success": False, "error": "request must be a JSON object"})
        try:
            result = self.roll(_args_text(payload.get("args")).strip(), payload.get("user"))
        except DiceError as exc:
            return await self._respond(msg, {"success": False, "error": str(exc)})
        await self._respond(msg, {"success": True, "result": result})

    async def _on_flip(self, msg):
        payload = self._payload(msg)
        if payload is None:
            return await self._respond(msg, {"success": False, "error": "request must be a JSON object"})
        await self._respond(msg, {"success": True, "result": self.flip(payload.get("user"))})

    @staticmethod
    def _payload(msg):
        try:
            payload = json.loads(msg.data or b"{}")
        except (ValueError, UnicodeDecodeError):
            return None
        return payload if isinstance(payload, dict) else None

    @staticmethod
    async def _respond(msg, body: dict):
        if not msg.reply:
            log.warning("request on %s had no reply inbox; answer dropped", msg.subject)
            return
        await msg.respond(json.dumps(body).encode())
