"""A hand-built seccomp BPF filter, installed by the trusted init right
before it execs the runner (no libseccomp, no Python package: the runner's
interpreter is Debian's and has neither).

Denied (EPERM unless noted):
  * io_uring_setup/enter/register: io_uring creates sockets (IORING_OP_SOCKET)
    without the socket() syscall this filter sees;
  * socket() of any family but AF_UNIX, AF_INET and AF_INET6, and for the
    inet families any type but SOCK_STREAM: no UDP, raw, packet or netlink
    sockets (EAFNOSUPPORT / EPERM);
  * listen(), and sendto/sendmsg/sendmmsg with MSG_FASTOPEN: the NATS
    socket handed into the sandbox belongs to the host's network namespace
    (broker.py); disconnected, it must not become a server there, nor be
    connected by a TCP Fast Open send, which skips connect() and so the
    Landlock port rule. A plugin talks to the world over NATS and never
    accepts connections, so listen() is refused for every socket;
  * new namespaces: unshare, setns, and clone with any CLONE_NEW* flag;
    clone3 answers ENOSYS so the C library falls back to clone, whose flags
    this filter can read (clone3 passes them in memory);
  * ptrace and process_vm_readv/writev, pidfd_getfd, kcmp;
  * mounting and the new mount API, chroot, pivot_root;
  * bpf, perf_event_open, userfaultfd, keyctl/add_key/request_key;
  * kernel modules, kexec, reboot, swap, acct, quotactl, syslog, clock and
    hostname changes, open_by_handle_at, iopl/ioperm/modify_ldt (x86).
  * any other syscall ABI (i386 on x86_64, x32): the process is killed.

It does not stop what a namespace, Landlock or the cgroup stops, and it
cannot see syscall arguments held in memory (the address of connect()).

Every refusal is reported: the filter is installed with
SECCOMP_FILTER_FLAG_LOG, so the kernel writes an audit record (type 1326:
pid, uid, syscall, the errno returned) for each call it refuses, which the
supervisor reads (confine/audit.py). `RET_LOG` is not used: it would let the
call through. The record names the syscall and the action, not the errno or
the arguments. The clone3 -> ENOSYS answer is not a refusal (it steers the C
library to clone, which every thread start does), so it lives in a second,
unlogged filter.
"""

from __future__ import annotations

import ctypes
import errno
import platform
import struct

# --- BPF -------------------------------------------------------------------

LD_W_ABS = 0x20
JEQ_K = 0x15
JSET_K = 0x45
JGE_K = 0x35
AND_K = 0x54
RET_K = 0x06

RET_KILL_PROCESS = 0x80000000
RET_ERRNO = 0x00050000
RET_ALLOW = 0x7FFF0000

OFF_NR, OFF_ARCH = 0, 4


def OFF_ARG(i: int) -> int:  # noqa: N802 - the low 32 bits of args[i] (little endian)
    return 16 + 8 * i


AUDIT_ARCH_X86_64 = 0xC000003E
AUDIT_ARCH_AARCH64 = 0xC00000B7
X32_SYSCALL_BIT = 0x40000000

AF_UNIX, AF_INET, AF_INET6 = 1, 2, 10
SOCK_STREAM = 1
SOCK_TYPE_MASK = 0xF
CLONE_NEW_MASK = 0x7E020000   # NEWNS|NEWCGROUP|NEWUTS|NEWIPC|NEWUSER|NEWPID|NEWNET

# Numbers per architecture. None: the syscall does not exist there.
DENIED = (
    "io_uring_setup", "io_uring_enter", "io_uring_register",
    "ptrace", "process_vm_readv", "process_vm_writev", "pidfd_getfd", "kcmp",
    "unshare", "setns",
    "mount", "umount2", "pivot_root", "chroot", "open_tree", "move_mount", "fsopen", "fsconfig",
    "fsmount", "fspick", "mount_setattr",
    "bpf", "perf_event_open", "userfaultfd", "keyctl", "add_key", "request_key",
    "init_module", "finit_module", "delete_module", "kexec_load", "kexec_file_load", "reboot",
    "swapon", "swapoff", "acct", "quotactl", "quotactl_fd", "syslog",
    "settimeofday", "clock_settime", "adjtimex", "clock_adjtime", "sethostname", "setdomainname",
    "open_by_handle_at", "name_to_handle_at", "lookup_dcookie", "fanotify_init", "vhangup",
    "iopl", "ioperm", "modify_ldt", "uselib", "listen",
)
MSG_FASTOPEN = 0x20000000
# The flags argument of each send call, by position (a plain value: seccomp sees it).
SEND_FLAGS_ARG = {"sendto": 3, "sendmsg": 2, "sendmmsg": 3}

SYSCALLS = {
    "x86_64": dict(
        socket=41, clone=56, clone3=435, seccomp=317,
        io_uring_setup=425, io_uring_enter=426, io_uring_register=427,
        ptrace=101, process_vm_readv=310, process_vm_writev=311, pidfd_getfd=438, kcmp=312,
        unshare=272, setns=308,
        mount=165, umount2=166, pivot_root=155, chroot=161, open_tree=428, move_mount=429, fsopen=430,
        fsconfig=431, fsmount=432, fspick=433, mount_setattr=442,
        bpf=321, perf_event_open=298, userfaultfd=323, keyctl=250, add_key=248, request_key=249,
        init_module=175, finit_module=313, delete_module=176, kexec_load=246, kexec_file_load=320, reboot=169,
        swapon=167, swapoff=168, acct=163, quotactl=179, quotactl_fd=443, syslog=103,
        settimeofday=164, clock_settime=227, adjtimex=159, clock_adjtime=305, sethostname=170, setdomainname=171,
        open_by_handle_at=304, name_to_handle_at=303, lookup_dcookie=212, fanotify_init=300, vhangup=153,
        iopl=172, ioperm=173, modify_ldt=154, uselib=134,
        listen=50, sendto=44, sendmsg=46, sendmmsg=307,
    ),
    "aarch64": dict(
        socket=198, clone=220, clone3=435, seccomp=277,
        io_uring_setup=425, io_uring_enter=426, io_uring_register=427,
        ptrace=117, process_vm_readv=270, process_vm_writev=271, pidfd_getfd=438, kcmp=272,
        unshare=97, setns=268,
        mount=40, umount2=39, pivot_root=41, chroot=51, open_tree=428, move_mount=429, fsopen=430,
        fsconfig=431, fsmount=432, fspick=433, mount_setattr=442,
        bpf=280, perf_event_open=241, userfaultfd=282, keyctl=219, add_key=217, request_key=218,
        init_module=105, finit_module=273, delete_module=106, kexec_load=104, kexec_file_load=294, reboot=142,
        swapon=224, swapoff=225, acct=89, quotactl=60, quotactl_fd=443, syslog=116,
        settimeofday=170, clock_settime=112, adjtimex=171, clock_adjtime=266, sethostname=161, setdomainname=162,
        open_by_handle_at=265, name_to_handle_at=264, lookup_dcookie=18, fanotify_init=262, vhangup=58,
        iopl=None, ioperm=None, modify_ldt=None, uselib=None,
        listen=201, sendto=206, sendmsg=211, sendmmsg=269,
    ),
}
AUDIT_ARCH = {"x86_64": AUDIT_ARCH_X86_64, "aarch64": AUDIT_ARCH_AARCH64}


class SeccompError(OSError):
    pass


def machine() -> str:
    return platform.machine()


def supported() -> str | None:
    """None when a filter can be built for this machine, else why not."""
    if platform.system() != "Linux":
        return "not Linux"
    if machine() not in SYSCALLS:
        return f"no syscall table for {machine()}"
    return None


class _Asm:
    """Instructions with symbolic jump targets, resolved at the end."""

    def __init__(self) -> None:
        self.ops: list[tuple[int, object, object, int]] = []
        self.labels: dict[str, int] = {}

    def label(self, name: str) -> None:
        self.labels[name] = len(self.ops)

    def op(self, code: int, k: int, jt: object = 0, jf: object = 0) -> None:
        self.ops.append((code, jt, jf, k & 0xFFFFFFFF))

    def assemble(self) -> bytes:
        out = []
        for i, (code, jt, jf, k) in enumerate(self.ops):
            def rel(target: object) -> int:
                if isinstance(target, int):
                    return target
                offset = self.labels[target] - i - 1
                if not 0 <= offset < 256:
                    raise SeccompError(0, f"jump to {target} out of range ({offset})")
                return offset
            out.append(struct.pack("=HBBI", code, rel(jt), rel(jf), k))
        return b"".join(out)


def build(arch: str | None = None) -> bytes:
    """The filter program (struct sock_filter[]) for `arch`: every refusal
    but clone3's (see build_clone3)."""
    arch = arch or machine()
    table = SYSCALLS[arch]
    a = _Asm()
    a.op(LD_W_ABS, OFF_ARCH)
    a.op(JEQ_K, AUDIT_ARCH[arch], 0, "kill")
    a.op(LD_W_ABS, OFF_NR)
    if arch == "x86_64":
        a.op(JGE_K, X32_SYSCALL_BIT, "kill", 0)
    a.op(JEQ_K, table["socket"], "socket", 0)
    a.op(JEQ_K, table["clone"], "clone", 0)
    for name in SEND_FLAGS_ARG:
        a.op(JEQ_K, table[name], name, 0)
    for name in DENIED:
        nr = table[name]
        if nr is not None:
            a.op(JEQ_K, nr, "eperm", 0)
    a.op(RET_K, RET_ALLOW)

    a.label("socket")
    a.op(LD_W_ABS, OFF_ARG(0))
    a.op(JEQ_K, AF_UNIX, "allow", 0)
    a.op(JEQ_K, AF_INET, "inet", 0)
    a.op(JEQ_K, AF_INET6, "inet", "eafnosupport")
    a.label("inet")
    a.op(LD_W_ABS, OFF_ARG(1))
    a.op(AND_K, SOCK_TYPE_MASK)
    a.op(JEQ_K, SOCK_STREAM, "allow", "eperm")

    a.label("clone")
    a.op(LD_W_ABS, OFF_ARG(0))
    a.op(JSET_K, CLONE_NEW_MASK, "eperm", "allow")

    for name, arg in SEND_FLAGS_ARG.items():
        a.label(name)
        a.op(LD_W_ABS, OFF_ARG(arg))
        a.op(JSET_K, MSG_FASTOPEN, "eperm", "allow")

    a.label("allow")
    a.op(RET_K, RET_ALLOW)
    a.label("eperm")
    a.op(RET_K, RET_ERRNO | errno.EPERM)
    a.label("eafnosupport")
    a.op(RET_K, RET_ERRNO | errno.EAFNOSUPPORT)
    a.label("kill")
    a.op(RET_K, RET_KILL_PROCESS)
    return a.assemble()


def build_clone3(arch: str | None = None) -> bytes:
    """clone3 answers ENOSYS so the C library falls back to clone, whose flags
    the main filter can read (clone3 passes them in memory). Not logged: it
    happens at every thread start and refuses nothing."""
    arch = arch or machine()
    a = _Asm()
    a.op(LD_W_ABS, OFF_NR)
    a.op(JEQ_K, SYSCALLS[arch]["clone3"], 0, 1)
    a.op(RET_K, RET_ERRNO | errno.ENOSYS)
    a.op(RET_K, RET_ALLOW)
    return a.assemble()


PR_SET_NO_NEW_PRIVS = 38


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


SECCOMP_SET_MODE_FILTER = 1
SECCOMP_FILTER_FLAG_LOG = 1 << 1


def logging_problem() -> str | None:
    """None when the kernel logs this filter's refusals (SECCOMP_FILTER_FLAG_LOG
    and "errno" in actions_logged), else why not."""
    try:
        logged = open("/proc/sys/kernel/seccomp/actions_logged").read().split()
    except OSError as exc:
        return f"/proc/sys/kernel/seccomp/actions_logged: {exc.strerror}"
    if "errno" not in logged:
        return "the kernel does not log refused (errno) calls: add errno to /proc/sys/kernel/seccomp/actions_logged"
    return None


def _load(libc, program: bytes, flags: int) -> None:
    buf = ctypes.create_string_buffer(program, len(program))
    prog = _SockFprog(len(program) // 8, ctypes.cast(buf, ctypes.c_void_p))
    nr = SYSCALLS[machine()]["seccomp"]
    if libc.syscall(ctypes.c_long(nr), ctypes.c_uint(SECCOMP_SET_MODE_FILTER), ctypes.c_uint(flags),
                    ctypes.byref(prog)) == 0:
        return
    err = ctypes.get_errno()
    if flags and err == errno.EINVAL:      # a kernel without FILTER_FLAG_LOG: enforce, unreported
        return _load(libc, program, 0)
    raise SeccompError(err, f"seccomp(SET_MODE_FILTER): {errno.errorcode.get(err, err)}")


def install(program: bytes | None = None) -> None:
    """Load the filters into this (single-threaded) process. Needs
    no_new_privs, which the init sets before Landlock anyway."""
    program = program if program is not None else build()
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise SeccompError(err, f"prctl(NO_NEW_PRIVS): {errno.errorcode.get(err, err)}")
    _load(libc, build_clone3(), 0)
    _load(libc, program, SECCOMP_FILTER_FLAG_LOG)
