"""`disk_limit` on a single host: the plugin's data dir is an ext4
filesystem image of exactly `disk_limit` bytes. A full disk is ENOSPC for
the plugin and nobody else; the host filesystem never fills up because of a
plugin.

The image is loop-mounted ONCE per plugin by the supervisor (root, its own
mount namespace) at `DATA_ROOT/<tag>/<id>` (nosuid, nodev, noexec), and each
instance's init binds that mount into its view, read-only or read-write
(host.py decides; at most one instance's bind is read-write). One mount, so
one superblock: two instances of a plugin running side by side during a hot
reload never mount the image twice, which would corrupt it. Before mounting,
`loops()` makes sure no loop device backs the image any more (a mount
namespace that outlived its instance could still hold the old superblock);
if one does, the mount is refused rather than made a second time.

The image lives in the supervisor's private state dir
(`<state>/plugin-data/<id>.img`, root 0600) and persists across restarts.
Its root directory belongs to the plugin's uid. A bigger `disk_limit` grows
the image (resize2fs); a smaller one is not applied to an existing image
(shrinking could destroy data) and status says so; it is grown only while
no instance runs (the mount is gone then). The supervisor unmounts it when
the plugin's last instance has ended; the loop device goes with the last
reference to the filesystem (autoclear).

Needs root, /dev/loop-control, mkfs.ext4 (e2fsprogs) and mount (util-linux).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
from pathlib import Path

MIN_BYTES = 4 * 2**20        # below this ext4 has no room left for data


class DiskError(RuntimeError):
    pass


def problem() -> str | None:
    """Why images cannot be used here; None if they can."""
    if os.geteuid() != 0:
        return "not root"
    if not Path("/dev/loop-control").exists():
        return "no loop devices (/dev/loop-control)"
    for tool in ("mkfs.ext4", "mount", "umount", "resize2fs", "e2fsck"):
        if not (shutil.which(tool) or shutil.which(tool, path="/usr/sbin:/sbin")):
            return f"{tool} is not installed (Debian: e2fsprogs, mount)"
    return None


def _tool(name: str) -> str:
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin") or name


def _run(argv: list[str]) -> None:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise DiskError(f"{' '.join(argv)} failed: {(done.stderr or done.stdout).strip()[-500:]}")


def ensure_image(image: Path, size: int, uid: int, gid: int, seed: Path | None = None) -> str:
    """Create or grow the image; returns what status should say."""
    size = max(size, MIN_BYTES)
    if not image.exists():
        tmp = image.with_name(f".{image.name}.new")
        tmp.unlink(missing_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.close(fd)
        os.truncate(tmp, size)
        argv = [_tool("mkfs.ext4"), "-q", "-F", "-m", "0", "-E", f"root_owner={uid}:{gid}", "-L", "precinct-data"]
        if seed is not None and seed.is_dir() and any(seed.iterdir()):
            argv += ["-d", str(seed)]          # an earlier plain data dir moves in
        _run([*argv, str(tmp)])
        os.replace(tmp, image)
        return f"ext4 image {size // 2**20} MiB (loop mount)"
    current = image.stat().st_size
    if size > current:
        _run([_tool("e2fsck"), "-f", "-p", str(image)])
        os.truncate(image, size)
        _run([_tool("resize2fs"), "-f", str(image)])
        return f"ext4 image {size // 2**20} MiB (grown; loop mount)"
    if size < current:
        return (f"ext4 image {current // 2**20} MiB (loop mount; disk_limit is {size // 2**20} MiB but an "
                "existing image is never shrunk)")
    return f"ext4 image {size // 2**20} MiB (loop mount)"


def mount_argv(image: str, target: str, read_only: bool) -> list[str]:
    options = "loop,nosuid,nodev,noexec" + (",ro" if read_only else "")
    return [_tool("mount"), "-t", "ext4", "-o", options, image, target]


# Where the supervisor mounts each plugin's image: a tmpfs of its own, 0700
# root, so that every instance's init can detach the whole tree (every other
# plugin's mount included) from its mount namespace after binding its own.
DATA_ROOT = Path("/run/precinct/data")
MS_NOSUID, MS_NODEV, MS_NOEXEC = 2, 4, 8


def _mount_points() -> set[str]:
    """Mount points in our mount namespace (fields 5 of /proc/self/mountinfo, unescaped)."""
    out = set()
    with open("/proc/self/mountinfo") as fh:
        for line in fh:
            parts = line.split()
            if len(parts) > 4:
                out.add(parts[4].replace("\\040", " ").replace("\\011", "\t").replace("\\134", "\\"))
    return out


def is_mounted(target: Path) -> bool:
    return str(target) in _mount_points()


def ensure_data_root() -> Path:
    """DATA_ROOT as its own small tmpfs (once per host; shared by supervisors)."""
    DATA_ROOT.mkdir(parents=True, exist_ok=True)
    if not is_mounted(DATA_ROOT):
        _run([_tool("mount"), "-t", "tmpfs", "-o", "size=64k,mode=0700,nosuid,nodev,noexec",
              "precinct-data", str(DATA_ROOT)])
    os.chmod(DATA_ROOT, 0o700)
    return DATA_ROOT


def loops(image: Path) -> list[str]:
    """The loop devices whose backing file is `image`."""
    want = str(Path(image).resolve())
    found = []
    for backing in Path("/sys/block").glob("loop*/loop/backing_file"):
        try:
            name = backing.read_text().strip().removesuffix(" (deleted)")
        except OSError:
            continue
        if name == want:
            found.append("/dev/" + backing.parent.parent.name)
    return found


def mount_shared(image: Path, target: Path, uid: int, gid: int) -> None:
    """Mount `image` at `target` read-write, once; its root belongs to the
    plugin's uid (0700). Refuses when a loop device still backs the image:
    mounting it again would make a second superblock on the same file."""
    if is_mounted(target):
        return
    busy = loops(image)
    if busy:
        raise DiskError(f"{image} is still attached to {', '.join(busy)} (a mount of it outlived its "
                        "instance); not mounting it a second time")
    target.mkdir(parents=True, exist_ok=True)
    os.chmod(target, 0o700)
    _run(mount_argv(str(image), str(target), read_only=False))
    os.chown(target, uid, gid)
    os.chmod(target, 0o700)


def unmount_shared(target: Path) -> str | None:
    """Unmount the supervisor's mount of an image (no instance may use it
    any more); None, or what went wrong."""
    if not is_mounted(target):
        with contextlib.suppress(OSError):
            target.rmdir()
        return None
    done = subprocess.run([_tool("umount"), str(target)], capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        return f"umount {target}: {(done.stderr or done.stdout).strip()[-300:]}"
    with contextlib.suppress(OSError):
        target.rmdir()
        target.parent.rmdir()        # the supervisor's own directory, once its last plugin's mount is gone
    return None


def sweep(directory: Path) -> list[str]:
    """Unmount every mount directly under `directory` (a supervisor's own
    DATA_ROOT/<tag>, at its start: left by a predecessor that was killed,
    whose plugins died with it); what could not be unmounted."""
    problems = []
    if not directory.is_dir():
        return problems
    for target in sorted(directory.iterdir()):
        problem = unmount_shared(target)
        if problem:
            problems.append(problem)
    with contextlib.suppress(OSError):
        directory.rmdir()
    return problems


def wait_detached(image: Path, timeout: float = 10.0) -> list[str]:
    """After the last unmount: wait (bounded) until no loop device backs the
    image (the kernel frees it when the last mount namespace holding the
    filesystem is gone); the devices still attached, if any."""
    deadline = time.monotonic() + timeout
    while True:
        busy = loops(image)
        if not busy or time.monotonic() >= deadline:
            return busy
        time.sleep(0.05)
