"""Files only their owner may read: seeds, creds, and the JWT state.

Secrets are never written in place: a temporary file is created 0600 before
anything goes into it and then renamed over the target, so a secret is never
readable by others and a crash never leaves half a creds file.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

# Renames waiting for the end of this thread's batched_writes() block
# (`pending` unset: not batching). Per thread: the operator syncs in a worker.
_batch = threading.local()


def private_dir(path: Path) -> Path:
    """Create `path` and any missing parents, each entered by the owner only.
    Existing parents are left alone (the state dir may live in /var/lib)."""
    missing = [p for p in (path, *path.parents) if not p.exists()]
    for directory in reversed(missing):
        directory.mkdir(exist_ok=True)
        os.chmod(directory, 0o700)  # mkdir's mode would be masked by the umask
    os.chmod(path, 0o700)
    return path


def write_private(path: Path, data: str | bytes) -> None:
    """Replace `path` atomically with a file only its owner can read.

    The temporary file is created 0600 before anything is written to it, so
    a secret is never readable by others, not even for an instant.
    Inside batched_writes() the file appears only when the block ends.
    """
    path = Path(path)
    raw = data.encode() if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)  # mkstemp creates 0600
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(raw)
            pending = getattr(_batch, "pending", None)
            if pending is None:
                f.flush()
                os.fsync(f.fileno())
        os.chmod(tmp, 0o600)
        if pending is not None:
            pending.append((tmp, path))
            return
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def batched_writes(anchor: Path) -> Iterator[None]:
    """Make every write_private() in the block durable with one flush.

    Thousands of files (a sync issuing a whole fleet) each fsynced alone cost
    seconds. Here every temporary file is written first, then one syncfs()
    makes their contents durable, then each is renamed over its target (still
    atomic: a crash leaves the old file or the new one, never half of one),
    then a second syncfs() makes the renames durable before the block ends.
    A write_private() inside the block is not visible until the block ends,
    so callers must not read back what they wrote in it. On an exception the
    writes made so far are still committed, as they would have been unbatched.
    """
    if getattr(_batch, "pending", None) is not None:  # nested: the outer block commits
        yield
        return
    _batch.pending = []
    try:
        yield
    finally:
        pending, _batch.pending = _batch.pending, None
        if pending:
            _sync_filesystem(anchor)
            for tmp, path in pending:
                os.replace(tmp, path)
            _sync_filesystem(anchor)


def _sync_filesystem(anchor: Path) -> None:
    """Flush the filesystem holding `anchor` (syncfs(2); sync(2) where absent)."""
    fd = os.open(anchor, os.O_RDONLY)
    try:
        if _syncfs is None or _syncfs(fd) != 0:
            os.sync()
    finally:
        os.close(fd)


try:
    _syncfs = ctypes.CDLL(None, use_errno=True).syncfs
    _syncfs.argtypes = [ctypes.c_int]
except (OSError, AttributeError):
    _syncfs = None
