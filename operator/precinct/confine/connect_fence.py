"""Where a handed-in NATS socket may connect: one address, one port, enforced
by the kernel for the socket's whole life, whoever holds it.

The NATS sockets the monitor hands into a sandbox (broker.py) belong to the
host's network namespace, and a TCP socket can be disconnected
(`connect(AF_UNSPEC)`) and connected again. Landlock matches ports only, so
it would let such a socket reach any address on the NATS port. This fence
matches both: a cgroup eBPF program of type CGROUP_SOCK_ADDR attached at
INET4_CONNECT to a cgroup-v2 directory of its own lets a connect() through
only to the NATS server's address and port, and one attached at INET4_BIND
refuses every bind(). The kernel runs these programs for every socket
*created by a process in that cgroup*, on every connect() or bind() of that
socket, whichever process makes the call, for as long as the socket lives
(the cgroup is recorded in the socket when it is made). The monitor joins
the cgroup before it makes any socket; the plugin, in other cgroups and
without CAP_SYS_ADMIN or bpf() (seccomp), can neither change the socket's
cgroup nor detach the programs. A refused call returns EPERM. TCP Fast Open
connects pass through the same check (and are refused by seccomp first).

Eight instructions, assembled here (no compiler, no libbpf). The programs
stay attached while the cgroup directory exists; `remove()` deletes it.

On a v1-only host (no cgroup2 mount) or a kernel without cgroup BPF the
fence is unavailable and the supervisor relays NATS traffic instead.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import platform
import socket
import struct
import sys
from pathlib import Path

from .cgroups import _parse_mountinfo, _parse_proc_cgroup, _relative

BPF_PROG_LOAD, BPF_PROG_ATTACH = 5, 8
PROG_TYPE_CGROUP_SOCK_ADDR = 18
ATTACH_INET4_BIND, ATTACH_INET4_CONNECT = 8, 10
ATTACH_INET6_BIND, ATTACH_INET6_CONNECT = 9, 11
F_ALLOW_OVERRIDE = 1              # a supervisor restarted on the same state dir replaces its programs
ATTR_SIZE = 128
NR_BPF = {"x86_64": 321, "aarch64": 280}

# struct bpf_sock_addr: the fields read
OFF_USER_IP4, OFF_USER_PORT = 4, 24

_libc = ctypes.CDLL(None, use_errno=True)


class FenceError(OSError):
    pass


def _bpf(cmd: int, attr: bytes) -> int:
    nr = NR_BPF.get(platform.machine())
    if nr is None:
        raise FenceError(errno.ENOSYS, f"no bpf() number for {platform.machine()}")
    buf = ctypes.create_string_buffer(attr, ATTR_SIZE)
    fd = _libc.syscall(ctypes.c_long(nr), ctypes.c_int(cmd), buf, ctypes.c_uint(ATTR_SIZE))
    if fd < 0:
        err = ctypes.get_errno()
        raise FenceError(err, f"bpf({cmd}): {os.strerror(err)}")
    return fd


def _insn(code: int, dst: int = 0, src: int = 0, off: int = 0, imm: int = 0) -> bytes:
    return struct.pack("<BBhi", code, (src << 4) | dst, off, imm)


def _s32(value: int) -> int:
    return value - 2**32 if value >= 2**31 else value


LDX_W, JNE_K, MOV64_K, EXIT = 0x61, 0x55, 0xB7, 0x95


def connect_program(host: str, port: int) -> bytes:
    """Allow connect() to host:port only (r1 = struct bpf_sock_addr *; 1 allows, 0 refuses).
    Both fields are in network order as the program reads them."""
    ip = _s32(int.from_bytes(socket.inet_aton(host), sys.byteorder))
    be_port = _s32(int.from_bytes(port.to_bytes(2, "big") + b"\0\0", sys.byteorder))
    return b"".join([
        _insn(LDX_W, 2, 1, OFF_USER_IP4),
        _insn(JNE_K, 2, 0, 4, ip),            # -> refuse
        _insn(LDX_W, 2, 1, OFF_USER_PORT),
        _insn(JNE_K, 2, 0, 2, be_port),       # -> refuse
        _insn(MOV64_K, 0, 0, 0, 1),
        _insn(EXIT),
        _insn(MOV64_K, 0, 0, 0, 0),           # refuse: EPERM
        _insn(EXIT),
    ])


def refuse_program() -> bytes:
    return _insn(MOV64_K, 0, 0, 0, 0) + _insn(EXIT)


def _load(program: bytes, attach_type: int) -> int:
    insns = ctypes.create_string_buffer(program, len(program))
    license_ = ctypes.create_string_buffer(b"GPL")
    log = ctypes.create_string_buffer(4096)
    attr = struct.pack("<IIQQIIQII16sII", PROG_TYPE_CGROUP_SOCK_ADDR, len(program) // 8,
                       ctypes.addressof(insns), ctypes.addressof(license_), 1, len(log), ctypes.addressof(log),
                       0, 0, b"precinct_fence", 0, attach_type)
    try:
        return _bpf(BPF_PROG_LOAD, attr)
    except FenceError as exc:
        detail = log.value.decode(errors="replace").strip().splitlines()
        raise FenceError(exc.errno, f"{exc.strerror}{': ' + detail[-1] if detail else ''}") from None


def unified_mount(mountinfo: str | None = None, proc_cgroup: str | None = None) -> tuple[Path, str] | None:
    """(mountpoint, our cgroup relative to it) of the cgroup-v2 hierarchy, if mounted."""
    mountinfo = mountinfo if mountinfo is not None else Path("/proc/self/mountinfo").read_text()
    mine = _parse_proc_cgroup(proc_cgroup if proc_cgroup is not None else Path("/proc/self/cgroup").read_text())
    for root, mountpoint, fstype, _opts in _parse_mountinfo(mountinfo):
        if fstype == "cgroup2" and "" in mine:
            return Path(mountpoint), _relative(mine[""], root)
    return None


class ConnectFence:
    """A cgroup-v2 directory whose sockets may connect to `host:port` only and bind nothing."""

    def __init__(self, directory: Path, rel: str, host: str, port: int) -> None:
        self.directory, self.host, self.port = directory, host, port
        self.rel = rel                # as /proc/<pid>/cgroup shows it on the "0::" line

    @property
    def procs(self) -> Path:
        return self.directory / "cgroup.procs"

    @classmethod
    def create(cls, tag: str, host: str, port: int) -> "ConnectFence":
        try:
            socket.inet_aton(host)
        except OSError:
            raise FenceError(errno.EINVAL, f"the fence takes an IPv4 address, not {host!r}") from None
        found = unified_mount()
        if found is None:
            raise FenceError(errno.ENOENT, "no cgroup v2 hierarchy is mounted")
        mount, own = found
        rel = "/".join(["", *[part for part in own.split("/") if part], f"{tag}-nats"])
        fence = cls(mount / rel.lstrip("/"), rel, host, port)
        fence.directory.mkdir(exist_ok=True)
        dir_fd = os.open(fence.directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            for program, attach_type in ((connect_program(host, port), ATTACH_INET4_CONNECT),
                                         (refuse_program(), ATTACH_INET4_BIND),
                                         (refuse_program(), ATTACH_INET6_CONNECT),
                                         (refuse_program(), ATTACH_INET6_BIND)):
                prog_fd = _load(program, attach_type)
                try:
                    _bpf(BPF_PROG_ATTACH, struct.pack("<IIIII", dir_fd, prog_fd, attach_type, F_ALLOW_OVERRIDE, 0))
                finally:
                    os.close(prog_fd)     # the attachment holds the program now
        except FenceError:
            fence.remove()
            raise
        finally:
            os.close(dir_fd)
        return fence

    def remove(self) -> None:
        """Delete the directory (and so detach the programs); a no-op while a monitor is still in it."""
        with contextlib.suppress(OSError):
            self.directory.rmdir()
