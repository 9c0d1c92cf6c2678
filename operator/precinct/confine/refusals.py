"""What the sandbox refused each plugin, counted, and which refusals are strikes.

Three mechanisms report (docs/confinement.md, "Refusals"):

  seccomp   the kernel's audit record for each refused syscall (audit.py)
  landlock  the kernel's audit record for each denied access (ABI 7+, audit on)
  egress    the egress proxy's own 403s (egress.py)

Every refusal is counted. Not every refusal is an offence: libraries probe
files they may not read (locale and config files, /etc/resolv.conf), ask
netlink for interface addresses (getaddrinfo's AI_ADDRCONFIG) or try a UDP
DNS query, and a chat user can paste a link to a private address that the
proxy refuses. So the policy has two classes:

  at once   a strike for each refusal: seccomp refusals of what no chat plugin
            needs (io_uring, ptrace and process_vm_*, bpf, perf, keyrings,
            mounts, new namespaces, modules, kexec, foreign syscall ABIs ...)
            and Landlock scope refusals (signalling or reaching an abstract
            socket outside the sandbox);
  budget    a strike only when more than `budget[mechanism]` such refusals
            happen within `window` seconds: Landlock file and TCP-port
            refusals, egress proxy 403s, and seccomp refusals of socket().
            The kernel's seccomp record names the syscall and the action, not
            its arguments or errno, so a UDP or netlink probe (what getaddrinfo
            and DNS lookups do) cannot be told from a raw or packet socket
            attempt; all socket() refusals share the seccomp budget. (A raw or
            packet socket also needs CAP_NET_RAW, which no plugin has.)

A strike goes to the warn -> restart -> suspend ladder (runtime/violations.py)
with kind = the mechanism. Attribution never comes from the plugin: the
supervisor maps the kernel-reported pid to a plugin by its cgroup, or, when
the process is already gone, the kernel-reported uid (one uid per plugin).
"""

from __future__ import annotations

import collections
import datetime
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from .seccomp import SYSCALLS

SECCOMP, LANDLOCK, EGRESS = "seccomp", "landlock", "egress"
MECHANISMS = (SECCOMP, LANDLOCK, EGRESS)

RET_ACTION_MASK = 0xFFFF0000
RET_ERRNO = 0x00050000

# socket() refusals are what libraries make in normal use (budget class);
# every other seccomp refusal is a strike at once.
SECCOMP_PROBES = ("socket",)
LANDLOCK_AT_ONCE = ("scope.",)          # scope.signal, scope.abstract_unix_socket

STRIKE_EVERY = 1.0        # at most one strike event per plugin and mechanism per second (the ladder's
                          # cooldown merges them anyway; a flood then costs one ladder call a second)
MAX_KINDS = 32            # distinct `what` keys kept per plugin (the rest count as "other")
RECENT = 10


@dataclass
class RefusalPolicy:
    window: float = 60.0
    budget: dict[str, int] = field(default_factory=lambda: {SECCOMP: 20, LANDLOCK: 200, EGRESS: 60})

    def describe(self) -> dict[str, Any]:
        return {"window_seconds": self.window, "budget": dict(self.budget),
                "at_once": "seccomp refusals of any syscall but socket(); Landlock scope refusals"}


def _syscall_names(arch: str) -> dict[int, str]:
    return {nr: name for name, nr in SYSCALLS.get(arch, {}).items() if nr is not None}


_NAMES = {arch: _syscall_names(arch) for arch in SYSCALLS}
_AUDIT_ARCH = {"c000003e": "x86_64", "c00000b7": "aarch64"}


def classify_seccomp(syscall: int, code: int, arch_hex: str) -> tuple[str, bool]:
    """(what, at_once) for one seccomp record: `code` is the action the filter
    took (the kernel logs the action without its errno), `arch_hex` the
    record's arch field."""
    if (code & RET_ACTION_MASK) != RET_ERRNO:
        return f"killed (syscall {syscall}, arch {arch_hex})", True    # a foreign ABI: the process is killed
    name = _NAMES.get(_AUDIT_ARCH.get(arch_hex.lower(), ""), {}).get(syscall, f"syscall {syscall}")
    if name == "clone":
        return "clone-new-namespace", True
    return name, name not in SECCOMP_PROBES


def classify_landlock(blockers: str) -> tuple[str, bool]:
    """(what, at_once) for one Landlock record's `blockers` (fs.read_file,
    net.connect_tcp, scope.signal, ...)."""
    what = blockers or "unknown"
    return what, what.startswith(LANDLOCK_AT_ONCE)


@dataclass
class PluginRefusals:
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(MECHANISMS, 0))
    kinds: dict[str, int] = field(default_factory=dict)                # "mechanism:what" -> n
    recent: collections.deque = field(default_factory=lambda: collections.deque(maxlen=RECENT))
    window: dict[str, collections.deque] = field(default_factory=dict)   # mechanism -> budget-class times
    strikes: int = 0
    last_event: dict[str, float] = field(default_factory=dict)        # mechanism -> last strike event
    recovered: int = 0          # Landlock denials whose records were lost, known from the domain's end

    def to_dict(self) -> dict[str, Any]:
        return {"counts": dict(self.counts), "total": sum(self.counts.values()), "kinds": dict(self.kinds),
                "strikes": self.strikes, "recovered_from_domain_totals": self.recovered,
                "recent": [{"age_seconds": round(time.monotonic() - t, 1), "mechanism": m, "what": w, "detail": d}
                           for t, m, w, d in self.recent]}


class Ledger:
    """Counts per plugin; `on_strike(plugin_id, event)` feeds the ladder."""

    def __init__(self, policy: RefusalPolicy | None = None,
                 on_strike: Callable[[str, dict], None] | None = None) -> None:
        self.policy = policy or RefusalPolicy()
        self.on_strike = on_strike
        self.plugins: dict[str, PluginRefusals] = {}

    def add(self, plugin_id: str, mechanism: str, what: str, detail: str = "", *, at_once: bool,
            count: int = 1, now: float | None = None) -> dict | None:
        """Count `count` refusals; return the strike event if they make one."""
        now = time.monotonic() if now is None else now
        entry = self.plugins.setdefault(plugin_id, PluginRefusals())
        entry.counts[mechanism] = entry.counts.get(mechanism, 0) + count
        key = f"{mechanism}:{what}"
        if key not in entry.kinds and len(entry.kinds) >= MAX_KINDS:
            key = f"{mechanism}:other"
        entry.kinds[key] = entry.kinds.get(key, 0) + count
        entry.recent.append((now, mechanism, what, detail[:200]))
        if at_once:
            if now - entry.last_event.get(mechanism, -STRIKE_EVERY) < STRIKE_EVERY:
                return None
            event = {"kind": mechanism, "subject": f"{what} {detail}".strip()[:256], "count": count,
                     "source": "kernel audit" if mechanism != EGRESS else "egress proxy"}
        else:
            budget = self.policy.budget.get(mechanism, 0)
            times = entry.window.setdefault(mechanism, collections.deque())
            times.extend([now] * min(count, budget + 1))
            while times and now - times[0] >= self.policy.window:
                times.popleft()
            while len(times) > budget + 1:
                times.popleft()
            if len(times) <= budget:
                return None
            times.clear()
            event = {"kind": mechanism, "count": 1,
                     "subject": f"more than {budget} {mechanism} refusals within {self.policy.window:g} s "
                                f"(last: {what} {detail})"[:256],
                     "source": "kernel audit" if mechanism != EGRESS else "egress proxy"}
        entry.last_event[mechanism] = now
        event["last"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds")
        entry.strikes += 1
        if self.on_strike is not None:
            self.on_strike(plugin_id, event)
        return event

    def summary(self, plugin_id: str) -> dict[str, Any]:
        entry = self.plugins.get(plugin_id)
        return entry.to_dict() if entry else PluginRefusals().to_dict()

    def forget(self, plugin_id: str) -> None:
        self.plugins.pop(plugin_id, None)


class KernelRecords:
    """Turns audit records (audit.Record) into counted refusals.

    `owner(pid, uid)` names the plugin the kernel-reported pid/uid belongs to,
    or None (another supervisor's plugin, a host process). Landlock records
    name a domain, not a process: the domain's owner comes from the same
    event's LANDLOCK_DOMAIN "allocated" record or its SYSCALL record, and is
    remembered for the domain's later records."""

    PENDING = 256             # unattributed Landlock events kept while their SYSCALL record is due
    DOMAINS = 4096

    def __init__(self, ledger: Ledger, owner: Callable[[int, int], str | None]) -> None:
        from . import audit

        self.audit = audit
        self.ledger = ledger
        self.owner = owner
        self.domains: collections.OrderedDict[str, str | None] = collections.OrderedDict()
        self.seen: dict[str, int] = {}                       # domain -> access records counted
        self.pending: collections.OrderedDict[int, list] = collections.OrderedDict()   # serial -> records

    def __call__(self, record) -> None:
        a = self.audit
        if record.type == a.SECCOMP:
            plugin = self.owner(record.int("pid"), record.int("uid"))
            if plugin is not None:
                what, at_once = classify_seccomp(record.int("syscall"), record.int("code"), record.fields.get("arch", ""))
                self.ledger.add(plugin, SECCOMP, what, f"pid {record.int('pid')}", at_once=at_once)
        elif record.type == a.LANDLOCK_ACCESS:
            domain = record.fields.get("domain", "")
            if domain in self.domains:
                self._count(domain, record)
            else:
                self.pending.setdefault(record.serial, []).append(record)
                while len(self.pending) > self.PENDING:
                    self.pending.popitem(last=False)
        elif record.type == a.LANDLOCK_DOMAIN:
            domain = record.fields.get("domain", "")
            state = record.fields.get("status", "")
            if state == "allocated":
                self._learn(domain, self.owner(record.int("pid"), record.int("uid")))
                self._flush(record.serial)
            elif state == "deallocated":
                self._ended(domain, record.int("denials", 0))
        elif record.type == a.SYSCALL and record.serial in self.pending:
            plugin = self.owner(record.int("pid"), record.int("uid"))
            for access in self.pending.get(record.serial, []):
                self._learn(access.fields.get("domain", ""), plugin)
            self._flush(record.serial)

    def _learn(self, domain: str, plugin: str | None) -> None:
        if domain and domain not in self.domains:
            self.domains[domain] = plugin
            while len(self.domains) > self.DOMAINS:
                old, _ = self.domains.popitem(last=False)
                self.seen.pop(old, None)

    def _flush(self, serial: int) -> None:
        for access in self.pending.pop(serial, []):
            if access.fields.get("domain", "") in self.domains:
                self._count(access.fields["domain"], access)

    def _count(self, domain: str, record) -> None:
        plugin = self.domains.get(domain)
        if plugin is None:
            return
        self.seen[domain] = self.seen.get(domain, 0) + 1
        what, at_once = classify_landlock(record.fields.get("blockers", ""))
        detail = " ".join(f"{k}={record.text(k)}" for k in ("path", "daddr", "dest", "opid") if k in record.fields)
        self.ledger.add(plugin, LANDLOCK, what, detail, at_once=at_once)

    def _ended(self, domain: str, denials: int) -> None:
        """The kernel's total for the domain: what we did not see was lost."""
        plugin = self.domains.pop(domain, None)
        seen = self.seen.pop(domain, 0)
        if plugin is not None and denials > seen:
            self.ledger.plugins.setdefault(plugin, PluginRefusals()).recovered += denials - seen
            self.ledger.add(plugin, LANDLOCK, "records lost", f"{denials - seen} denials known only from the "
                            "domain's total", at_once=False, count=denials - seen)
