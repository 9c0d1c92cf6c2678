"""Has anything in the plugins dir changed? Asked by the supervisor once a second.

Comparing stat fingerprints of every plugin's files each second (what the
supervisor did before) costs time in proportion to the number of files in
the fleet even when nothing changes, which dominates its idle CPU with
hundreds of plugins. Linux's inotify says *whether* something changed, for
free, so the supervisor computes the fingerprint (still the one source of
truth for what changed) only after an event, and as a safety net every
`RESCAN` seconds whatever inotify said (a missed event, a file system that
sends none, such as some network mounts).

inotify is used through ctypes (the C library's three calls); where it is
missing or a watch cannot be added (fs.inotify.max_user_watches reached),
`changed()` answers True every time: the old polling, never a missed edit.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import logging
import os
import struct
import time
from pathlib import Path

log = logging.getLogger("precinct.dirwatch")

RESCAN = 60.0            # seconds: a full fingerprint comparison at least this often
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC
# Everything that can change a plugin folder's contents or its files' bytes.
MASK = (0x00000002 | 0x00000004 | 0x00000008 | 0x00000040 | 0x00000080   # MODIFY ATTRIB CLOSE_WRITE MOVED_FROM/TO
        | 0x00000100 | 0x00000200 | 0x00000400 | 0x00000800)               # CREATE DELETE DELETE_SELF MOVE_SELF
IN_ONLYDIR = 0x01000000
IN_Q_OVERFLOW = 0x00004000
EVENT = struct.Struct("iIII")     # wd, mask, cookie, len (then len bytes of name)
MAX_DEPTH = 8                    # plugin folders are shallow; rollout.code_files bounds them too
SKIP_DIRS = frozenset({"__pycache__", ".git", ".venv", "node_modules"})


class DirWatch:
    def __init__(self, root: Path, rescan: float = RESCAN) -> None:
        self.root = Path(root)
        self.rescan = rescan
        self.fd: int | None = None
        self.watched: set[str] = set()
        self._last_full = float("-inf")    # the first call always compares, however young the clock
        self._libc = None
        self.problem: str | None = None     # why it polls instead (status, logs)
        lib = ctypes.util.find_library("c")
        try:
            self._libc = ctypes.CDLL(lib, use_errno=True)
            fd = self._libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        except (OSError, AttributeError) as exc:
            self.problem = f"inotify unavailable ({exc})"
            return
        if fd < 0:
            self.problem = f"inotify_init1 failed: {os.strerror(ctypes.get_errno())}"
            return
        self.fd = fd
        self._watch_tree()

    @property
    def polling(self) -> bool:
        return self.fd is None or self.problem is not None

    def _add(self, path: str) -> None:
        # Adding a watch that exists returns the same one; re-adding after
        # every event also covers a directory deleted and made again.
        if self._libc is None or self.fd is None:
            return
        wd = self._libc.inotify_add_watch(self.fd, os.fsencode(path), MASK | IN_ONLYDIR)
        if wd < 0:
            err = ctypes.get_errno()
            if err in (errno.ENOENT, errno.ENOTDIR):   # gone meanwhile: the next event or rescan sees it
                return
            self.problem = f"cannot watch {path}: {os.strerror(err)} (polling instead)"
            log.warning("plugins dir watch: %s", self.problem)
            return
        self.watched.add(path)

    def _watch_tree(self) -> None:
        """Watch the root and every directory below it (new ones as they
        appear), through symlinks too: a plugin folder may be a link to a
        checkout. Each real directory once, at most MAX_DEPTH deep."""
        self.watched = set()
        seen: set[str] = set()
        stack = [(str(self.root), 0)]
        while stack:
            path, depth = stack.pop()
            real = os.path.realpath(path)
            if real in seen:
                continue
            seen.add(real)
            self._add(real)
            if depth >= MAX_DEPTH:
                continue
            try:
                entries = list(os.scandir(real))
            except OSError:
                continue
            for entry in entries:
                try:
                    if entry.name not in SKIP_DIRS and entry.is_dir():       # follows links
                        stack.append((entry.path, depth + 1))
                except OSError:
                    continue

    def _drain(self) -> bool:
        """Read every queued event; True if there was any."""
        seen = False
        while True:
            try:
                data = os.read(self.fd, 64 * 1024)
            except BlockingIOError:
                return seen
            except OSError as exc:
                self.problem = f"reading inotify events failed: {exc} (polling instead)"
                return True
            if not data:
                return seen
            seen = True
            offset = 0
            while offset + EVENT.size <= len(data):
                _wd, mask, _cookie, length = EVENT.unpack_from(data, offset)
                offset += EVENT.size + length
                if mask & IN_Q_OVERFLOW:
                    log.info("plugins dir watch: event queue overflowed; rescanning")

    def changed(self) -> bool:
        """True when the plugins dir may have changed since the last call:
        an event arrived, the watch is polling, or a safety rescan is due."""
        now = time.monotonic()
        if self.polling or now - self._last_full >= self.rescan:
            self._last_full = now
            if self.fd is not None:
                self._drain()
                self._watch_tree()
            return True
        if self._drain():
            self._watch_tree()          # a new plugin folder or subfolder: watch it too
            return True
        return False

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
