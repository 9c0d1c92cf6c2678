"""One unprivileged uid/gid per plugin, stable across restarts.

Range: 61000-61999 (PRECINCT_UID_BASE / PRECINCT_UID_COUNT override it).
Debian reserves 60000-64999 for nothing in particular and hands out regular
users from 1000 up, system users below 1000, so this range is normally free;
a uid that /etc/passwd knows is skipped.

The table lives host-wide in /var/lib/precinct/uids.json (PRECINCT_UID_TABLE
overrides it), keyed by `<state dir>:<plugin id>`, so two supervisors on one
host with different state dirs never share a uid. A plugin first gets the uid
its id hashes to; a taken one probes forward. Entries whose state dir no
longer exists are dropped whenever a new uid is handed out. The gid equals the uid
(a private group per plugin, with no members).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import pwd
from pathlib import Path

from ..settings import HostSettings

DEFAULT_TABLE = Path("/var/lib/precinct/uids.json")


class UidError(RuntimeError):
    pass


def _table_path() -> Path:
    return HostSettings.load().uid_table or DEFAULT_TABLE


def _known_to_passwd(uid: int) -> bool:
    try:
        pwd.getpwuid(uid)
        return True
    except KeyError:
        return False


def uid_range() -> tuple[int, int]:
    """(first uid, how many) plugins may use: PRECINCT_UID_BASE / _COUNT."""
    settings = HostSettings.load()
    return settings.uid_base, settings.uid_count


def preferred_uid(plugin_id: str, base: int, count: int) -> int:
    digest = hashlib.sha256(plugin_id.encode()).digest()
    return base + int.from_bytes(digest[:4], "big") % count


def allocate(state_dir: Path, plugin_id: str, *, table: Path | None = None,
             base: int | None = None, count: int | None = None) -> int:
    """The uid of `plugin_id` under `state_dir`, allocating one if needed
    (the range: `base`/`count`, else the settings')."""
    if base is None or count is None:
        base, count = uid_range()
    table = table or _table_path()
    table.parent.mkdir(parents=True, exist_ok=True)
    key = f"{Path(state_dir).resolve()}:{plugin_id}"
    fd = os.open(table.with_suffix(".lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            entries: dict[str, int] = json.loads(table.read_text())
        except (OSError, ValueError):
            entries = {}
        if key in entries and base <= entries[key] < base + count:
            return entries[key]
        # Entries of state dirs that are gone give their uids back.
        entries = {k: v for k, v in entries.items() if Path(k.rsplit(":", 1)[0]).exists()}
        uid = _pick(entries, plugin_id, base, count)
        if uid is None:
            raise UidError(f"no free uid left in {base}-{base + count - 1} (table {table})")
        entries[key] = uid
        tmp = table.with_suffix(".tmp")
        tmp.write_text(json.dumps(entries, indent=1, sort_keys=True))
        os.chmod(tmp, 0o600)
        tmp.replace(table)
        return uid
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _pick(entries: dict[str, int], plugin_id: str, base: int, count: int) -> int | None:
    taken = set(entries.values())
    start = preferred_uid(plugin_id, base, count) - base
    for step in range(count):
        uid = base + (start + step) % count
        if uid not in taken and not _known_to_passwd(uid):
            return uid
    return None
