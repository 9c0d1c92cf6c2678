"""`disk_limit` on a single host: the plugin's data dir is an ext4
filesystem image of exactly `disk_limit` bytes, loop-mounted by the trusted
init inside the plugin's own mount namespace (nosuid, nodev, noexec; read
only without `file_system_write`). A full disk is ENOSPC for the plugin and
nobody else; the host filesystem never fills up because of a plugin.

The image lives in the supervisor's private state dir
(`<state>/plugin-data/<id>.img`, root 0600) and persists across restarts.
Its root directory belongs to the plugin's uid. A bigger `disk_limit` grows
the image (resize2fs); a smaller one is not applied to an existing image
(shrinking could destroy data) and status says so. The mount disappears with
the namespace, and the loop device with it (autoclear).

Needs root, /dev/loop-control, mkfs.ext4 (e2fsprogs) and mount (util-linux).
"""

from __future__ import annotations

import os
import shutil
import subprocess
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
    for tool in ("mkfs.ext4", "mount", "resize2fs", "e2fsck"):
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
