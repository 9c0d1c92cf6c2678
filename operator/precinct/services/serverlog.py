"""The NATS server's log: the only trusted record of permission violations.

NATS publishes no event when it refuses a publish or a subscription; it
writes one line to its log (docs/nats.md, "What NATS cannot do"). Checked
on 2.15.1:

    [pid] 2026/11/27 22:45:55.375575 [ERR] 127.0.0.1:41148 - cid:7 - "v2.16.0:python3:<client name>" - "<account key>/<account name>/jwt:<user key>" - Publish Violation - Subject "rosey.chat.lobby.send"
    ... - "<account key>/<account name>/jwt:<user key>" - Subscription Violation - Subject "rosey.>", SID 1
    ... - Subscription Violation - Subject "rosey.x.>", Queue: "qq", SID 2
    ... - "<account key>/<account name>/jwt:<user key>" - maximum payload exceeded: 614400 vs 524288

The client chooses its connection name and the server quotes it, escaping
`"` and newlines with a backslash. So the line is parsed from the right:
every field we read is a quoted string the server wrote after the client's
name, and an escaped quote (`\\"`) can never end a field. The account is
taken from its public key (the server's word), never from the name.
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

log = logging.getLogger("precinct.serverlog")

_Q = r'(?:[^"\\]|\\.)*'   # the inside of a server-quoted string
VIOLATION = re.compile(
    r'"(?P<account>A[A-Z2-7]{55})/(?P<name>' + _Q + r')/jwt:(?P<user>U[A-Z2-7]{55})"'
    r' - (?P<op>Publish|Subscription) Violation - Subject "(?P<subject>' + _Q + r')"'
    r'(?:, Queue: "' + _Q + r'")?(?:, SID [^\s"]+)?\s*$'
)
# A publish over the account's `max_payload` (the server drops the connection):
#   ... - "<account key>/<account name>/jwt:<user key>" - maximum payload exceeded: 614400 vs 524288
MAX_PAYLOAD = re.compile(
    r'"(?P<account>A[A-Z2-7]{55})/(?P<name>' + _Q + r')/jwt:(?P<user>U[A-Z2-7]{55})"'
    r' - maximum payload exceeded: (?P<size>\d+) vs (?P<max>\d+)\s*$'
)
TIMESTAMP = re.compile(r"^\[\d+\] (?P<ts>\d{4}/\d\d/\d\d \d\d:\d\d:\d\d(?:\.\d+)?) ")
SERVER_START = b"] Starting nats-server"

MAX_LINE = 64 * 1024          # longer lines are cut (a client name can be long)
MAX_READ = 4 * 2**20          # bytes read per poll, so a flood cannot balloon memory
START_SCAN = 8 * 2**20        # how far back to look for the current server's start


@dataclass(frozen=True)
class Violation:
    account: str          # account public key
    operation: str        # "publish" | "subscribe"
    subject: str
    at: float             # epoch seconds, from the log line (else when it was read)


def _unescape(text: str) -> str:
    return re.sub(r"\\(.)", lambda m: {"n": "\n", "t": "\t"}.get(m.group(1), m.group(1)), text)


def parse_violation(line: str, now: float | None = None) -> Violation | None:
    """A Publish/Subscription Violation line -> Violation; anything else -> None."""
    if "Violation - Subject" in line:
        match = VIOLATION.search(line.rstrip("\r\n"))
    elif "maximum payload exceeded" in line:
        match = MAX_PAYLOAD.search(line.rstrip("\r\n"))
    else:
        return None
    if not match:
        return None
    at = now
    stamp = TIMESTAMP.match(line)
    if stamp:
        try:
            # The server logs local time (logtime: true, no UTC option set).
            fmt = "%Y/%m/%d %H:%M:%S.%f" if "." in stamp.group("ts") else "%Y/%m/%d %H:%M:%S"
            at = datetime.strptime(stamp.group("ts"), fmt).timestamp()
        except ValueError:
            pass
    if at is None:
        at = datetime.now(timezone.utc).timestamp()
    if "size" in match.groupdict():
        # No subject is logged for an oversized message: name the sizes instead.
        return Violation(account=match.group("account"), operation="publish",
                         subject=f"(payload {match.group('size')} bytes > max {match.group('max')})", at=at)
    return Violation(
        account=match.group("account"),
        operation="publish" if match.group("op") == "Publish" else "subscribe",
        subject=_unescape(match.group("subject")),
        at=at,
    )


class LogTail:
    """Follows a file that the server appends to and rotates (renames, then
    starts a new file with the same name).

    Position is remembered in `offset_file` ({"inode", "offset"}) so a
    restarted gateway resumes where it stopped instead of losing or
    re-reading lines. Without a saved position it starts at the current
    server's "Starting nats-server" line, so violations from before the
    gateway came up still count.
    """

    def __init__(self, path: Path, offset_file: Path | None = None) -> None:
        self.path = Path(path)
        self.offset_file = Path(offset_file) if offset_file else None
        self._fh = None
        self._inode: int | None = None
        self._partial = b""
        self._saved: tuple[int | None, int] | None = None

    # -- opening ----------------------------------------------------------------

    def _open(self, *, resume: bool) -> bool:
        try:
            fh = open(self.path, "rb")
        except FileNotFoundError:
            return False
        st = os.fstat(fh.fileno())
        start = 0
        if resume:
            saved = self._load_offset()
            if saved and saved[0] == st.st_ino and saved[1] <= st.st_size:
                start = saved[1]
            elif saved and saved[0] != st.st_ino:
                start = 0          # rotated while we were away: everything here is new
            else:
                start = self._current_server_start(fh, st.st_size)
        fh.seek(start)
        self._fh, self._inode, self._partial = fh, st.st_ino, b""
        return True

    @staticmethod
    def _current_server_start(fh, size: int) -> int:
        begin = max(0, size - START_SCAN)
        fh.seek(begin)
        data = fh.read(size - begin)
        at = data.rfind(SERVER_START)
        if at < 0:
            return size
        line_start = data.rfind(b"\n", 0, at)
        return begin + line_start + 1

    def _load_offset(self) -> tuple[int, int] | None:
        if not self.offset_file:
            return None
        try:
            data = json.loads(self.offset_file.read_text())
            return int(data["inode"]), int(data["offset"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def save_offset(self) -> None:
        if not self.offset_file or self._fh is None:
            return
        position = (self._inode, self._fh.tell() - len(self._partial))
        if position == self._saved:
            return
        tmp = self.offset_file.with_suffix(".tmp")
        try:
            self.offset_file.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps({"inode": position[0], "offset": position[1]}))
            tmp.replace(self.offset_file)
            self._saved = position
        except OSError as exc:
            log.warning("cannot save the log position to %s: %s", self.offset_file, exc)

    # -- reading ----------------------------------------------------------------

    def read_lines(self) -> list[str]:
        """Complete lines appended since the last call (never blocks)."""
        if self._fh is None and not self._open(resume=True):
            return []
        lines = self._drain()
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return lines
        if st.st_ino != self._inode:
            # Rotated: finish the old file (done above), then follow the new one from its start.
            lines += self._flush_partial()
            self._fh.close()
            self._fh = None
            if self._open(resume=False):
                lines += self._drain()
        elif st.st_size < self._fh.tell():
            # Truncated in place: start over.
            self._fh.seek(0)
            self._partial = b""
            lines += self._drain()
        return lines

    def _drain(self) -> list[str]:
        assert self._fh is not None
        data = self._fh.read(MAX_READ)
        if not data:
            return []
        data = self._partial + data
        parts = data.split(b"\n")
        self._partial = parts.pop()
        if len(self._partial) > MAX_LINE:
            self._partial = self._partial[:MAX_LINE]
        return [p[:MAX_LINE].decode("utf-8", "replace") for p in parts]

    def _flush_partial(self) -> list[str]:
        rest, self._partial = self._partial, b""
        return [rest.decode("utf-8", "replace")] if rest else []

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
