"""Plugin ids and the NATS tokens a plugin may claim.

An id names a plugin everywhere: its NATS account, its storage, its cgroup,
its Kubernetes objects. Ids are DNS-1123 labels so they are valid in all of
those places, and contain no `_` so Rosey's `<plugin>_<table>` row tables
cannot collide (rosey-compat.md).
"""

from __future__ import annotations

import hashlib
import re

TOKEN_PATTERN = r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$"  # nosec B105 - a regex for NATS subject tokens, not a password
TOKEN = re.compile(TOKEN_PATTERN)
# A command's action is the last subject token; Rosey uses words like `add_quote`.
ACTION = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9_-]*[A-Za-z0-9])?$")
# A chat word is what follows `!` in chat, e.g. `!8ball`; matched case-insensitively.
CHAT_WORD = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")
MAX_ID = 63

# Roots no plugin may claim: they would let it publish into the platform's or
# the core's own subject space.
RESERVED_TOKENS = frozenset({"rosey", "precinct", "plugin", "sys", "inbox", "core", "platform"})


class IdError(ValueError):
    pass


def canonical_id(name: str) -> str:
    """`markov_plugin` -> `markov-plugin`; reject what cannot become a label."""
    candidate = name.strip().lower().replace("_", "-")
    if not candidate:
        raise IdError("must not be empty")
    if len(candidate) > MAX_ID:
        raise IdError(f"must be at most {MAX_ID} characters, got {len(candidate)}")
    if not TOKEN.match(candidate):
        raise IdError(
            f"{name!r} cannot become a plugin id: use lowercase letters, digits, '-' or '_', "
            "starting and ending with a letter or digit"
        )
    return candidate


def kubernetes_id(namespace: str, name: str) -> str:
    """Cluster-wide unique id `<namespace>-<name>`, hashed down past 63 chars."""
    full = f"{namespace}-{name}"
    if len(full) <= MAX_ID:
        return full
    digest = hashlib.sha256(full.encode()).hexdigest()[:10]
    head = full[: MAX_ID - len(digest) - 1].rstrip("-")
    return f"{head}-{digest}"


# A command group's default action is chosen by how many words follow the chat
# word: exactly N ("1") or N or more ("2+").
ARG_COUNT = re.compile(r"^(?P<n>[0-9]{1,2})(?P<more>\+)?$")


def arg_count_range(key: str) -> tuple[int, int | None]:
    """'1' -> (1, 1); '2+' -> (2, None). ValueError for anything else."""
    match = ARG_COUNT.fullmatch(key) if isinstance(key, str) else None
    if not match:
        raise ValueError(f"{key!r} is not a number of words like '1' or '2+'")
    n = int(match["n"])
    return (n, None) if match["more"] else (n, n)
