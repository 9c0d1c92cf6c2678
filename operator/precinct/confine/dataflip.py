"""Make one instance's data dir bind read-write, from outside it:
`python -I -S -c ... NS_PATH NS_INODE TARGET` (host.HostConfinement.activate).

A hot reload of a plugin that may write its data dir starts the new
instance with a read-only bind of the plugin's one data mount (disk.py);
once the old instance has drained and exited, this short-lived root process
enters the new instance's mount namespace and remounts that bind
read-write. It runs as its own process because setns(CLONE_NEWMNT) needs a
single-threaded caller and changes the caller's whole view of the
filesystem: the supervisor itself never enters a plugin's namespace.

Which namespace: the supervisor recorded the inode of the runner's mount
namespace when it verified the runner (the handshake, before any plugin code
ran). The namespace is opened through /proc/<pid>/ns/mnt and its inode
checked against that record before setns; the open descriptor pins the
namespace, so a pid reused in between cannot redirect the remount.

Why the path is safe to follow inside: the sandbox view (a read-only tmpfs
under a read-only /run, both root's) is built by the trusted init and the
plugin can neither mount nor write there.

Standard library only, like init.py. Exit 0 when the target is a
read-write mount afterwards; otherwise one line on stderr and exit 1.
"""

from __future__ import annotations

import ctypes
import os
import sys

CLONE_NEWNS = 0x00020000
MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT, MS_BIND = 2, 4, 8, 32, 4096


def _is_mount(target: str) -> bool:
    """A mount point: on another device than its parent. (Not read from
    /proc/self/mountinfo: inside the plugin's namespaces /proc is its own
    PID namespace's, where this process does not exist.)"""
    return os.stat(target).st_dev != os.stat(os.path.dirname(target.rstrip("/")) or "/").st_dev


def _read_only(target: str) -> bool:
    return bool(os.statvfs(target).f_flag & os.ST_RDONLY)


def flip(ns_path: str, ns_inode: int, target: str) -> str | None:
    libc = ctypes.CDLL(None, use_errno=True)
    try:
        fd = os.open(ns_path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        return f"{ns_path}: {exc.strerror} (the instance has exited)"
    try:
        if os.fstat(fd).st_ino != ns_inode:
            return f"{ns_path} is not the mount namespace verified at the handshake (the instance has exited)"
        if libc.setns(fd, CLONE_NEWNS) != 0:
            return f"setns({ns_path}): {os.strerror(ctypes.get_errno())}"
    finally:
        os.close(fd)
    if not _is_mount(target):
        return f"{target} is not a mount in the instance's namespace"
    flags = MS_REMOUNT | MS_BIND | MS_NOSUID | MS_NODEV | MS_NOEXEC
    if libc.mount(None, target.encode(), None, ctypes.c_ulong(flags), None) != 0:
        return f"remount {target} read-write: {os.strerror(ctypes.get_errno())}"
    if _read_only(target):
        return f"{target} is still read-only after the remount"
    return None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 3:
        print("precinct-dataflip: usage: NS_PATH NS_INODE TARGET", file=sys.stderr)
        return 2
    try:
        problem = flip(argv[0], int(argv[1]), argv[2])
    except (OSError, ValueError) as exc:
        problem = f"{type(exc).__name__}: {exc}"
    if problem:
        print(f"precinct-dataflip: {problem}", file=sys.stderr)
        return 1
    return 0
