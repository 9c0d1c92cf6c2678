"""SQLite's own heap accounting, reached through the shared library that
Python's sqlite3 module is linked against (ctypes; the module does not expose
it). The limits are per process: the storage service sets one ceiling for
itself, and each migrator process (services/migrator.py) sets the ceiling of
the one plugin it works for.

`available()` is False when the library found is not the one the sqlite3
module uses (a statically linked build): then nothing is limited here and
the storage stats say so (`heap_limit: "unavailable"`)."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import sqlite3


@functools.lru_cache(maxsize=1)
def _library() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("sqlite3")
    if not name:
        return None
    try:
        lib = ctypes.CDLL(name)
        lib.sqlite3_memory_used.restype = ctypes.c_int64
        lib.sqlite3_hard_heap_limit64.restype = ctypes.c_int64
        lib.sqlite3_hard_heap_limit64.argtypes = [ctypes.c_int64]
        lib.sqlite3_soft_heap_limit64.restype = ctypes.c_int64
        lib.sqlite3_soft_heap_limit64.argtypes = [ctypes.c_int64]
    except (OSError, AttributeError):
        return None
    # The same library instance as the sqlite3 module's only if what that
    # module allocates shows up in this library's counter.
    probe = sqlite3.connect(":memory:")
    try:
        probe.execute("CREATE TABLE probe(x)")
        return lib if lib.sqlite3_memory_used() > 0 else None
    finally:
        probe.close()


def available() -> bool:
    return _library() is not None


def set_limits(hard_bytes: int) -> bool:
    """Hard heap ceiling (allocations beyond it fail: SQLITE_NOMEM, "out of
    memory") and a soft one at half of it (SQLite frees cache pages first)."""
    lib = _library()
    if lib is None or hard_bytes <= 0:
        return False
    lib.sqlite3_hard_heap_limit64(int(hard_bytes))
    lib.sqlite3_soft_heap_limit64(int(hard_bytes) // 2)
    return True


def memory_used() -> int | None:
    lib = _library()
    return int(lib.sqlite3_memory_used()) if lib is not None else None
