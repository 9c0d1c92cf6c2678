"""A small ctypes binding for Landlock (no PyPI package: `landlock` is a
pre-release, `py-landlock` 0.1.1).

What it is used for (docs/confinement.md): the plugin may read and execute
its code, the runner environment and the Python runtime, read or write its
data dir as granted, and nothing else; it may connect over TCP only to the
relay ports and bind none; it may signal only processes inside its own
Landlock domain and reach no abstract unix socket outside it.

Landlock does not restrict: connecting to a *pathname* unix socket (DAC and
the 0700 state dir stop that), UDP (seccomp stops that), or the address of a
TCP connection (only its port: the network namespace stops that).

Every right this kernel's ABI knows is "handled" (denied unless a rule grants
it), so a newer kernel never silently widens the sandbox; rights a newer ABI
adds are simply not handled by an older kernel, and `abi()` says which.

Refusals are reported from ABI 7 on (Linux 6.15): `restrict_self` asks the
kernel to write an audit record for every access the ruleset denies after the
runner's exec (not the init's own steps before it), which the supervisor
reads (confine/audit.py). Older kernels enforce the same rules silently.
"""

from __future__ import annotations

import ctypes
import os
import platform

SYS_CREATE_RULESET = 444   # the same on every architecture (unified numbering)
SYS_ADD_RULE = 445
SYS_RESTRICT_SELF = 446

CREATE_RULESET_VERSION = 1 << 0
RULE_PATH_BENEATH = 1
RULE_NET_PORT = 2

# Filesystem rights, and the ABI that introduced each.
EXECUTE = 1 << 0
WRITE_FILE = 1 << 1
READ_FILE = 1 << 2
READ_DIR = 1 << 3
REMOVE_DIR = 1 << 4
REMOVE_FILE = 1 << 5
MAKE_CHAR = 1 << 6
MAKE_DIR = 1 << 7
MAKE_REG = 1 << 8
MAKE_SOCK = 1 << 9
MAKE_FIFO = 1 << 10
MAKE_BLOCK = 1 << 11
MAKE_SYM = 1 << 12
REFER = 1 << 13        # ABI 2
TRUNCATE = 1 << 14     # ABI 3
IOCTL_DEV = 1 << 15    # ABI 5

FS_BY_ABI = {1: (1 << 13) - 1, 2: (1 << 14) - 1, 3: (1 << 15) - 1, 4: (1 << 15) - 1, 5: (1 << 16) - 1}

NET_BIND_TCP = 1 << 0  # ABI 4
NET_CONNECT_TCP = 1 << 1

SCOPE_ABSTRACT_UNIX_SOCKET = 1 << 0  # ABI 6
SCOPE_SIGNAL = 1 << 1

# landlock_restrict_self flags (ABI 7): audit records for denials.
LOG_SAME_EXEC_OFF = 1 << 0   # nothing before the next exec (the trusted init's own steps)
LOG_NEW_EXEC_ON = 1 << 1     # everything after it (the runner and what it starts)
AUDIT_ABI = 7

# Rights that only make sense on files (a rule on a file may carry only these).
FILE_RIGHTS = EXECUTE | WRITE_FILE | READ_FILE | TRUNCATE | IOCTL_DEV

READ = READ_FILE | READ_DIR
READ_EXEC = READ | EXECUTE
WRITE_TREE = (WRITE_FILE | REMOVE_DIR | REMOVE_FILE | MAKE_DIR | MAKE_REG | MAKE_SYM | TRUNCATE | REFER)


class LandlockError(OSError):
    pass


class _RulesetAttr(ctypes.Structure):
    _fields_ = [("handled_access_fs", ctypes.c_uint64),
                ("handled_access_net", ctypes.c_uint64),
                ("scoped", ctypes.c_uint64)]


class _PathBeneathAttr(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


class _NetPortAttr(ctypes.Structure):
    _fields_ = [("allowed_access", ctypes.c_uint64), ("port", ctypes.c_uint64)]


_libc = ctypes.CDLL(None, use_errno=True)
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long


def _check(result: int, what: str) -> int:
    if result < 0:
        err = ctypes.get_errno()
        raise LandlockError(err, f"{what}: {os.strerror(err)}")
    return result


def abi() -> int:
    """The Landlock ABI version of this kernel; 0 when Landlock is unavailable
    (not built in, or not in the `lsm=` boot list)."""
    if platform.system() != "Linux":
        return 0
    result = _syscall(ctypes.c_long(SYS_CREATE_RULESET), None, ctypes.c_size_t(0),
                      ctypes.c_uint32(CREATE_RULESET_VERSION))
    return max(0, int(result))


def fs_rights(version: int) -> int:
    return FS_BY_ABI.get(version, FS_BY_ABI[5]) if version > 0 else 0


class Ruleset:
    """Build a ruleset for this kernel's ABI, add rules, restrict self."""

    def __init__(self, version: int | None = None, *, net: bool = True, scope: bool = True) -> None:
        self.abi = abi() if version is None else version
        if self.abi < 1:
            raise LandlockError(0, "Landlock is not available on this kernel")
        self.handled_fs = fs_rights(self.abi)
        self.handled_net = (NET_BIND_TCP | NET_CONNECT_TCP) if (net and self.abi >= 4) else 0
        self.scoped = (SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL) if (scope and self.abi >= 6) else 0
        attr = _RulesetAttr(self.handled_fs, self.handled_net, self.scoped)
        size = ctypes.sizeof(_RulesetAttr) if self.abi >= 6 else (16 if self.abi >= 4 else 8)
        self.fd = _check(_syscall(ctypes.c_long(SYS_CREATE_RULESET), ctypes.byref(attr),
                                  ctypes.c_size_t(size), ctypes.c_uint32(0)), "landlock_create_ruleset")

    def allow_path(self, path: str, rights: int) -> bool:
        """Grant `rights` beneath `path` (or on the file). False if it does not exist."""
        try:
            fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
        except FileNotFoundError:
            return False
        try:
            if not os.path.isdir(path):
                rights &= FILE_RIGHTS
            rights &= self.handled_fs
            if not rights:
                return True
            attr = _PathBeneathAttr(rights, fd)
            _check(_syscall(ctypes.c_long(SYS_ADD_RULE), ctypes.c_int(self.fd), ctypes.c_int(RULE_PATH_BENEATH),
                            ctypes.byref(attr), ctypes.c_uint32(0)), f"landlock_add_rule({path})")
        finally:
            os.close(fd)
        return True

    def allow_connect(self, port: int) -> None:
        if not self.handled_net:
            return
        attr = _NetPortAttr(NET_CONNECT_TCP, port)
        _check(_syscall(ctypes.c_long(SYS_ADD_RULE), ctypes.c_int(self.fd), ctypes.c_int(RULE_NET_PORT),
                        ctypes.byref(attr), ctypes.c_uint32(0)), f"landlock_add_rule(port {port})")

    def restrict_self(self, log_this_exec: bool = False) -> None:
        """Needs no_new_privs (or CAP_SYS_ADMIN); irrevocable for this process
        and everything it starts. From ABI 7, denials after the next exec are
        audited (see the module docstring); with `log_this_exec`, also those
        of this process before any exec (the runner forked from the template
        runs here, without an exec)."""
        flags = ((0 if log_this_exec else LOG_SAME_EXEC_OFF) | LOG_NEW_EXEC_ON) if self.abi >= AUDIT_ABI else 0
        try:
            _check(_syscall(ctypes.c_long(SYS_RESTRICT_SELF), ctypes.c_int(self.fd), ctypes.c_uint32(flags)),
                   "landlock_restrict_self")
        finally:
            os.close(self.fd)

    def describe(self) -> str:
        parts = [f"abi-{self.abi}"]
        if not self.handled_net:
            parts.append("no tcp port rules")
        if not self.scoped:
            parts.append("no signal scoping")
        return ", ".join(parts)
