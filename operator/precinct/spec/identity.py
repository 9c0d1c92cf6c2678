"""Plugin ids and the NATS tokens a plugin may claim.

An id names a plugin everywhere: its NATS account, its storage, its cgroup,
its Kubernetes objects. Ids are DNS-1123 labels so they are valid in all of
those places, and contain no `_` so Rosey's `<plugin>_<table>` row tables
cannot collide (with `_` allowed, plugin `a` table `b_c` and plugin `a_b`
table `c` would both be `a_b_c`).
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
# Every check uses `fullmatch`: with `match`, `$` also matches before a
# trailing newline, so "vault\n" would pass as a token.
MAX_ID = 63
MAX_TOKEN = 63       # a namespace or event root: one NATS token, a DNS-1123 label
MAX_ACTION = 64      # the last token of a command subject

# Roots no plugin may claim: they would let it publish into the platform's or
# the core's own subject space.
RESERVED_TOKENS = frozenset({"rosey", "precinct", "plugin", "sys", "inbox", "core", "platform"})


class IdError(ValueError):
    pass


def canonical_id(name: str) -> str:
    """`markov_plugin` -> `markov-plugin`; reject what cannot become a label."""
    candidate = name.lower().replace("_", "-")
    if not candidate:
        raise IdError("must not be empty")
    if len(candidate) > MAX_ID:
        raise IdError(f"must be at most {MAX_ID} characters, got {len(candidate)}")
    if not TOKEN.fullmatch(candidate):
        raise IdError(
            f"{name!r} cannot become a plugin id: use lowercase letters, digits, '-' or '_', "
            "starting and ending with a letter or digit"
        )
    return candidate


# A hashed Kubernetes id ends in `-` and this many hex digits of
# sha256("<namespace>/<name>"); 64 bits, so nobody can aim a second
# BotPlugin at an existing hashed id.
K8S_HASH_DIGITS = 16
_HASHED = re.compile(rf".*-[0-9a-f]{{{K8S_HASH_DIGITS}}}")


def kubernetes_id(namespace: str, name: str) -> str:
    """A cluster-wide id for the BotPlugin `<namespace>/<name>`; two different
    BotPlugins never share one (docs/operator.md#plugin-ids).

    The readable form `<namespace>-<name>` is used only when it cannot be
    ambiguous: the namespace has no `-` (so the first `-` splits the id back
    into namespace and name), the result fits 63 characters, and it does not
    end like a hashed id. Otherwise (`team-a/dice`, or `team/a-dice`'s
    neighbour `team-a/dice`) the id is the readable form cut short plus a hash
    of `<namespace>/<name>`, and hashed ids always end in `-<16 hex digits>`,
    which a readable id never does. Without this, `a-b/c` and `a/b-c` were
    both `a-b-c`: one account, one storage, one set of credentials.
    """
    full = f"{namespace}-{name}"
    if "-" not in namespace and len(full) <= MAX_ID and not _HASHED.fullmatch(full):
        return full
    digest = hashlib.sha256(f"{namespace}/{name}".encode()).hexdigest()[:K8S_HASH_DIGITS]
    head = full[: MAX_ID - K8S_HASH_DIGITS - 1].rstrip("-")
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
