"""The kernel's own word on what it refused: audit records, read by the
supervisor (root) from the audit netlink socket's read-only multicast group.

Two kinds matter (docs/confinement.md, "Refusals"):

  * type 1326 (SECCOMP): one per call the plugin's seccomp filter refused
    (the filter carries SECCOMP_FILTER_FLAG_LOG); fields pid, uid, syscall,
    code (the action and errno returned). The kernel writes these whether or
    not audit is enabled.
  * type 1423 (LANDLOCK_ACCESS): one per access a Landlock domain with
    logging on denied (`blockers=fs.read_file path=...`), with the domain id;
    type 1424 (LANDLOCK_DOMAIN) says which pid/uid created a domain
    (`status=allocated`, with its first denial) and, when it ends, how many
    denials it had in all (`status=deallocated denials=N`), lost or not. These
    need Linux 6.15+ (Landlock ABI 7) AND audit enabled (`enable()`); the
    syscall record (1300) of the same event gives the pid and uid.

Records are lost when the kernel's backlog is full (the `lost` counter of
`status()`), when this socket's buffer overflows (ENOBUFS; the number is
unknown) or when the reader is over its budget (it reads at most BUDGET
records per TICK, so a flood costs the supervisor a bounded share of a core,
and the rest overflow). Every loss is counted.

Fields are parsed from the left and the first occurrence wins; the kernel
quotes or hex-encodes what a process controls (comm, exe, path), so a process
name cannot forge a field.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import re
import socket
import struct
from dataclasses import dataclass
from typing import Callable

log = logging.getLogger("precinct.confine.audit")

NETLINK_AUDIT = 9
AUDIT_NLGRP_READLOG = 1
AUDIT_GET, AUDIT_SET = 1000, 1001
AUDIT_STATUS_ENABLED = 0x1
NLM_F_REQUEST, NLM_F_ACK = 0x1, 0x4
NLMSG_ERROR = 2

SYSCALL, EOE = 1300, 1320
SECCOMP = 1326
LANDLOCK_ACCESS, LANDLOCK_DOMAIN = 1423, 1424
WANTED = frozenset((SYSCALL, SECCOMP, LANDLOCK_ACCESS, LANDLOCK_DOMAIN))

BUDGET = 500          # records handled per TICK at most
TICK = 0.1
RCVBUF = 1 << 20

_HEAD = struct.Struct("=IHHII")
_STATUS = struct.Struct("=10I")   # mask enabled failure pid rate_limit backlog_limit lost backlog version wait
_FIELD = re.compile(r'([a-z_0-9]+)=("[^"]*"|\S*)')
_SERIAL = re.compile(r"audit\((\d+)\.(\d+):(\d+)\):")


@dataclass
class Record:
    type: int
    serial: int
    fields: dict[str, str]

    def int(self, key: str, default: int = -1) -> int:
        try:
            return int(self.fields.get(key, ""), 0 if self.fields.get(key, "").startswith("0x") else 10)
        except ValueError:
            return default

    def text(self, key: str) -> str:
        """A field the kernel may have quoted ("...") or hex-encoded (untrusted text)."""
        value = self.fields.get(key, "")
        if value.startswith('"') and value.endswith('"') and len(value) >= 2:
            return value[1:-1]
        if value and re.fullmatch(r"[0-9A-F]+", value) and len(value) % 2 == 0:
            with contextlib.suppress(ValueError):
                return bytes.fromhex(value).decode(errors="replace")
        return value


def parse(type_: int, text: str) -> Record | None:
    """One record's text (`audit(1796402524.904:4): domain=... blockers=...`)."""
    head = _SERIAL.match(text)
    if head is None:
        return None
    fields: dict[str, str] = {}
    for key, value in _FIELD.findall(text[head.end():]):
        fields.setdefault(key, value)
    return Record(type_, int(head.group(3)), fields)


def _request(kind: int, payload: bytes = b"") -> bytes:
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_AUDIT) as s:
        s.settimeout(5)
        s.bind((0, 0))
        s.send(_HEAD.pack(_HEAD.size + len(payload), kind, NLM_F_REQUEST | (NLM_F_ACK if payload else 0), 1, 0)
               + payload)
        while True:
            data = s.recv(65536)
            length, got, _flags, _seq, _pid = _HEAD.unpack_from(data)
            body = data[_HEAD.size:length]
            if got == NLMSG_ERROR:
                code = struct.unpack_from("=i", body)[0]
                if code:
                    raise OSError(-code, f"audit netlink: {errno.errorcode.get(-code, code)}")
                if payload:
                    return b""
                continue
            if got == kind:
                return body


def status() -> dict[str, int]:
    """The kernel's audit state: enabled (0 off, 1 on, 2 locked on), lost
    (records dropped host-wide since boot), backlog and its limit."""
    values = _STATUS.unpack_from(_request(AUDIT_GET).ljust(_STATUS.size, b"\0"))
    return {"enabled": values[1], "lost": values[6], "backlog": values[7], "backlog_limit": values[5]}


def enable() -> None:
    """Turn kernel audit on (what `auditctl -e 1` does). Landlock only writes
    its records while audit is on. Never turned off again by precinct: another
    program on the host may rely on it."""
    _request(AUDIT_SET, _STATUS.pack(AUDIT_STATUS_ENABLED, 1, 0, 0, 0, 0, 0, 0, 0, 0))


class AuditReader:
    """Reads the multicast group and hands every wanted record to `on_record`."""

    def __init__(self, on_record: Callable[[Record], None]) -> None:
        self.on_record = on_record
        self.overflows = 0          # times the socket buffer overflowed (records lost, number unknown)
        self.over_budget = 0        # ticks in which the reader left records for the next tick
        self.sock: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._resume: asyncio.TimerHandle | None = None

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_AUDIT)
        try:
            with contextlib.suppress(OSError):
                s.setsockopt(socket.SOL_SOCKET, 33, RCVBUF)          # SO_RCVBUFFORCE (root)
            s.bind((0, 1 << (AUDIT_NLGRP_READLOG - 1)))
            s.setblocking(False)
        except OSError:
            s.close()
            raise
        self.sock = s
        self._loop.add_reader(s.fileno(), self._readable)

    def close(self) -> None:
        if self._resume is not None:
            self._resume.cancel()
        if self.sock is not None and self._loop is not None:
            with contextlib.suppress(Exception):
                self._loop.remove_reader(self.sock.fileno())
            self.sock.close()
            self.sock = None

    def _readable(self) -> None:
        if self.sock is None:
            return
        for _ in range(BUDGET):
            try:
                data = self.sock.recv(65536)
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:
                    self.overflows += 1
                    continue
                log.warning("audit socket: %s", exc)
                return
            self.feed(data)
        # Over budget: stop reading for a tick; what piles up meanwhile overflows and is counted.
        self.over_budget += 1
        self._loop.remove_reader(self.sock.fileno())
        self._resume = self._loop.call_later(TICK, self._continue)

    def _continue(self) -> None:
        self._resume = None
        if self.sock is not None:
            self._loop.add_reader(self.sock.fileno(), self._readable)

    def feed(self, data: bytes) -> None:
        """One datagram (one netlink message with one record)."""
        if len(data) < _HEAD.size:
            return
        length, kind, _flags, _seq, _pid = _HEAD.unpack_from(data)
        if kind not in WANTED:
            return
        record = parse(kind, data[_HEAD.size:length].decode("utf-8", errors="replace").rstrip("\0"))
        if record is not None:
            try:
                self.on_record(record)
            except Exception:  # noqa: BLE001 - one bad record must not stop the reader
                log.exception("audit record %s not handled", record)
