"""Files only their owner may read: seeds, creds, and the JWT state.

Secrets are never written in place: a temporary file is created 0600 before
anything goes into it and then renamed over the target, so a secret is never
readable by others and a crash never leaves half a creds file.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


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
    """
    path = Path(path)
    raw = data.encode() if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)  # mkstemp creates 0600
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(raw)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
