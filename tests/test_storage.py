"""The storage service against a real nats-server and real SQLite.

Plugins connect with their own credentials and use Rosey's subjects; the
server's account mapping delivers the requests to the service as
`precinct.storage.<id>.…`, exactly as in production. Nothing is mocked."""

from __future__ import annotations

import asyncio
import json
import sqlite3

import pytest
from nats.errors import NoRespondersError, TimeoutError as NatsTimeout

from conftest import NatsEnv, make_plugins
from precinct.services.fleetfile import FleetFile
from precinct.services.storage import MAX_REQUEST, StorageService
from precinct.wire.subjects import STORAGE_MIGRATE as ADMIN_MIGRATE, STORAGE_STATS as ADMIN_STATS
from services_support import DEADLINE, ServiceProcess, ask, code_of, wait_until, write_fleet

FAST = {"rate_limits": {"database_queries_per_second": 10_000, "burst": 10_000}}
WRITE = ["database_write"]

QUOTES_SCHEMA = {"table": "quotes", "schema": {"fields": [
    {"name": "text", "type": "string", "required": True, "max_length": 200},
    {"name": "author", "type": "string"},
    {"name": "score", "type": "integer", "required": True, "default": 0},
    {"name": "rating", "type": "float"},
    {"name": "approved", "type": "boolean", "default": False},
    {"name": "said_at", "type": "datetime"},
]}}


def plans():
    return make_plugins(
        ("a", {"permissions": WRITE, "resources": FAST}),
        ("a-b", {"permissions": WRITE, "resources": FAST}),
        ("reader", {"permissions": ["database_read"], "resources": FAST}),
        ("slow", {"permissions": WRITE, "resources": {"rate_limits": {"database_queries_per_second": 2}}}),
        ("tiny", {"permissions": WRITE, "resources": {"disk_limit": "256Ki", **FAST}}),
        ("quotes", {"permissions": WRITE, "resources": FAST}),
        ("nodb", {}),
    )


@pytest.fixture
async def storage(nats_env: NatsEnv, tmp_path):
    """The service in-process on a platform connection; plugin accounts for every plan."""
    the_plans = plans()
    await nats_env.sync(*the_plans)
    folders = {"quotes": tmp_path / "quotes-plugin"}
    fleet = write_fleet(tmp_path / "fleet.json", the_plans, nats_env.identity, folders)
    platform = await nats_env.platform()
    service = StorageService(platform.nc, FleetFile(fleet), tmp_path / "storage")
    await service.start()
    await platform.nc.flush()
    try:
        yield service, platform, folders
    finally:
        await service.stop()


# -- identity and isolation -------------------------------------------------------


async def test_kv_round_trip_identity_from_the_account_not_the_payload(storage, nats_env: NatsEnv, tmp_path):
    _service, _platform, _ = storage
    a, ab = await nats_env.plugin("a"), await nats_env.plugin("a-b")

    # `a` claims to be `a-b` in Rosey's payload field: ignored.
    assert (await ask(a.nc, "rosey.db.kv.set", {"plugin_name": "a-b", "key": "k", "value": {"n": 1}}))["success"]
    mine = await ask(ab.nc, "rosey.db.kv.get", {"plugin_name": "a-b", "key": "k"})
    assert mine == {"success": True, "data": {"exists": False}}
    assert (await ask(ab.nc, "rosey.db.kv.set", {"key": "k", "value": "ab's own"}))["success"]

    got_a = await ask(a.nc, "rosey.db.kv.a.get", {"key": "k"})      # the namespaced variant
    got_ab = await ask(ab.nc, "rosey.db.kv.get", {"key": "k"})
    assert got_a["data"] == {"exists": True, "value": {"n": 1}}
    assert got_ab["data"] == {"exists": True, "value": "ab's own"}

    for i in range(3):
        await ask(a.nc, "rosey.db.kv.set", {"key": f"user:{i}", "value": i})
    listed = await ask(a.nc, "rosey.db.kv.list", {"prefix": "user:", "limit": 2})
    assert listed["data"] == {"keys": ["user:0", "user:1"], "count": 2, "truncated": True}
    assert (await ask(ab.nc, "rosey.db.kv.list", {}))["data"]["keys"] == ["k"]   # cannot enumerate a's keys

    deleted = await ask(a.nc, "rosey.db.kv.delete", {"key": "k"})
    assert deleted["data"] == {"deleted": True}
    assert (await ask(ab.nc, "rosey.db.kv.get", {"key": "k"}))["data"]["exists"] is True

    # Separate files: `a-b` beside `a` cannot collide.
    files = sorted(p.name for p in (tmp_path / "storage").glob("*.db"))
    assert files == ["a-b.db", "a.db"]
    with sqlite3.connect(tmp_path / "storage" / "a.db") as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        keys = {r[0] for r in db.execute("SELECT key FROM precinct_kv")}
    assert keys == {"user:0", "user:1", "user:2"}


async def test_rows_of_a_and_a_b_never_meet(storage, nats_env: NatsEnv):
    a, ab = await nats_env.plugin("a"), await nats_env.plugin("a-b")
    assert (await ask(a.nc, "rosey.db.row.a.schema.register", QUOTES_SCHEMA))["success"]
    # Rosey named row tables <plugin>_<table>: `a` + `b_quotes` and `a-b` + `quotes` would meet. Not here.
    b_quotes = {"table": "b_quotes", "schema": {"fields": [{"name": "text", "type": "string"}]}}
    assert (await ask(a.nc, "rosey.db.row.a.schema.register", b_quotes))["success"]
    await ask(a.nc, "rosey.db.row.a.insert", {"table": "b_quotes", "data": {"text": "a's"}})

    missing = await ask(ab.nc, "rosey.db.row.a-b.search", {"table": "quotes"})
    assert code_of(missing) == "TABLE_NOT_FOUND"
    assert code_of(await ask(ab.nc, "rosey.db.row.a-b.select", {"table": "b_quotes", "id": 1})) == "TABLE_NOT_FOUND"
    assert (await ask(ab.nc, "rosey.db.row.a-b.schema.register", QUOTES_SCHEMA))["success"]
    assert (await ask(ab.nc, "rosey.db.row.a-b.search", {"table": "quotes"}))["rows"] == []


async def test_platform_side_checks_are_defence_in_depth(storage, nats_env: NatsEnv):
    """The account mapping already stops these; the service refuses them too."""
    _service, platform, _ = storage
    reader_key = nats_env.identity.account_key("plugin:reader")

    # A write on behalf of a read-only plugin (only the platform could even publish this).
    denied = await ask(platform.nc, "precinct.storage.reader.kv.set", {"key": "k", "value": 1})
    assert code_of(denied) == "PERMISSION_DENIED"
    unknown = await ask(platform.nc, "precinct.storage.ghost.kv.get", {"key": "k"})
    assert code_of(unknown) == "UNKNOWN_PLUGIN"
    bad_op = await ask(platform.nc, "precinct.storage.a.kv.drop", {})
    assert code_of(bad_op) == "UNKNOWN_OPERATION"
    # A request whose server-written account is someone else's.
    mismatch = await ask(platform.nc, "precinct.storage.a.kv.get", {"key": "k"},
                         headers={"Nats-Request-Info": json.dumps({"acc": reader_key})})
    assert code_of(mismatch) == "IDENTITY_MISMATCH"

    # The real path for the reader: reads work, writes are not even publishable.
    reader = await nats_env.plugin("reader")
    assert (await ask(reader.nc, "rosey.db.kv.get", {"key": "k"}))["data"] == {"exists": False}
    await reader.nc.publish("rosey.db.kv.set", b"{}")
    await reader.violation('publish to "rosey.db.kv.set"')
    nodb = await nats_env.plugin("nodb")
    await nodb.nc.publish("rosey.db.kv.get", b"{}")
    await nodb.violation('publish to "rosey.db.kv.get"')


# -- the row API ------------------------------------------------------------------------


async def test_row_api_crud_search_operators_and_aggregates(storage, nats_env: NatsEnv):
    a = await nats_env.plugin("a")

    async def row(op: str, body: dict) -> dict:
        reply = await ask(a.nc, f"rosey.db.row.a.{op}", body)
        assert reply["success"], (op, body, reply)
        return reply

    registered = await row("schema.register", QUOTES_SCHEMA)
    assert registered["created"] is True
    one = await row("insert", {"table": "quotes", "data": {
        "text": "Hello", "author": "Alice", "score": 3, "rating": 4.5, "approved": True,
        "said_at": "2026-01-01T10:00:00Z"}})
    assert one["id"] == 1 and one["created"] is True
    bulk = await row("insert", {"table": "quotes", "data": [
        {"text": "relativity rules", "author": "Einstein", "score": 10, "rating": 2.0, "said_at": "2026-03-01T00:00:00Z"},
        {"text": "imagination", "author": "Einstein", "score": 7},
        {"text": "quiet", "author": None, "score": "5"},          # Rosey coerces numeric strings
    ]})
    assert bulk == {"success": True, "ids": [2, 3, 4], "created": 3}

    got = await row("select", {"table": "quotes", "id": 1})
    assert got["exists"] is True
    assert got["data"]["text"] == "Hello" and got["data"]["approved"] is True
    assert got["data"]["said_at"].startswith("2026-01-01T10:00:00") and got["data"]["created_at"]
    assert (await row("select", {"table": "quotes", "id": 99})) == {"success": True, "exists": False}

    async def ids(filters, **extra) -> list[int]:
        reply = await row("search", {"table": "quotes", "filters": filters, "sort": {"field": "id"}, **extra})
        return [r["id"] for r in reply["rows"]]

    assert await ids({"author": "Einstein"}) == [2, 3]
    assert await ids({"author": None}) == [4]
    assert await ids({"score": {"$eq": 5}}) == [4]
    assert await ids({"author": {"$ne": "Einstein"}}) == [1, 4]
    assert await ids({"score": {"$gt": 5}}) == [2, 3]
    assert await ids({"score": {"$gte": 5, "$lt": 10}}) == [3, 4]
    assert await ids({"score": {"$lte": 3}}) == [1]
    assert await ids({"author": {"$in": ["Alice", "Bob"]}}) == [1]
    assert await ids({"author": {"$nin": ["Alice"]}}) == [2, 3]
    assert await ids({"text": {"$like": "%ELATIV%"}}) == [2]        # SQLite LIKE: ASCII case-insensitive
    assert await ids({"text": {"$ilike": "hello"}}) == [1]
    assert await ids({"rating": {"$exists": True}}) == [1, 2]
    assert await ids({"rating": {"$null": True}}) == [3, 4]
    assert await ids({"said_at": {"$gte": "2026-02-01T00:00:00+00:00"}}) == [2]
    assert await ids({"$or": [{"author": "Alice"}, {"score": {"$gt": 8}}]}) == [1, 2]
    assert await ids({"$and": [{"author": "Einstein"}, {"$not": {"score": 10}}]}) == [3]
    assert await ids({"approved": True}) == [1]

    page = await row("search", {"table": "quotes", "sort": [{"field": "score", "order": "desc"}], "limit": 2, "offset": 1})
    assert [r["id"] for r in page["rows"]] == [3, 4] and page["truncated"] is True and page["count"] == 2

    aggregates = await row("search", {"table": "quotes", "filters": {"author": "Einstein"},
                                      "aggregates": {"n": {"$count": "*"}, "total": {"$sum": "score"},
                                                     "best": {"$max": "score"}}})
    assert (aggregates["n"], aggregates["total"], aggregates["best"]) == (2, 17, 10)

    updated = await row("update", {"table": "quotes", "id": 1, "data": {"author": "Bob"}})
    assert updated == {"success": True, "id": 1, "updated": True}
    await row("update", {"table": "quotes", "id": 1, "operations": {"score": {"$inc": 2}, "rating": {"$max": 9.5}}})
    await row("update", {"table": "quotes", "id": 1, "operations": {"score": {"$mul": 10}}})
    after = (await row("select", {"table": "quotes", "id": 1}))["data"]
    assert (after["author"], after["score"], after["rating"]) == ("Bob", 50, 9.5)
    assert after["updated_at"] >= after["created_at"]
    gone = await row("update", {"table": "quotes", "id": 404, "data": {"author": "x"}})
    assert gone["updated"] is False

    assert (await row("delete", {"table": "quotes", "id": 4}))["deleted"] is True
    assert (await row("delete", {"table": "quotes", "id": 4}))["deleted"] is False

    # Validation: required, unknown and reserved fields, wrong types, max_length.
    for data, code in (({"author": "no text"}, "MISSING_FIELD"), ({"text": "x", "nope": 1}, "UNKNOWN_FIELD"),
                       ({"text": "x", "id": 7}, "VALIDATION_ERROR"), ({"text": "x", "score": "many"}, "VALIDATION_ERROR"),
                       ({"text": "x" * 201}, "VALIDATION_ERROR"), ({"text": {"nested": 1}}, "VALIDATION_ERROR")):
        reply = await ask(a.nc, "rosey.db.row.a.insert", {"table": "quotes", "data": data})
        assert reply["success"] is False and code_of(reply) == code, (data, reply)
        assert reply["error"]["message"]


# -- bad input ---------------------------------------------------------------------------


async def test_bad_input_gets_clear_errors_and_everyone_keeps_being_served(storage, nats_env: NatsEnv):
    a, ab = await nats_env.plugin("a"), await nats_env.plugin("a-b")
    await ask(a.nc, "rosey.db.row.a.schema.register", QUOTES_SCHEMA)
    await ask(a.nc, "rosey.db.row.a.insert", {"table": "quotes", "data": {"text": "keep me"}})
    search = "rosey.db.row.a.search"

    cases = [
        (search, b"{not json", "INVALID_JSON"),
        (search, b'{"table": "quotes", "limit": NaN}', "INVALID_JSON"),
        (search, b"\xff\xfe", "INVALID_JSON"),
        (search, b'["a", "list"]', "INVALID_REQUEST"),
        (search, b'{"table": 5}', "VALIDATION_ERROR"),
        (search, b'{"table": "quotes", "limit": "ten"}', "VALIDATION_ERROR"),
        (search, b'{"table": "quotes", "filters": ["x"]}', "VALIDATION_ERROR"),
        ("rosey.db.row.a.select", b'{"table": "quotes", "id": "1 OR 1=1"}', "VALIDATION_ERROR"),
        ("rosey.db.row.a.insert", b'{"table": "quotes", "data": [1, 2]}', "VALIDATION_ERROR"),
        ("rosey.db.kv.set", b'{"key": ["k"], "value": 1}', "VALIDATION_ERROR"),
        ("rosey.db.kv.set", b'{"key": "k"}', "MISSING_FIELD"),
        ("rosey.db.kv.set", json.dumps({"key": "k", "value": "v" * 70_000}).encode(), "VALUE_TOO_LARGE"),
        # SQL where a name belongs: refused by the identifier check.
        (search, b'{"table": "quotes; DROP TABLE quotes"}', "VALIDATION_ERROR"),
        (search, b'{"table": "quotes", "filters": {"text) OR 1=1 --": "x"}}', "UNKNOWN_FIELD"),
        (search, b'{"table": "quotes", "sort": {"field": "id; DROP TABLE quotes"}}', "UNKNOWN_FIELD"),
        (search, b'{"table": "precinct_kv"}', "VALIDATION_ERROR"),
        # Operators that do not exist, or do not fit the field.
        (search, b'{"table": "quotes", "filters": {"text": {"$regex": ".*"}}}', "UNKNOWN_OPERATOR"),
        (search, b'{"table": "quotes", "filters": {"$where": "1"}}', "UNKNOWN_OPERATOR"),
        (search, b'{"table": "quotes", "filters": {"text": {"$gt": "a"}}}', "VALIDATION_ERROR"),
        (search, b'{"table": "quotes", "filters": {"text": {"$in": []}}}', "VALIDATION_ERROR"),
        (search, b'{"table": "quotes", "aggregates": {"x": {"$median": "score"}}}', "UNKNOWN_OPERATOR"),
        ("rosey.db.row.a.update", b'{"table": "quotes", "id": 1, "operations": {"score": {"$pow": 2}}}', "UNKNOWN_OPERATOR"),
    ]
    # Deep nesting: filters 20 levels of $and, and raw JSON 50 000 levels deep.
    deep: dict = {"text": "x"}
    for _ in range(20):
        deep = {"$and": [deep]}
    cases.append((search, json.dumps({"table": "quotes", "filters": deep}).encode(), "TOO_DEEP"))
    cases.append((search, b'{"table": "quotes", "x": ' + b"[" * 50_000 + b"]" * 50_000 + b"}", "TOO_DEEP"))
    # Bigger than the service takes (but under the plugin's NATS max_payload).
    cases.append(("rosey.db.kv.set", b'{"key": "k", "value": "' + b"v" * (MAX_REQUEST + 10) + b'"}', "PAYLOAD_TOO_LARGE"))

    for subject, raw, code in cases:
        reply = await ask(a.nc, subject, raw=raw)
        assert reply["success"] is False, (subject, raw[:80], reply)
        assert code_of(reply) == code, (subject, raw[:80], reply)
        assert isinstance(reply["error"]["message"], str) and reply["error"]["message"]
        # ...and the service is still there for someone else after every one of them.
        assert (await ask(ab.nc, "rosey.db.kv.get", {"key": "x"}))["success"], subject

    # SQL-looking *values* are only ever values: no rows match, nothing is dropped.
    for value in ("x'); DROP TABLE quotes; --", "' OR '1'='1", "%' OR 1=1 --"):
        for filters in ({"text": value}, {"text": {"$like": value}}, {"author": {"$in": [value]}}):
            reply = await ask(a.nc, search, {"table": "quotes", "filters": filters})
            assert reply["success"] and reply["rows"] == [], (filters, reply)
    rows = (await ask(a.nc, search, {"table": "quotes"}))["rows"]
    assert [r["text"] for r in rows] == ["keep me"]
    stored = await ask(a.nc, "rosey.db.kv.set", {"key": "'; DROP TABLE precinct_kv; --", "value": "fine"})
    assert stored["success"]
    assert (await ask(a.nc, "rosey.db.kv.get", {"key": "'; DROP TABLE precinct_kv; --"}))["data"]["value"] == "fine"


# -- limits ---------------------------------------------------------------------------------


async def test_queries_over_the_rate_get_an_explicit_error(storage, nats_env: NatsEnv):
    slow = await nats_env.plugin("slow")   # database_queries_per_second: 2, so a burst of 2
    replies = await asyncio.gather(*(ask(slow.nc, "rosey.db.kv.get", {"key": "k"}) for _ in range(10)))
    limited = [r for r in replies if code_of(r) == "RATE_LIMITED"]
    assert [r for r in replies if r["success"]], replies
    assert len(limited) >= 5, replies
    assert all(r["error"]["retry_after"] > 0 and "database_queries_per_second" in r["error"]["message"]
               for r in limited)
    # Tokens come back: waiting as told works.
    await asyncio.sleep(limited[0]["error"]["retry_after"] + 0.6)
    assert (await ask(slow.nc, "rosey.db.kv.get", {"key": "k"}))["success"]
    # Another plugin was never slowed down.
    a = await nats_env.plugin("a")
    assert all(r["success"] for r in await asyncio.gather(*(ask(a.nc, "rosey.db.kv.get", {"key": "k"}) for _ in range(20))))


async def test_disk_limit_is_a_quota_with_an_explicit_error(storage, nats_env: NatsEnv):
    tiny = await nats_env.plugin("tiny")   # disk_limit: 256Ki
    blob = "x" * 60_000
    stored, refused = [], None
    for i in range(20):
        reply = await ask(tiny.nc, "rosey.db.kv.set", {"key": f"blob{i}", "value": blob})
        if not reply["success"]:
            refused = reply
            break
        stored.append(f"blob{i}")
    assert refused is not None, "the quota never applied"
    assert code_of(refused) == "QUOTA_EXCEEDED" and "disk_limit" in refused["error"]["message"], refused
    assert stored, "nothing fit at all"
    # Reads still work, deleting gets back under the quota, and then writes work again.
    assert (await ask(tiny.nc, "rosey.db.kv.get", {"key": stored[0]}))["data"]["value"] == blob
    for key in stored:
        assert (await ask(tiny.nc, "rosey.db.kv.delete", {"key": key}))["data"]["deleted"]
    assert (await ask(tiny.nc, "rosey.db.kv.set", {"key": "again", "value": blob}))["success"]


async def test_kv_ttl_expires_keys(storage, nats_env: NatsEnv):
    a = await nats_env.plugin("a")
    assert (await ask(a.nc, "rosey.db.kv.set", {"key": "short", "value": 1, "ttl_seconds": 1}))["success"]
    assert (await ask(a.nc, "rosey.db.kv.set", {"key": "long", "value": 2}))["success"]
    assert (await ask(a.nc, "rosey.db.kv.get", {"key": "short"}))["data"]["exists"] is True

    async def expired():
        return (await ask(a.nc, "rosey.db.kv.get", {"key": "short"}))["data"]["exists"] is False

    await wait_until(expired, "the key to expire")
    assert (await ask(a.nc, "rosey.db.kv.list", {}))["data"]["keys"] == ["long"]
    bad = await ask(a.nc, "rosey.db.kv.set", {"key": "k", "value": 1, "ttl_seconds": -5})
    assert code_of(bad) == "VALIDATION_ERROR"


# -- migrations ----------------------------------------------------------------------------------

MIGRATION_1 = """-- Migration 001 (Rosey's layout)
-- UP
CREATE TABLE quotes (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    text TEXT NOT NULL,
    author TEXT
);
CREATE INDEX idx_quotes_author ON quotes(author);
INSERT INTO quotes (text, author) VALUES ('Seeded; with a semicolon', 'system');
CREATE TRIGGER quotes_trim AFTER INSERT ON quotes BEGIN
    UPDATE quotes SET text = trim(text) WHERE id = new.id;
END;

-- DOWN
DROP TABLE quotes;
"""
MIGRATION_2 = """-- UP
ALTER TABLE quotes ADD COLUMN score INTEGER DEFAULT 0 NOT NULL;
-- DOWN
-- SQLite cannot drop a column here; never run by the platform anyway.
"""


async def test_migrations_are_applied_by_the_platform_and_reported(storage, nats_env: NatsEnv):
    _service, platform, folders = storage
    mdir = folders["quotes"] / "migrations"
    mdir.mkdir(parents=True)
    (mdir / "001_create_quotes.sql").write_text(MIGRATION_1)
    (mdir / "002_add_score.sql").write_text(MIGRATION_2)
    (mdir / "README.md").write_text("not a migration")
    quotes = await nats_env.plugin("quotes")

    before = await ask(quotes.nc, "rosey.db.migrate.quotes.status", {})
    assert before["success"] and before["current_version"] == 0
    assert [m["version"] for m in before["pending_migrations"]] == [1, 2]

    applied = await ask(platform.nc, ADMIN_MIGRATE, {"plugin": "quotes", "folder": str(folders["quotes"])})
    assert applied["success"], applied
    assert [m["version"] for m in applied["applied"]] == [1, 2] and applied["current_version"] == 2
    again = await ask(platform.nc, ADMIN_MIGRATE, {"plugin": "quotes", "folder": str(folders["quotes"])})
    assert again["success"] and again["applied"] == []

    status = await ask(quotes.nc, "rosey.db.migrate.quotes.status", {})
    assert status["current_version"] == 2 and status["pending_migrations"] == []
    assert [m["name"] for m in status["applied_migrations"]] == ["create_quotes", "add_score"]

    # The plugin uses the migrated table through the row API (as quote-db does).
    register = {"table": "quotes", "schema": {"fields": [
        {"name": "text", "type": "string", "required": True}, {"name": "author", "type": "string"},
        {"name": "score", "type": "integer", "default": 0}]}}
    assert (await ask(quotes.nc, "rosey.db.row.quotes.schema.register", register))["success"]
    assert (await ask(quotes.nc, "rosey.db.row.quotes.insert", {"table": "quotes", "data": {"text": "  new  "}}))["success"]
    rows = (await ask(quotes.nc, "rosey.db.row.quotes.search", {"table": "quotes", "sort": {"field": "id"}}))["rows"]
    assert [(r["text"], r["score"]) for r in rows] == [("Seeded; with a semicolon", 0), ("new", 0)]

    # A broken migration: a clear error naming the file; the earlier ones stay applied.
    (mdir / "003_broken.sql").write_text("-- UP\nALTER TABLE quotes ADD COLUMN;\n")
    broken = await ask(platform.nc, ADMIN_MIGRATE, {"plugin": "quotes", "folder": str(folders["quotes"])})
    assert code_of(broken) == "MIGRATION_FAILED" and "003_broken.sql" in broken["error"]["message"], broken
    status = await ask(quotes.nc, "rosey.db.migrate.quotes.status", {})
    assert status["current_version"] == 2 and [m["version"] for m in status["pending_migrations"]] == [3]
    (mdir / "003_broken.sql").unlink()

    # Editing an applied migration is refused.
    (mdir / "002_add_score.sql").write_text(MIGRATION_2 + "\n-- edited\n")
    changed = await ask(platform.nc, ADMIN_MIGRATE, {"plugin": "quotes", "folder": str(folders["quotes"])})
    assert code_of(changed) == "MIGRATION_CHANGED", changed


async def test_migration_sql_cannot_reach_outside_its_own_database(storage, nats_env: NatsEnv, tmp_path):
    _service, platform, folders = storage
    a = await nats_env.plugin("a")
    assert (await ask(a.nc, "rosey.db.kv.set", {"key": "secret", "value": "a's"}))["success"]
    other = tmp_path / "storage" / "a.db"
    mdir = folders["quotes"] / "migrations"
    mdir.mkdir(parents=True)
    attempts = [
        f"ATTACH DATABASE '{other}' AS other; DELETE FROM other.precinct_kv;",
        f"VACUUM INTO '{tmp_path / 'copy.db'}';",
        "PRAGMA writable_schema = ON;",
        "DELETE FROM precinct_kv;",
        "INSERT INTO precinct_migrations VALUES (99, 'forged', 'x.sql', 'x', 'now', 0);",
        "COMMIT; CREATE TABLE escaped(x);",
        "SELECT load_extension('/tmp/evil.so');",
    ]
    for i, sql in enumerate(attempts, start=1):
        for old in mdir.glob("*.sql"):
            old.unlink()
        (mdir / f"{i:03d}_attempt.sql").write_text(f"-- UP\n{sql}\n")
        reply = await ask(platform.nc, ADMIN_MIGRATE, {"plugin": "quotes", "folder": str(folders["quotes"])})
        assert code_of(reply) == "MIGRATION_FAILED", (sql, reply)
    assert not (tmp_path / "copy.db").exists()
    assert (await ask(a.nc, "rosey.db.kv.get", {"key": "secret"}))["data"]["value"] == "a's"
    with sqlite3.connect(tmp_path / "storage" / "quotes.db") as db:
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        assert "escaped" not in tables
        assert db.execute("SELECT count(*) FROM precinct_migrations").fetchone()[0] == 0

    # A symlinked migration is not followed.
    for old in mdir.glob("*.sql"):
        old.unlink()
    (mdir / "001_link.sql").symlink_to(tmp_path / "fleet.json")
    reply = await ask(platform.nc, ADMIN_MIGRATE, {"plugin": "quotes", "folder": str(folders["quotes"])})
    assert code_of(reply) == "MIGRATION_INVALID", reply


# -- nothing lost ------------------------------------------------------------------------------------


@pytest.fixture
async def storage_process(nats_env: NatsEnv, tmp_path):
    """The storage service as its own process, as `precinct up` runs it."""
    the_plans = plans()
    await nats_env.sync(*the_plans)
    fleet = write_fleet(tmp_path / "fleet.json", the_plans, nats_env.identity)
    args = ["--server", nats_env.server.url, "--creds", str(nats_env.identity.platform_creds()),
            "--fleet", str(fleet), "--data-dir", str(tmp_path / "storage")]
    proc = ServiceProcess("precinct.services.storage", args, tmp_path / "storage.log")
    platform = await nats_env.platform()

    async def up() -> None:
        proc.start()

        async def answers():
            try:
                return (await ask(platform.nc, ADMIN_STATS, {}, timeout=1))["success"]
            except Exception:  # noqa: BLE001 - not up yet
                return False

        await wait_until(answers, f"the storage process to answer\n{proc.output()}", interval=0.2)

    await up()
    try:
        yield proc, up
    finally:
        proc.stop()


async def test_acknowledged_writes_survive_kill_9(storage_process, nats_env: NatsEnv, tmp_path):
    proc, up = storage_process
    a = await nats_env.plugin("a")
    acked: dict[str, int] = {}
    failed: list[str] = []
    stop = asyncio.Event()

    async def writer(worker: int) -> None:
        i = 0
        while not stop.is_set():
            key = f"w{worker}-{i}"
            try:
                reply = await ask(a.nc, "rosey.db.kv.set", {"key": key, "value": i}, timeout=2)
            except (NoRespondersError, NatsTimeout):
                failed.append(key)         # an error, never a silent loss
                await asyncio.sleep(0.05)
            else:
                if reply["success"]:
                    acked[key] = i
                else:
                    failed.append(key)
            i += 1

    writers = [asyncio.create_task(writer(w)) for w in range(4)]
    await wait_until(lambda: len(acked) >= 200, "200 acknowledged writes")
    proc.kill9()                            # mid-stream, no shutdown of any kind
    await wait_until(lambda: len(failed) >= 4, "requests failing while storage is down")
    await up()
    count_after_restart = len(acked)
    await wait_until(lambda: len(acked) >= count_after_restart + 50, "writes acknowledged after the restart")
    stop.set()
    await asyncio.gather(*writers)

    lost = []
    for key, value in acked.items():
        reply = await ask(a.nc, "rosey.db.kv.get", {"key": key})
        if reply["data"] != {"exists": True, "value": value}:
            lost.append((key, reply))
    assert not lost, f"{len(lost)} acknowledged writes lost, e.g. {lost[:3]}"
    assert failed, "the kill did not interrupt anything"


async def test_a_request_during_a_restart_gets_an_error_or_is_retried(storage_process, nats_env: NatsEnv):
    proc, up = storage_process
    a = await nats_env.plugin("a")
    assert (await ask(a.nc, "rosey.db.kv.set", {"key": "k", "value": "before"}))["success"]
    proc.kill9()

    # 1. A plain request while storage is down fails loudly (the server answers "no responders").
    with pytest.raises((NoRespondersError, NatsTimeout)):
        await ask(a.nc, "rosey.db.kv.set", {"key": "k", "value": "during"}, timeout=5)

    # 2. A client that retries gets through once storage is back.
    async def retrying_set() -> dict:
        while True:
            try:
                return await ask(a.nc, "rosey.db.kv.set", {"key": "k", "value": "retried"}, timeout=2)
            except (NoRespondersError, NatsTimeout):
                await asyncio.sleep(0.2)

    pending = asyncio.create_task(retrying_set())
    await asyncio.sleep(0.5)
    assert not pending.done()
    await up()
    reply = await asyncio.wait_for(pending, DEADLINE)
    assert reply["success"]
    assert (await ask(a.nc, "rosey.db.kv.get", {"key": "k"}))["data"]["value"] == "retried"


# -- parity with Rosey's plugins (issue 16) ----------------------------------------------

# The shape of countdown's own migration 001: the table is made by SQL, never
# registered, with TIMESTAMP/BOOLEAN columns and its own created_at.
COUNTDOWN_MIGRATION = """-- UP
CREATE TABLE countdowns (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL,
    channel TEXT NOT NULL,
    target_time TIMESTAMP NOT NULL,
    created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP NOT NULL,
    completed BOOLEAN DEFAULT FALSE NOT NULL,
    snoozed INTEGER DEFAULT 0,
    UNIQUE(channel, name)
);
-- DOWN
DROP TABLE countdowns;
"""


async def test_plugin_written_created_at_is_kept_and_immutable_afterwards(storage, nats_env: NatsEnv):
    a = await nats_env.plugin("a")
    assert (await ask(a.nc, "rosey.db.row.a.schema.register", QUOTES_SCHEMA))["success"]
    written = await ask(a.nc, "rosey.db.row.a.insert", {"table": "quotes", "data": {
        "text": "old", "created_at": "2025-11-24T20:00:00+00:00", "updated_at": "2025-11-25T08:00:00Z"}})
    assert written["success"], written
    stamped = await ask(a.nc, "rosey.db.row.a.insert", {"table": "quotes", "data": {"text": "new", "created_at": None}})
    assert stamped["success"], stamped
    old = (await ask(a.nc, "rosey.db.row.a.select", {"table": "quotes", "id": written["id"]}))["data"]
    assert old["created_at"].startswith("2025-11-24T20:00:00") and old["updated_at"].startswith("2025-11-25T08:00:00")
    new = (await ask(a.nc, "rosey.db.row.a.select", {"table": "quotes", "id": stamped["id"]}))["data"]
    assert new["created_at"] > old["created_at"]   # null means "now", as when it is left out

    bad = await ask(a.nc, "rosey.db.row.a.insert", {"table": "quotes", "data": {"text": "x", "created_at": "yesterday"}})
    assert code_of(bad) == "VALIDATION_ERROR" and "created_at" in bad["error"]["message"], bad
    # As in Rosey: id and created_at never change after insert; updated_at is the service's.
    for field in ("id", "created_at", "updated_at"):
        refused = await ask(a.nc, "rosey.db.row.a.update", {"table": "quotes", "id": written["id"],
                                                              "data": {field: "2026-01-01T00:00:00Z"}})
        assert code_of(refused) == "VALIDATION_ERROR" and field in refused["error"]["message"], refused
    again = (await ask(a.nc, "rosey.db.row.a.select", {"table": "quotes", "id": written["id"]}))["data"]
    assert again["created_at"] == old["created_at"]


async def test_countdown_shaped_select_update_delete_by_filters(storage, nats_env: NatsEnv):
    _service, platform, folders = storage
    mdir = folders["quotes"] / "migrations"
    mdir.mkdir(parents=True)
    (mdir / "001_create_countdowns_table.sql").write_text(COUNTDOWN_MIGRATION)
    applied = await ask(platform.nc, ADMIN_MIGRATE, {"plugin": "quotes", "folder": str(folders["quotes"])})
    assert applied["success"], applied
    cd = await nats_env.plugin("quotes")

    async def call(op: str, body: dict) -> dict:
        reply = await ask(cd.nc, f"rosey.db.row.quotes.{op}", {"table": "countdowns", **body})
        assert reply["success"], (op, body, reply)
        return reply

    for name, channel, target in (("movie", "lobby", "2026-12-01T20:00:00+00:00"),
                                  ("party", "lobby", "2026-12-24T18:00:00+00:00"),
                                  ("launch", "lobby", "2026-12-02T09:00:00+00:00"),
                                  ("movie", "other", "2026-12-03T20:00:00+00:00")):
        await call("insert", {"data": {"name": name, "channel": channel, "target_time": target,
                                       "created_at": "2026-11-30T12:00:00+00:00", "completed": False,
                                       "snoozed": False}})   # a boolean for an INTEGER column, as countdown sends is_paused

    # select by filters, with countdown's order_by/direction and limit: rows, as search answers.
    one = await call("select", {"filters": {"channel": {"$eq": "lobby"}, "name": {"$eq": "movie"}}, "limit": 1})
    assert [r["name"] for r in one["rows"]] == ["movie"] and one["rows"][0]["channel"] == "lobby"
    assert one["rows"][0]["created_at"].startswith("2026-11-30T12:00:00") and one["rows"][0]["completed"] is False
    assert one["rows"][0]["snoozed"] == 0
    ordered = await call("select", {"filters": {"channel": {"$eq": "lobby"}, "completed": {"$eq": False}},
                                    "order_by": [{"field": "target_time", "direction": "desc"}], "limit": 2})
    assert [r["name"] for r in ordered["rows"]] == ["party", "launch"] and ordered["truncated"] is True
    counted = await call("select", {"filters": {"channel": {"$eq": "lobby"}, "completed": {"$eq": False}},
                                    "count_only": True})
    assert counted["count"] == 3 and counted["rows"] == []

    # update and delete by filters report how many rows they touched.
    movie_id = one["rows"][0]["id"]
    done = await call("update", {"filters": {"id": {"$eq": movie_id}}, "data": {"completed": True}})
    assert done == {"success": True, "updated": True, "count": 1}
    assert (await call("select", {"id": movie_id}))["data"]["completed"] is True
    nothing = await call("update", {"filters": {"name": {"$eq": "nope"}}, "data": {"completed": True}})
    assert nothing["updated"] is False and nothing["count"] == 0
    gone = await call("delete", {"filters": {"channel": {"$eq": "lobby"}, "name": {"$eq": "party"}}})
    assert gone == {"success": True, "deleted": True, "count": 1}
    left = await call("search", {"sort": {"field": "id"}})
    assert [(r["channel"], r["name"]) for r in left["rows"]] == [("lobby", "movie"), ("lobby", "launch"), ("other", "movie")]

    # Addressing is explicit: never both, never an empty filter that would hit every row by accident.
    for body in ({"id": movie_id, "filters": {"name": "movie"}, "data": {"completed": False}},
                 {"filters": {}, "data": {"completed": False}}):
        refused = await ask(cd.nc, "rosey.db.row.quotes.update", {"table": "countdowns", **body})
        assert code_of(refused) == "VALIDATION_ERROR", refused
    both = await ask(cd.nc, "rosey.db.row.quotes.select", {"table": "countdowns", "id": movie_id, "filters": {"name": "x"}})
    assert code_of(both) == "VALIDATION_ERROR", both
    refused = await ask(cd.nc, "rosey.db.row.quotes.delete", {"table": "countdowns", "filters": {}})
    assert code_of(refused) == "VALIDATION_ERROR", refused
    unknown = await ask(cd.nc, "rosey.db.row.quotes.delete", {"table": "countdowns", "filters": {"nope": 1}})
    assert code_of(unknown) == "UNKNOWN_FIELD", unknown
    assert len((await call("search", {}))["rows"]) == 3


async def test_migration_errors_in_roseys_shape_and_status_readable_by_the_plugin(storage, nats_env: NatsEnv):
    _service, platform, folders = storage
    mdir = folders["quotes"] / "migrations"
    mdir.mkdir(parents=True)
    (mdir / "001_create_countdowns_table.sql").write_text(COUNTDOWN_MIGRATION)
    (mdir / "002_add_paused.sql").write_text("-- UP\nALTER TABLE countdowns ADD COLUMN is_paused BOOLEAN;\n")
    # countdown's own 002 re-adds a column 001 made: the plugin's bug, reported naming the file.
    (mdir / "003_readd_completed.sql").write_text("-- UP\nALTER TABLE countdowns ADD COLUMN completed BOOLEAN;\n")
    cd = await nats_env.plugin("quotes")

    failed = await ask(platform.nc, ADMIN_MIGRATE, {"plugin": "quotes", "folder": str(folders["quotes"])})
    # Rosey: {"success": false, "error": {code, message}, "applied": [...], "current_version": n}
    assert failed["success"] is False and code_of(failed) == "MIGRATION_FAILED", failed
    assert "003_readd_completed.sql" in failed["error"]["message"] and "completed" in failed["error"]["message"]
    assert [m["version"] for m in failed["applied"]] == [1, 2] and failed["current_version"] == 2, failed
    assert "applied" not in failed["error"] and "current_version" not in failed["error"]

    status = await ask(cd.nc, "rosey.db.migrate.quotes.status", {})
    assert status["success"] and status["current_version"] == 2, status
    assert [m["filename"] for m in status["pending_migrations"]] == ["003_readd_completed.sql"]

    (mdir / "003_readd_completed.sql").unlink()
    (mdir / "002_add_paused.sql").write_text("-- UP\nALTER TABLE countdowns ADD COLUMN paused BOOLEAN;\n")
    changed = await ask(platform.nc, ADMIN_MIGRATE, {"plugin": "quotes", "folder": str(folders["quotes"])})
    assert code_of(changed) == "MIGRATION_CHANGED" and "002_add_paused.sql" in changed["error"]["message"], changed
    assert changed["applied"] == [] and changed["current_version"] == 2, changed

    # Applying is the platform's: the plugin's account cannot even reach it.
    with pytest.raises((NoRespondersError, NatsTimeout)):
        await cd.nc.request("rosey.db.migrate.quotes.apply", b"{}", timeout=1.0)
