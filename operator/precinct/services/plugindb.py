"""One plugin's database: a SQLite file holding its rows, its keys and its
migration history. The storage service owns one `PluginDB` per plugin, at
`<state>/storage/<plugin id>.db`, so two plugins can never share, collide
(`a-b` beside `a`) or enumerate each other's tables: they are different files.

Durability: WAL mode with `synchronous=FULL`, and every write is committed
before the service answers, so an acknowledged write survives `kill -9` of
the service (and a power cut, as far as the disk keeps its promises).

Quota: `disk_limit` becomes `PRAGMA max_page_count` (a hard cap SQLite itself
enforces mid-transaction) and a check before each write; both answer
QUOTA_EXCEEDED. Deleting rows frees pages for reuse. Nothing lives outside
that file: TEMP tables, indexes, views and triggers are refused (the
authorizer, for every statement), ATTACH is refused, and SQLite's own temp
data (sorts, materialized subqueries) stays in memory (`temp_store=MEMORY`),
where the heap ceilings below hold it, never in a file beside the quota.

Deadline: a watchdog thread calls `sqlite3_interrupt()` on a connection
whose statement outlives its deadline. SQLite notices that between VM
operations, so one operation must stay cheap: any string, blob or row is at
most MAX_VALUE_BYTES (SQLITE_LIMIT_LENGTH, so `randomblob(150e6)` fails at
once) and a LIKE pattern at most MAX_LIKE_PATTERN characters, so the worst
LIKE over the largest value takes a fraction of a second, and the deadline
holds to within that. (A progress handler alone is not enough: it runs every
N operations, and a LIKE over 24 large rows is only a few hundred of them.)

Every method here is synchronous and must be called by one thread at a time
(the service holds a per-plugin lock around each call).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import math
import os
import re
import sqlite3
import heapq
import itertools
import stat
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from .filters import (
    FIELD_TYPES, IDENTIFIER, RESERVED_COLUMNS, SQL_TYPES, FilterCompiler, StorageError, coerce,
    compile_aggregates, compile_operations, compile_sort, invalid, quote, utc_now,
)

QUERY_SECONDS = 2.0            # one request's SQL may run this long
MIGRATION_SECONDS = 60.0       # one migration file may run this long
MAX_TABLES = 64
MAX_FIELDS = 64
MAX_INSERT_ROWS = 1000
MAX_SEARCH_LIMIT = 1000
DEFAULT_SEARCH_LIMIT = 100
MAX_RESULT_BYTES = 256 * 1024  # rows in one answer (the rest: truncated=true)
MAX_KEY = 512
MAX_VALUE = 64 * 1024          # Rosey's KV value limit
MAX_TTL = 10 * 365 * 86400
DEFAULT_LIST_LIMIT = 1000
MAX_LIST_LIMIT = 10_000
MAX_MIGRATION_FILE = 1 * 2**20
MIGRATION_NAME = re.compile(r"^(?P<version>\d{3,6})_(?P<name>[A-Za-z0-9_-]+)\.sql$")
UP_MARKER = re.compile(r"^\s*--\s*up\s*$", re.IGNORECASE | re.MULTILINE)
DOWN_MARKER = re.compile(r"^\s*--\s*down\s*$", re.IGNORECASE | re.MULTILINE)
INTERNAL_PREFIXES = ("precinct_", "sqlite_")

MAX_VALUE_BYTES = 320 * 1024   # SQLITE_LIMIT_LENGTH: any one string, blob or row (a request is at most 256 KiB)
MAX_LIKE_PATTERN = 100         # SQLITE_LIMIT_LIKE_PATTERN_LENGTH
MAX_SQL_BYTES = MAX_MIGRATION_FILE
SQLITE_LIMITS = {
    sqlite3.SQLITE_LIMIT_LENGTH: MAX_VALUE_BYTES,
    sqlite3.SQLITE_LIMIT_LIKE_PATTERN_LENGTH: MAX_LIKE_PATTERN,
    sqlite3.SQLITE_LIMIT_SQL_LENGTH: MAX_SQL_BYTES,
    sqlite3.SQLITE_LIMIT_ATTACHED: 0,
    sqlite3.SQLITE_LIMIT_WORKER_THREADS: 0,
}
PAGE_CACHE_KIB = 2048          # per plugin connection (SQLite's default, made explicit)
MiB = 2**20
HEAP_MIN, HEAP_MAX = 16 * MiB, 256 * MiB


def heap_budget(memory_limit: int) -> int:
    """SQLite heap one plugin's migrations may use: a quarter of the plugin's
    own memory_limit (its runner keeps the rest), at least 16 MiB (room for a
    sort of a few MiB) and at most 256 MiB. 64Mi -> 16 MiB, 256Mi -> 64 MiB."""
    if memory_limit <= 0:
        return HEAP_MIN
    return max(HEAP_MIN, min(HEAP_MAX, memory_limit // 4))

INTERNAL_TABLES = """
CREATE TABLE IF NOT EXISTS precinct_kv (
    key TEXT PRIMARY KEY, value TEXT NOT NULL, expires_at REAL, updated_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS precinct_schemas (
    name TEXT PRIMARY KEY, schema TEXT NOT NULL, registered_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS precinct_migrations (
    version INTEGER PRIMARY KEY, name TEXT NOT NULL, filename TEXT NOT NULL, checksum TEXT NOT NULL,
    applied_at TEXT NOT NULL, execution_time_ms INTEGER NOT NULL);
"""


def _internal(name: str) -> bool:
    return name.lower().startswith(INTERNAL_PREFIXES)


def _table_name(value: Any) -> str:
    if not isinstance(value, str):
        raise StorageError("MISSING_FIELD" if value is None else "VALIDATION_ERROR", "'table' must be a table name string")
    if not IDENTIFIER.fullmatch(value):
        raise invalid(f"table name {value[:64]!r} is not valid: letters, digits and _, starting with a letter or _")
    if _internal(value):
        raise invalid(f"table names starting with {' or '.join(INTERNAL_PREFIXES)} are reserved")
    return value


def _row_id(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise StorageError("MISSING_FIELD" if value is None else "VALIDATION_ERROR", "'id' must be an integer")
    return value


def _plain(value: Any) -> Any:
    return base64.b64encode(value).decode("ascii") if isinstance(value, (bytes, memoryview)) else value


# -- migrations on disk ---------------------------------------------------------------


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    filename: str
    up: str
    checksum: str


def read_migrations(folder: Path | None) -> list[Migration]:
    """`<folder>/migrations/NNN_name.sql`, in version order (Rosey's layout).

    A file's `-- UP` section is applied; `-- DOWN` is ignored (the platform
    never rolls back on a plugin's behalf). A file without markers is all UP.
    Symlinks are refused: the storage service can read every plugin's
    database, so it reads nothing the plugin folder merely points at.
    """
    if folder is None:
        return []
    mdir = Path(folder) / "migrations"
    try:
        st = os.lstat(mdir)
    except FileNotFoundError:
        return []
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        raise StorageError("MIGRATION_INVALID", f"{mdir} must be a real directory, not a link or file")
    found: dict[int, Migration] = {}
    for entry in sorted(os.listdir(mdir)):
        if not entry.endswith(".sql"):
            continue
        match = MIGRATION_NAME.fullmatch(entry)
        if not match:
            raise StorageError("MIGRATION_INVALID", f"migrations/{entry}: name must look like 001_create_table.sql")
        path = mdir / entry
        fd = None
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
            fst = os.fstat(fd)
            if not stat.S_ISREG(fst.st_mode):
                raise StorageError("MIGRATION_INVALID", f"migrations/{entry} is not a regular file")
            if fst.st_size > MAX_MIGRATION_FILE:
                raise StorageError("MIGRATION_INVALID", f"migrations/{entry} is larger than {MAX_MIGRATION_FILE} bytes")
            raw = os.read(fd, MAX_MIGRATION_FILE + 1)
        except OSError as exc:
            raise StorageError("MIGRATION_INVALID", f"migrations/{entry}: cannot read it ({exc.strerror})") from None
        finally:
            if fd is not None:
                os.close(fd)
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise StorageError("MIGRATION_INVALID", f"migrations/{entry} is not UTF-8 text") from None
        version = int(match.group("version"))
        if version in found:
            raise StorageError("MIGRATION_INVALID",
                               f"migrations/{entry} and {found[version].filename} share version {version}")
        found[version] = Migration(version, match.group("name"), entry, _up_section(text, entry),
                                   hashlib.sha256(raw).hexdigest())
    return [found[v] for v in sorted(found)]


def _up_section(text: str, filename: str) -> str:
    up, down = UP_MARKER.search(text), DOWN_MARKER.search(text)
    if up is None and down is None:
        return text
    if up is None or (down is not None and down.start() < up.start()):
        raise StorageError("MIGRATION_INVALID", f"migrations/{filename}: '-- UP' must come before '-- DOWN'")
    return text[up.end(): down.start() if down else len(text)]


def split_statements(sql: str) -> list[str]:
    """Split a script at the semicolons SQLite itself would end statements at
    (so `;` inside strings and trigger bodies stays put)."""
    statements, buffer = [], ""
    for piece in sql.split(";"):
        buffer += piece + ";"
        if sqlite3.complete_statement(buffer):
            statements.append(buffer)
            buffer = ""
    rest = re.sub(r"--[^\n]*|/\*.*?\*/", "", buffer[:-1], flags=re.DOTALL).strip()
    if rest:
        statements.append(buffer[:-1])   # let SQLite say what is wrong with it
    return statements


# What migration SQL may not do, checked by SQLite's authorizer as it prepares
# each statement: attach other files (that includes VACUUM INTO), change
# pragmas, control the transaction, or touch Precinct's own tables.
_DENY_ALWAYS = {sqlite3.SQLITE_ATTACH, sqlite3.SQLITE_DETACH, sqlite3.SQLITE_PRAGMA, sqlite3.SQLITE_TRANSACTION}
_TABLE_ARG1 = {sqlite3.SQLITE_CREATE_TABLE, sqlite3.SQLITE_CREATE_TEMP_TABLE, sqlite3.SQLITE_DROP_TABLE,
               sqlite3.SQLITE_DROP_TEMP_TABLE, sqlite3.SQLITE_INSERT, sqlite3.SQLITE_UPDATE, sqlite3.SQLITE_DELETE,
               sqlite3.SQLITE_READ, sqlite3.SQLITE_CREATE_VIEW, sqlite3.SQLITE_CREATE_TEMP_VIEW,
               sqlite3.SQLITE_DROP_VIEW, sqlite3.SQLITE_DROP_TEMP_VIEW}
_TABLE_ARG2 = {sqlite3.SQLITE_CREATE_INDEX, sqlite3.SQLITE_CREATE_TEMP_INDEX, sqlite3.SQLITE_DROP_INDEX,
               sqlite3.SQLITE_DROP_TEMP_INDEX, sqlite3.SQLITE_CREATE_TRIGGER, sqlite3.SQLITE_CREATE_TEMP_TRIGGER,
               sqlite3.SQLITE_DROP_TRIGGER, sqlite3.SQLITE_DROP_TEMP_TRIGGER, sqlite3.SQLITE_ALTER_TABLE}
_DENY_FUNCTIONS = {"load_extension"}
# Anything that would live in the temp database, outside the plugin's file and quota.
_TEMP_ACTIONS = {sqlite3.SQLITE_CREATE_TEMP_TABLE, sqlite3.SQLITE_CREATE_TEMP_INDEX, sqlite3.SQLITE_CREATE_TEMP_VIEW,
                 sqlite3.SQLITE_CREATE_TEMP_TRIGGER}
_WRITES = {sqlite3.SQLITE_INSERT, sqlite3.SQLITE_UPDATE, sqlite3.SQLITE_DELETE, sqlite3.SQLITE_CREATE_TABLE,
           sqlite3.SQLITE_CREATE_INDEX, sqlite3.SQLITE_CREATE_VIEW, sqlite3.SQLITE_CREATE_TRIGGER}


def _outside_quota(action: int, db_name) -> bool:
    return action in _TEMP_ACTIONS or (action in _WRITES and db_name == "temp")


def _base_authorizer(action: int, _arg1, _arg2, db_name, _trigger) -> int:
    """Every statement on a plugin's connection: nothing outside its file."""
    if action in (sqlite3.SQLITE_ATTACH, sqlite3.SQLITE_DETACH) or _outside_quota(action, db_name):
        return sqlite3.SQLITE_DENY
    return sqlite3.SQLITE_OK


def _migration_authorizer(action: int, arg1, arg2, db_name, _trigger) -> int:
    if action in _DENY_ALWAYS or _outside_quota(action, db_name):
        return sqlite3.SQLITE_DENY
    if action in _TABLE_ARG1 and arg1 and _internal(arg1) and not arg1.lower().startswith("sqlite_"):
        return sqlite3.SQLITE_DENY
    if action in _TABLE_ARG2 and arg2 and _internal(arg2) and not arg2.lower().startswith("sqlite_"):
        return sqlite3.SQLITE_DENY
    if action == sqlite3.SQLITE_FUNCTION and arg2 and arg2.lower() in _DENY_FUNCTIONS:
        return sqlite3.SQLITE_DENY
    return sqlite3.SQLITE_OK


# -- the deadline ------------------------------------------------------------------------


class _Watchdog:
    """One daemon thread that interrupts connections past their deadline.
    `arm` returns a token; `disarm(token)` before the connection is used
    again (an interrupt that lands after the statement finished is a no-op:
    SQLite clears it when the next statement starts)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._due: dict[int, sqlite3.Connection] = {}
        self._heap: list[tuple[float, int]] = []
        self._ids = itertools.count()
        self._thread: threading.Thread | None = None

    def arm(self, conn: sqlite3.Connection, seconds: float) -> int:
        token = next(self._ids)
        with self._cond:
            self._due[token] = conn
            heapq.heappush(self._heap, (time.monotonic() + seconds, token))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="sqlite-deadline", daemon=True)
                self._thread.start()
            self._cond.notify()
        return token

    def disarm(self, token: int) -> None:
        with self._cond:
            self._due.pop(token, None)

    def _run(self) -> None:
        with self._cond:
            while True:
                while self._heap and self._heap[0][1] not in self._due:
                    heapq.heappop(self._heap)
                if not self._heap:
                    self._cond.wait()
                    continue
                end, token = self._heap[0]
                wait = end - time.monotonic()
                if wait > 0:
                    self._cond.wait(wait)
                    continue
                heapq.heappop(self._heap)
                conn = self._due.pop(token)
                with contextlib.suppress(sqlite3.Error):
                    conn.interrupt()


_WATCHDOG = _Watchdog()


# -- the database ------------------------------------------------------------------------


class PluginDB:
    def __init__(self, path: Path, *, max_bytes: int = 0) -> None:
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.conn: sqlite3.Connection | None = None
        self.page_size = 4096
        self._columns: dict[str, dict[str, str]] = {}
        self._sets = 0
        self._deadline_seconds = QUERY_SECONDS

    # -- opening ------------------------------------------------------------------------

    def open(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        os.close(fd)
        conn = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False, timeout=5.0)
        try:
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise StorageError("DATABASE_ERROR", f"cannot switch {self.path.name} to WAL mode")
            conn.execute("PRAGMA synchronous=FULL")        # commit = on disk, before we answer
            conn.execute("PRAGMA foreign_keys=ON")
            conn.execute("PRAGMA trusted_schema=OFF")      # plugin-made views/triggers cannot call risky functions
            conn.execute("PRAGMA journal_size_limit=4194304")
            conn.execute("PRAGMA temp_store=MEMORY")        # no temp files outside the quota
            conn.execute(f"PRAGMA cache_size=-{PAGE_CACHE_KIB}")
            for limit, value in SQLITE_LIMITS.items():
                conn.setlimit(limit, value)
            conn.executescript(INTERNAL_TABLES)
            self.page_size = conn.execute("PRAGMA page_size").fetchone()[0]
            conn.set_authorizer(_base_authorizer)
        except Exception:
            conn.close()
            raise
        self.conn = conn
        self.set_quota(self.max_bytes)

    def set_quota(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        if self.conn is not None:
            pages = max(1, max_bytes // self.page_size) if max_bytes > 0 else 1_073_741_823
            self.conn.execute(f"PRAGMA max_page_count={int(pages)}")

    def close(self) -> None:
        if self.conn is not None:
            with contextlib.suppress(sqlite3.Error):
                self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            self.conn.close()
            self.conn = None

    # -- plumbing -------------------------------------------------------------------------

    @property
    def db(self) -> sqlite3.Connection:
        if self.conn is None:
            self.open()
        assert self.conn is not None
        return self.conn

    def usage(self) -> int:
        """Bytes of live pages (freed pages are reused, so they do not count)."""
        pages = self.db.execute("PRAGMA page_count").fetchone()[0]
        free = self.db.execute("PRAGMA freelist_count").fetchone()[0]
        return (pages - free) * self.page_size

    def _check_quota(self) -> None:
        if self.max_bytes > 0 and self.usage() >= self.max_bytes:
            raise self._quota_error()

    def _quota_error(self) -> StorageError:
        return StorageError("QUOTA_EXCEEDED",
                            f"the database is full: {self.usage()} of its {self.max_bytes} bytes (disk_limit) "
                            "are used; delete data or raise disk_limit",
                            used_bytes=self.usage(), limit_bytes=self.max_bytes)

    @contextlib.contextmanager
    def _deadline(self, seconds: float) -> Iterator[None]:
        end = time.monotonic() + seconds
        self._deadline_seconds = seconds
        db = self.db
        db.set_progress_handler(lambda: 1 if time.monotonic() > end else 0, 10_000)
        token = _WATCHDOG.arm(db, seconds)
        try:
            yield
        finally:
            _WATCHDOG.disarm(token)
            db.set_progress_handler(None, 0)

    def _translate(self, exc: sqlite3.Error | MemoryError) -> StorageError:
        text = str(exc)
        if isinstance(exc, sqlite3.IntegrityError):
            return StorageError("CONSTRAINT_VIOLATION", text)
        if "interrupted" in text:
            return StorageError("QUERY_TIMEOUT", f"the query ran longer than {self._deadline_seconds:g} s and was stopped")
        if "database or disk is full" in text:
            return self._quota_error()
        if "not authorized" in text or "too many attached" in text:
            return StorageError("PERMISSION_DENIED", f"{text} (not allowed: ATTACH, pragmas, transaction control, "
                                                     "Precinct's own tables, and TEMP tables, indexes, views or "
                                                     "triggers, which would live outside the plugin's disk_limit)")
        if "too big" in text:
            return StorageError("VALUE_TOO_LARGE", f"a string, blob or row would exceed {MAX_VALUE_BYTES} bytes, "
                                                   "the storage limit for one value")
        if "LIKE or GLOB pattern too complex" in text:
            return StorageError("VALIDATION_ERROR", f"a LIKE pattern is longer than {MAX_LIKE_PATTERN} characters")
        if isinstance(exc, MemoryError) or "out of memory" in text:
            return StorageError("MEMORY_LIMIT", "the query needed more memory than the storage service allows "
                                                "this plugin (see docs/gateway-and-storage.md)")
        return StorageError("DATABASE_ERROR", text)

    @contextlib.contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        try:
            with self._deadline(QUERY_SECONDS):
                yield self.db
        except (sqlite3.Error, MemoryError) as exc:
            raise self._translate(exc) from None

    @contextlib.contextmanager
    def _write(self, seconds: float = QUERY_SECONDS, check_quota: bool = True) -> Iterator[sqlite3.Connection]:
        """One transaction, committed (and fsynced) before the caller answers."""
        db = self.db
        if check_quota:
            self._check_quota()
        try:
            with self._deadline(seconds):
                db.execute("BEGIN IMMEDIATE")
                try:
                    yield db
                    db.execute("COMMIT")
                except BaseException:
                    if db.in_transaction:
                        db.execute("ROLLBACK")
                    raise
        except (sqlite3.Error, MemoryError) as exc:
            raise self._translate(exc) from None

    # -- schemas --------------------------------------------------------------------------

    def _table_columns(self, table: str) -> dict[str, str]:
        """Actual columns of `table` -> declared SQL type (cached)."""
        if table not in self._columns:
            rows = self.db.execute(f"PRAGMA table_info({quote(table)})").fetchall()
            self._columns[table] = {r[1]: (r[2] or "").upper() for r in rows}
        return self._columns[table]

    def _registered(self, table: str) -> dict | None:
        row = self.db.execute("SELECT schema FROM precinct_schemas WHERE name = ?", (table,)).fetchone()
        return json.loads(row[0]) if row else None

    def _schema(self, table: str) -> tuple[dict[str, dict], dict[str, str]]:
        """(declared fields by name, every queryable column -> type).

        A table made by a migration but never registered is still usable:
        its column types are read from SQLite (INTEGER, REAL, else text)."""
        columns = self._table_columns(table)
        if not columns:
            raise StorageError("TABLE_NOT_FOUND", f"table {table!r} does not exist; register its schema first")
        registered = self._registered(table)
        if registered is not None:
            declared = {f["name"]: f for f in registered["fields"]}
        else:
            declared = {name: {"name": name, "type": _type_of(sqltype)}
                        for name, sqltype in columns.items() if name not in RESERVED_COLUMNS}
        types = {name: f["type"] for name, f in declared.items()}
        for name, ftype in RESERVED_COLUMNS.items():
            if name in columns:
                types[name] = ftype
        return declared, types

    def register(self, request: dict) -> dict:
        table = _table_name(request.get("table"))
        schema = request.get("schema")
        if not isinstance(schema, dict) or not isinstance(schema.get("fields"), list):
            raise StorageError("MISSING_FIELD" if schema is None else "VALIDATION_ERROR",
                               "'schema' must be {\"fields\": [{\"name\", \"type\", ...}, ...]}")
        fields = [_check_field(f) for f in schema["fields"]]
        if not fields or len(fields) > MAX_FIELDS:
            raise invalid(f"a table has 1 to {MAX_FIELDS} fields")
        names = [f["name"].lower() for f in fields]
        if len(set(names)) != len(names):
            raise invalid("field names must be unique (case-insensitively)")
        with self._write() as db:
            known = [r[0] for r in db.execute("SELECT name FROM precinct_schemas")]
            if table not in known and len(known) >= MAX_TABLES:
                raise invalid(f"at most {MAX_TABLES} tables per plugin")
            self._columns.pop(table, None)
            columns = self._table_columns(table)
            created, added = False, []
            if not columns:
                parts = ['"id" INTEGER PRIMARY KEY AUTOINCREMENT', '"created_at" TEXT', '"updated_at" TEXT']
                parts += [f"{quote(f['name'])} {SQL_TYPES[f['type']]}" for f in fields]
                db.execute(f"CREATE TABLE {quote(table)} ({', '.join(parts)})")
                created = True
            else:
                if "id" not in columns:
                    raise StorageError("SCHEMA_CONFLICT", f"table {table!r} exists without an integer 'id' column")
                lower = {c.lower() for c in columns}
                wanted = [("created_at", "TEXT"), ("updated_at", "TEXT")]
                wanted += [(f["name"], SQL_TYPES[f["type"]]) for f in fields]
                for name, sqltype in wanted:
                    if name.lower() not in lower:
                        db.execute(f"ALTER TABLE {quote(table)} ADD COLUMN {quote(name)} {sqltype}")
                        added.append(name)
            db.execute("INSERT OR REPLACE INTO precinct_schemas (name, schema, registered_at) VALUES (?, ?, ?)",
                       (table, json.dumps({"fields": fields}), utc_now()))
            self._columns.pop(table, None)
        return {"table": table, "created": created, "columns_added": added}

    # -- rows -------------------------------------------------------------------------------

    def _validate_row(self, row: Any, declared: dict[str, dict], partial: bool,
                      stamps: frozenset[str] = frozenset()) -> dict[str, Any]:
        """`stamps`: the reserved time-stamp columns a plugin may write itself
        (on insert, as Rosey accepts them; null means "now")."""
        if not isinstance(row, dict):
            raise invalid("each row must be a JSON object of field: value")
        out: dict[str, Any] = {}
        for name, value in row.items():
            if name in RESERVED_COLUMNS:
                if name in stamps:
                    out[name] = coerce(name, "datetime", value)
                    continue
                if name == "id":
                    raise invalid("field 'id' is set by the storage service")
                raise invalid(f"field {name!r} cannot be changed after insert (Rosey's immutable fields: id, "
                              "created_at; updated_at is set on every update)")
            field = declared.get(name)
            if field is None:
                raise StorageError("UNKNOWN_FIELD", f"no field {name[:64]!r} in this table")
            if value is None and field.get("required"):
                raise invalid(f"field {name!r} is required and cannot be null")
            out[name] = coerce(name, field["type"], value, max_length=field.get("max_length"))
        if not partial:
            for name, field in declared.items():
                if name in out:
                    continue
                if "default" in field:
                    out[name] = coerce(name, field["type"], field["default"], max_length=field.get("max_length"))
                elif field.get("required"):
                    raise StorageError("MISSING_FIELD", f"required field {name!r} is missing")
        return out

    def insert(self, request: dict) -> dict:
        table = _table_name(request.get("table"))
        data = request.get("data")
        bulk = isinstance(data, list)
        rows = data if bulk else [data]
        if data is None:
            raise StorageError("MISSING_FIELD", "'data' is required: a row object or a list of them")
        if not rows or len(rows) > MAX_INSERT_ROWS:
            raise invalid(f"insert 1 to {MAX_INSERT_ROWS} rows at a time")
        declared, _types = self._schema(table)
        columns = self._table_columns(table)
        stamps = frozenset(s for s in ("created_at", "updated_at") if s in columns)
        validated = [self._validate_row(r, declared, partial=False, stamps=stamps) for r in rows]
        ids = []
        with self._write() as db:
            now = utc_now()
            for row in validated:
                values = dict(row)
                for stamp in stamps:
                    if values.get(stamp) is None:   # Rosey keeps a plugin-written time, else stamps now
                        values[stamp] = now
                names = list(values)
                if names:
                    sql = (f"INSERT INTO {quote(table)} ({', '.join(quote(n) for n in names)}) "  # nosec B608 - identifiers are schema-validated and quote()d; values are bound parameters
                           f"VALUES ({', '.join('?' for _ in names)})")
                else:
                    sql = f"INSERT INTO {quote(table)} DEFAULT VALUES"
                ids.append(db.execute(sql, [values[n] for n in names]).lastrowid)
        if bulk:
            return {"ids": ids, "created": len(ids)}
        return {"id": ids[0], "created": True}

    def _out(self, cursor: sqlite3.Cursor, row: tuple, types: dict[str, str]) -> dict[str, Any]:
        names = [d[0] for d in cursor.description]
        out = {}
        for name, value in zip(names, row):
            if types.get(name) == "boolean" and value is not None:
                value = bool(value)
            out[name] = _plain(value)
        return out

    @staticmethod
    def _by_filters(request: dict) -> bool:
        """Rows are addressed by 'id' (Rosey's API) or by 'filters' (what
        Rosey's plugins, countdown for one, send): exactly one of the two."""
        if "id" in request and "filters" in request:
            raise invalid("give either 'id' or 'filters', not both")
        if "filters" in request:
            if not isinstance(request["filters"], dict) or not request["filters"]:
                raise invalid("'filters' must be a non-empty filter object (to address every row use "
                              "{\"id\": {\"$gt\": 0}})")
            return True
        return False

    def select(self, request: dict) -> dict:
        table = _table_name(request.get("table"))
        if "id" in request and "filters" in request:
            raise invalid("give either 'id' or 'filters', not both")
        if "id" not in request:
            return self.search(request)   # select by filters: rows, as search answers
        row_id = _row_id(request.get("id"))
        _declared, types = self._schema(table)
        with self._read() as db:
            cursor = db.execute(f"SELECT * FROM {quote(table)} WHERE id = ?", (row_id,))  # nosec B608 - validated, quote()d identifier; values bound
            row = cursor.fetchone()
            if row is None:
                return {"exists": False}
            return {"exists": True, "data": self._out(cursor, row, types)}

    def update(self, request: dict) -> dict:
        table = _table_name(request.get("table"))
        by_filters = self._by_filters(request)
        row_id = None if by_filters else _row_id(request.get("id"))
        data, operations = request.get("data"), request.get("operations")
        if (data is None) == (operations is None):
            raise invalid("give either 'data' (new values) or 'operations' (atomic updates), not both or neither")
        declared, types = self._schema(table)
        columns = self._table_columns(table)
        if data is not None:
            values = self._validate_row(data, declared, partial=True)
            if not values:
                raise invalid("'data' names no field to change")
            sets = [f"{quote(n)} = ?" for n in values]
            params = list(values.values())
        else:
            sets, params = compile_operations(operations, types, declared)
        if "updated_at" in columns:
            sets.append('"updated_at" = ?')
            params.append(utc_now())
        if by_filters:
            where, where_params = FilterCompiler(types).compile(request["filters"])
        else:
            where, where_params = "id = ?", [row_id]
        with self._write() as db:
            changed = db.execute(f"UPDATE {quote(table)} SET {', '.join(sets)} WHERE {where}",  # nosec B608 - validated, quote()d identifiers; values bound
                                 [*params, *where_params]).rowcount
        if by_filters:
            return {"updated": changed > 0, "count": changed}
        if not changed:
            return {"id": row_id, "exists": False, "updated": False}
        return {"id": row_id, "updated": True}

    def delete(self, request: dict) -> dict:
        table = _table_name(request.get("table"))
        if self._by_filters(request):
            _declared, types = self._schema(table)
            where, params = FilterCompiler(types).compile(request["filters"])
        else:
            self._schema(table)
            where, params = "id = ?", [_row_id(request.get("id"))]
        with self._write(check_quota=False) as db:   # deleting is how one gets back under quota
            deleted = db.execute(f"DELETE FROM {quote(table)} WHERE {where}", params).rowcount  # nosec B608 - validated, quote()d identifiers; values bound
        if "filters" in request:
            return {"deleted": deleted > 0, "count": deleted}
        return {"deleted": bool(deleted)}

    def search(self, request: dict) -> dict:
        table = _table_name(request.get("table"))
        _declared, types = self._schema(table)
        where, params = FilterCompiler(types).compile(request.get("filters"))
        where_sql = f" WHERE {where}" if where else ""
        if request.get("count_only") is not None and not isinstance(request["count_only"], bool):
            raise invalid("'count_only' must be true or false")
        if request.get("count_only"):
            with self._read() as db:
                count = db.execute(f"SELECT count(*) FROM {quote(table)}{where_sql}", params).fetchone()[0]  # nosec B608 - identifiers validated and quote()d, the filter built from them with bound values
            return {"count": count, "rows": []}
        if request.get("aggregates") is not None:
            select_list, names = compile_aggregates(request["aggregates"], types)
            with self._read() as db:
                row = db.execute(f"SELECT {select_list} FROM {quote(table)}{where_sql}", params).fetchone()  # nosec B608 - identifiers validated and quote()d, the filter built from them with bound values
            values = {name: _plain(value) for name, value in zip(names, row)}
            return {**values, "aggregates": values}
        limit = request.get("limit", DEFAULT_SEARCH_LIMIT)
        offset = request.get("offset", 0)
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise invalid("'limit' must be a positive integer")
        if isinstance(offset, bool) or not isinstance(offset, int) or not 0 <= offset <= 10**9:
            raise invalid("'offset' must be a non-negative integer")
        limit = min(limit, MAX_SEARCH_LIMIT)
        if "sort" in request and "order_by" in request:
            raise invalid("give either 'sort' or 'order_by', not both")
        order = compile_sort(request.get("sort", request.get("order_by")), types)
        rows, size, truncated = [], 0, False
        with self._read() as db:
            cursor = db.execute(f"SELECT * FROM {quote(table)}{where_sql}{order} LIMIT ? OFFSET ?",  # nosec B608 - identifiers validated and quote()d, the filter built from them with bound values
                                [*params, limit + 1, offset])
            for raw in cursor:
                if len(rows) == limit:
                    truncated = True
                    break
                row = self._out(cursor, raw, types)
                size += len(json.dumps(row, default=str))
                if size > MAX_RESULT_BYTES and rows:
                    truncated = True
                    break
                rows.append(row)
        return {"rows": rows, "count": len(rows), "truncated": truncated}

    # -- key/value ----------------------------------------------------------------------------

    @staticmethod
    def _key(request: dict) -> str:
        key = request.get("key")
        if key is None or key == "":
            raise StorageError("MISSING_FIELD", "'key' is required")
        if not isinstance(key, str):
            raise invalid("'key' must be a string")
        if len(key) > MAX_KEY or "\x00" in key:
            raise invalid(f"'key' must be at most {MAX_KEY} characters, without NUL")
        return key

    def kv_get(self, request: dict) -> dict:
        key = self._key(request)
        with self._read() as db:
            row = db.execute("SELECT value, expires_at FROM precinct_kv WHERE key = ?", (key,)).fetchone()
        if row is None or (row[1] is not None and row[1] <= time.time()):
            return {"data": {"exists": False}}
        return {"data": {"exists": True, "value": json.loads(row[0])}}

    def kv_set(self, request: dict) -> dict:
        key = self._key(request)
        if "value" not in request:
            raise StorageError("MISSING_FIELD", "'value' is required (any JSON value)")
        value = json.dumps(request["value"], separators=(",", ":"), allow_nan=False)
        if len(value.encode()) > MAX_VALUE:
            raise StorageError("VALUE_TOO_LARGE", f"the value is {len(value.encode())} bytes as JSON; at most {MAX_VALUE}")
        ttl = request.get("ttl_seconds")
        if ttl is not None and (isinstance(ttl, bool) or not isinstance(ttl, (int, float))
                                or not math.isfinite(ttl) or not 0 < ttl <= MAX_TTL):
            raise invalid(f"'ttl_seconds' must be a number of seconds between 0 and {MAX_TTL}")
        expires = time.time() + ttl if ttl is not None else None
        self._sets += 1
        with self._write() as db:
            db.execute("INSERT INTO precinct_kv (key, value, expires_at, updated_at) VALUES (?, ?, ?, ?) "
                       "ON CONFLICT(key) DO UPDATE SET value = excluded.value, expires_at = excluded.expires_at, "
                       "updated_at = excluded.updated_at", (key, value, expires, utc_now()))
            if self._sets % 100 == 0:
                db.execute("DELETE FROM precinct_kv WHERE expires_at IS NOT NULL AND expires_at <= ?", (time.time(),))
        return {"data": {}}

    def kv_delete(self, request: dict) -> dict:
        key = self._key(request)
        with self._write(check_quota=False) as db:
            row = db.execute("SELECT expires_at FROM precinct_kv WHERE key = ?", (key,)).fetchone()
            db.execute("DELETE FROM precinct_kv WHERE key = ?", (key,))
        live = row is not None and (row[0] is None or row[0] > time.time())
        return {"data": {"deleted": live}}

    def kv_list(self, request: dict) -> dict:
        prefix = request.get("prefix", "")
        limit = request.get("limit", DEFAULT_LIST_LIMIT)
        if prefix is None:
            prefix = ""
        if not isinstance(prefix, str) or len(prefix) > MAX_KEY:
            raise invalid("'prefix' must be a string")
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise invalid("'limit' must be a positive integer")
        limit = min(limit, MAX_LIST_LIMIT)
        with self._read() as db:
            keys = [r[0] for r in db.execute(
                "SELECT key FROM precinct_kv WHERE key >= ? AND key < ? "
                "AND (expires_at IS NULL OR expires_at > ?) ORDER BY key LIMIT ?",
                (prefix, prefix + "\U0010ffff", time.time(), limit + 1))]
        truncated = len(keys) > limit
        keys = keys[:limit]
        return {"data": {"keys": keys, "count": len(keys), "truncated": truncated}}

    # -- migrations -------------------------------------------------------------------------------

    def _applied(self) -> list[dict]:
        rows = self.db.execute("SELECT version, name, filename, checksum, applied_at, execution_time_ms "
                               "FROM precinct_migrations ORDER BY version").fetchall()
        return [{"version": r[0], "name": r[1], "filename": r[2], "checksum": r[3], "applied_at": r[4],
                 "applied_by": "precinct", "status": "applied", "execution_time_ms": r[5]} for r in rows]

    def migration_status(self, folder: Path | None) -> dict:
        applied = self._applied()
        current = max((a["version"] for a in applied), default=0)
        done = {a["version"]: a for a in applied}
        pending, changed = [], []
        try:
            on_disk = read_migrations(folder)
        except StorageError as exc:
            on_disk, problem = [], exc.message
        else:
            problem = None
        for m in on_disk:
            if m.version in done:
                if done[m.version]["checksum"] != m.checksum:
                    changed.append(m.filename)
            else:
                pending.append({"version": m.version, "name": m.name, "filename": m.filename})
        result = {"current_version": current, "applied_migrations": applied,
                  "pending_migrations": pending, "pending_count": len(pending)}
        if changed:
            result["changed_migrations"] = changed
        if problem:
            result["problem"] = problem
        return result

    def _checked_migrations(self, folder: Path | None) -> tuple[list[Migration], dict[int, dict], int]:
        done = {a["version"]: a for a in self._applied()}
        current = max(done, default=0)
        try:
            migrations = read_migrations(folder)
        except StorageError as exc:   # Rosey's shape: nothing applied, and where the database stands
            raise StorageError(exc.code, exc.message, **exc.extra, applied=[], current_version=current) from None
        for m in migrations:
            if m.version in done and done[m.version]["checksum"] != m.checksum:
                raise StorageError("MIGRATION_CHANGED",
                                   f"migrations/{m.filename} changed after it was applied; "
                                   "add a new migration instead of editing an applied one",
                                   applied=[], current_version=current)
            if m.version not in done and m.version < current:
                raise StorageError("MIGRATION_INVALID",
                                   f"migrations/{m.filename} is older than the applied version {current}",
                                   applied=[], current_version=current)
        return migrations, done, current

    def pending(self, folder: Path | None) -> dict | None:
        """None if migrate() has something to apply; else its answer (nothing
        applied). Raises what migrate() would raise for a bad folder."""
        migrations, done, current = self._checked_migrations(folder)
        if any(m.version not in done for m in migrations):
            return None
        return {"applied": [], "current_version": current}

    def forget_schema(self) -> None:
        """Another connection (the migrator) changed the schema."""
        self._columns.clear()

    def migrate(self, folder: Path | None) -> dict:
        """Apply every pending migration in order, each in its own transaction.
        Stops at the first failure (that one rolled back, earlier ones kept)."""
        migrations, done, current = self._checked_migrations(folder)
        applied = []
        for m in migrations:
            if m.version in done:
                continue
            started = time.monotonic()
            db = self.db
            try:
                with self._write(seconds=MIGRATION_SECONDS, check_quota=False):
                    db.set_authorizer(_migration_authorizer)
                    try:
                        for statement in split_statements(m.up):
                            db.execute(statement)
                    finally:
                        db.set_authorizer(_base_authorizer)
                    elapsed = int((time.monotonic() - started) * 1000)
                    db.execute("INSERT INTO precinct_migrations (version, name, filename, checksum, applied_at, "
                               "execution_time_ms) VALUES (?, ?, ?, ?, ?, ?)",
                               (m.version, m.name, m.filename, m.checksum, utc_now(), elapsed))
            except StorageError as exc:
                raise StorageError("MIGRATION_FAILED", f"migrations/{m.filename}: {exc.message}",
                                   applied=applied, current_version=current, cause=exc.code) from None
            finally:
                self._columns.clear()
            applied.append({"version": m.version, "name": m.name, "execution_time_ms": elapsed})
            current = m.version
        return {"applied": applied, "current_version": current}


def _type_of(sqltype: str) -> str:
    if "INT" in sqltype:
        return "integer"
    if any(t in sqltype for t in ("REAL", "FLOA", "DOUB", "NUMERIC", "DECIMAL")):
        return "float"
    if "BOOL" in sqltype:
        return "boolean"
    if any(t in sqltype for t in ("DATE", "TIME")):
        return "datetime"
    return "text"


def _check_field(field: Any) -> dict:
    if not isinstance(field, dict):
        raise invalid("each field is an object: {\"name\", \"type\", \"required\"?, \"max_length\"?, \"default\"?}")
    name, ftype = field.get("name"), field.get("type")
    if not isinstance(name, str) or not IDENTIFIER.fullmatch(name):
        raise invalid(f"field name {str(name)[:64]!r} is not valid: letters, digits and _, starting with a letter or _")
    if name.lower() in RESERVED_COLUMNS:
        raise invalid(f"field {name!r} is reserved (id, created_at and updated_at are added for you)")
    if ftype not in FIELD_TYPES:
        raise invalid(f"field {name!r}: type must be one of {', '.join(FIELD_TYPES)}")
    unknown = set(field) - {"name", "type", "required", "max_length", "default", "description"}
    if unknown:
        raise invalid(f"field {name!r}: unknown keys {', '.join(sorted(map(str, unknown)))}")
    out: dict[str, Any] = {"name": name, "type": ftype}
    required = field.get("required", False)
    if not isinstance(required, bool):
        raise invalid(f"field {name!r}: 'required' must be true or false")
    out["required"] = required
    if "max_length" in field:
        max_length = field["max_length"]
        if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 1 or ftype not in ("string", "text"):
            raise invalid(f"field {name!r}: 'max_length' is a positive integer, for string/text fields")
        out["max_length"] = max_length
    if "default" in field:
        out["default"] = field["default"]
        coerce(name, ftype, field["default"], max_length=out.get("max_length"))
    return out
