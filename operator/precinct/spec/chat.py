"""What a chat line means to the bot: `!word the rest` is a command.

The dispatcher routes by it and `precinct say`/`console` use it to tell a
command (wait for its answer) from plain chat, so both read the same rule.
"""

from __future__ import annotations

MAX_ARGS = 2000  # characters of chat handed to a plugin


def parse_command(message: str) -> tuple[str, str] | None:
    """`!Roll 2d6` -> ("roll", "2d6"); anything else -> None."""
    if not message.startswith("!") or len(message) < 2:
        return None
    word, _, rest = message[1:].partition(" ")
    return word.lower(), rest.strip()[:MAX_ARGS]
