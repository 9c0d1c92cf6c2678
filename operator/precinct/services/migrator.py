"""Applies one plugin's migrations in a process of its own (started by the
storage service, services/storage.py).

Migration SQL is the one place where a plugin's own SQL runs, so it runs
where it can be held to that plugin's limits and killed:

* SQLite's heap ceiling is per process, so here it is this plugin's:
  `heap_bytes`, derived from its memory_limit (plugindb.heap_budget). Temp
  data (sorts, temp_store=MEMORY) counts against it; `randomblob(150000000)`
  is refused by the value-size limit before it allocates.
* SQLite checks for interrupts only between VM operations; one operation
  (a LIKE or instr() over a large value) can run long. The service waits
  MIGRATION_SECONDS plus a margin and then kills this process: the open
  transaction is rolled back by SQLite (WAL), the migration is not recorded.
* An address-space rlimit backs the heap ceiling for Python's own memory.

Protocol: one JSON request on stdin {"db", "folder", "max_bytes",
"heap_bytes"}; one JSON reply on stdout, Rosey-shaped like every storage
answer."""

from __future__ import annotations

import json
import resource
import sys
from pathlib import Path

from . import sqliteheap
from .filters import StorageError
from .plugindb import PluginDB

PYTHON_HEADROOM = 256 * 2**20   # address space for the interpreter itself, beyond SQLite's heap


def run(request: dict) -> dict:
    heap = int(request.get("heap_bytes") or 0)
    if heap > 0:
        limited = sqliteheap.set_limits(heap)
        soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        want = heap + PYTHON_HEADROOM
        if hard == resource.RLIM_INFINITY or want < hard:
            resource.setrlimit(resource.RLIMIT_AS, (want, hard))
    else:
        limited = False
    db = PluginDB(Path(request["db"]), max_bytes=int(request.get("max_bytes") or 0))
    try:
        result = {"success": True, **db.migrate(Path(request["folder"]))}
    except StorageError as exc:
        result = exc.reply()
    except MemoryError:
        result = StorageError("MIGRATION_FAILED", f"the migration needed more than its {heap} bytes of memory").reply()
    finally:
        db.close()
    result["heap_limited"] = limited
    return result


def main() -> None:
    try:
        request = json.loads(sys.stdin.read())
    except ValueError:
        print(json.dumps(StorageError("INTERNAL_ERROR", "the migrator got no valid request").reply()))
        return
    print(json.dumps(run(request), default=str), flush=True)


if __name__ == "__main__":
    main()
