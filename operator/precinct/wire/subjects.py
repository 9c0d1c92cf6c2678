"""NATS subjects, defined once (docs/nats.md explains each edge).

Rosey's subjects are Rosey's contract with its plugins and platform adapter;
Precinct's own live under `precinct.`. A `*`/`>` wildcard where a token
varies; a function where a caller fills one in.
"""

from __future__ import annotations

# -- Rosey: chat between the platform adapter and the bot ---------------------

# Public chat events: never `pm` (private messages stay with the core).
CHAT_EVENTS = ("chatMsg", "addUser", "userLeave", "usercount", "changeMedia", "mediaUpdate", "playlist", "queue")


def platform_event(platform: str, event: str) -> str:
    """What the platform adapter publishes (`rosey.platform.cytube.chatMsg`)."""
    return f"rosey.platform.{platform}.{event}"


CHAT_IN_SUBJECTS = tuple(platform_event("*", event) for event in CHAT_EVENTS)
CHAT_MESSAGES = platform_event("*", "chatMsg")


def to_platform(platform: str) -> str:
    """What the adapter sends to the chat room (the dispatcher's answers)."""
    return f"rosey.platform.{platform}.message"


# What plugins publish to speak in chat; the gateway relays them to core.
CHAT_SEND = "rosey.chat.*.send"
CHANNEL_MESSAGE = "rosey.channel.*.message"
CHAT_OUT_SUBJECTS = (CHAT_SEND, CHANNEL_MESSAGE)

# -- Rosey: commands, replies, events --------------------------------------------

COMMAND_ROOT = "rosey.command"


def command(target: str) -> str:
    """`dice.roll` -> `rosey.command.dice.roll`."""
    return f"{COMMAND_ROOT}.{target}"


REPLY_ROOT = "rosey.reply"
REPLIES = f"{REPLY_ROOT}.>"


def replies_of(plugin_id: str, nonce: str = "*") -> str:
    """Where a plugin's answers to the dispatcher travel (`reply_to`)."""
    return f"{REPLY_ROOT}.{plugin_id}.{nonce}"


EVENT_ROOT = "rosey.event"
FLEET_EVENTS = f"{EVENT_ROOT}.>"


def events_under(root: str) -> str:
    return f"{EVENT_ROOT}.{root}.>"


# -- Rosey: the database service (`{ns}` is the plugin's subject namespace) ------

ROW_TEMPLATE = "rosey.db.row.{ns}.{op}"
KV_TEMPLATE = "rosey.db.kv.{ns}.{op}"
KV_SHARED_TEMPLATE = "rosey.db.kv.{op}"          # Rosey's namespace-in-payload form
MIGRATE_TEMPLATE = "rosey.db.migrate.{ns}.{op}"

# -- Precinct ----------------------------------------------------------------------

# An observe_chat_and_events plugin receives the fleet's chat and events under
# this prefix (`precinct.observe.rosey.platform.cytube.chatMsg`).
OBSERVE_PREFIX = "precinct.observe"

STORAGE_ROOT = "precinct.storage"


def storage_root(plugin_id: str) -> str:
    """The platform side of one plugin's storage: `<root>.row.insert`, ..."""
    return f"{STORAGE_ROOT}.{plugin_id}"


STORAGE_MIGRATE = "precinct.admin.storage.migrate"    # supervisor/operator -> storage
STORAGE_STATS = "precinct.admin.storage.stats"
GATEWAY_STATS = "precinct.gateway.stats"


def ping(plugin_id: str, instance: str = "*") -> str:
    """A runner's health ping (runner: precinct_runner/wire.py)."""
    return f"precinct.ping.{plugin_id}.{instance}"


def config(plugin_id: str, instance: str = "*") -> str:
    """Where a running instance takes its new config (hot reload)."""
    return f"precinct.config.{plugin_id}.{instance}"


def queue_group(plugin_id: str) -> str:
    """The queue group of a plugin's command subscriptions: during a hot
    reload both instances are in it, so each request reaches one."""
    return f"precinct.{plugin_id}"


# -- calls between plugins (docs/nats.md, "Calls between plugins") -------------------
# A caller publishes a request on CALL_ROOT.<ns>.<action> in its own account
# (the callee named by its subject namespace, so a manifest means the same on
# every runtime); the server maps it to RELAY_ROOT.<caller id>.<ns>.<action> in
# platform, where the gateway checks, counts and stamps it and asks the callee
# on EXPORT_ROOT.<callee id>.<action>, which the callee exports to platform.

CALL_ROOT = "precinct.call"
RELAY_ROOT = "precinct.relay"
EXPORT_ROOT = "precinct.export"


def call(target: str) -> str:
    """`quotes.lookup` -> what the caller publishes (runner: precinct_runner/wire.py)."""
    return f"{CALL_ROOT}.{target}"


def relayed_calls(caller_id: str, target: str = ">") -> str:
    """Where one caller's calls arrive in platform: the id was written by the server."""
    return f"{RELAY_ROOT}.{caller_id}.{target}"


def export(plugin_id: str, action: str) -> str:
    """Where a callee serves one exported action (runner: precinct_runner/wire.py)."""
    return f"{EXPORT_ROOT}.{plugin_id}.{action}"


VIOLATIONS = "precinct.violations.*"


def violations(plugin_id: str) -> str:
    return f"precinct.violations.{plugin_id}"


DISPATCH_RESULTS = "precinct.dispatch.*.result"


def dispatch_result(platform: str) -> str:
    """The dispatcher's per-command outcome (metrics, dashboard)."""
    return f"precinct.dispatch.{platform}.result"
