"""The NATS identity layer without a server: JWT encoding, keys on disk,
plan -> claims, and the state Identity keeps. The server-side behaviour is
in test_nats_edges.py and test_nats_live.py."""

from __future__ import annotations

import base64
import hashlib
import json
import stat
from pathlib import Path

import nkeys
import pytest

from conftest import make_plugin, make_plugins
from precinct.natsauth import jwt
from precinct.natsauth.accounts import account_claims, account_plans, import_claim, user_claims
from precinct.natsauth.identity import Identity
from precinct.natsauth.keys import KeyStore, KeyStoreError
from precinct.natsauth.server import render_config
from precinct.plan.sandbox import CORE, PLATFORM, Import, plugin_account


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _b64decode(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


# -- jwt.py -------------------------------------------------------------------

def test_jwt_has_the_nats_v2_shape_and_verifies() -> None:
    op = nkeys.from_seed(nkeys.encode_seed(b"\x01" * 32, nkeys.PREFIX_BYTE_OPERATOR))
    acc = nkeys.from_seed(nkeys.encode_seed(b"\x02" * 32, nkeys.PREFIX_BYTE_ACCOUNT))
    token = jwt.encode(issuer=op, subject=jwt.public_key(acc), name="a",
                       nats=jwt.account_nats(exports=[], imports=[], limits={"conn": 1}), iat=1_700_000_000)
    head, body, sig = token.split(".")
    assert "=" not in token
    assert json.loads(_b64decode(head)) == {"typ": "JWT", "alg": "ed25519-nkey"}
    claims = json.loads(_b64decode(body))
    assert claims["iss"] == jwt.public_key(op) and claims["sub"] == jwt.public_key(acc)
    assert claims["nats"]["type"] == "account" and claims["nats"]["version"] == 2
    # jti: base32 (no padding) of SHA-512/256 over the claims without jti.
    without = {k: v for k, v in claims.items() if k != "jti"}
    digest = hashlib.new("sha512_256", json.dumps(without, separators=(",", ":"), sort_keys=True).encode()).digest()
    assert claims["jti"] == base64.b32encode(digest).decode().rstrip("=")
    assert op.verify(f"{head}.{body}".encode(), _b64decode(sig))
    assert jwt.decode(token, expect_type="account") == claims


def test_decode_refuses_tampered_tokens() -> None:
    op = nkeys.from_seed(nkeys.encode_seed(b"\x01" * 32, nkeys.PREFIX_BYTE_OPERATOR))
    token = jwt.encode(issuer=op, subject=jwt.public_key(op), name="o", nats=jwt.operator_nats("A" * 56), iat=1)
    head, body, sig = token.split(".")
    forged = json.loads(_b64decode(body))
    forged["name"] = "evil"
    forged_body = base64.urlsafe_b64encode(json.dumps(forged).encode()).decode().rstrip("=")
    with pytest.raises(jwt.JWTError, match="signature"):
        jwt.decode(f"{head}.{forged_body}.{sig}")
    with pytest.raises(jwt.JWTError, match="expected a user"):
        jwt.decode(token, expect_type="user")


def test_issue_clock_is_strictly_increasing_within_one_second() -> None:
    clock = jwt.IssueClock(now=lambda: 1000.4)
    assert [clock.next("A"), clock.next("A"), clock.next("A")] == [1000, 1001, 1002]
    assert clock.next("B") == 1000           # per subject
    clock.observe("C", 5000)                 # e.g. read back after a restart
    assert clock.next("C") == 5001


def test_creds_file_is_private_and_in_the_standard_layout(tmp_path: Path) -> None:
    path = tmp_path / "u.creds"
    jwt.write_creds(path, "eyJ.a.b", "SUAXXX")
    assert mode(path) == 0o600
    lines = path.read_text().splitlines()
    assert lines[lines.index("-----BEGIN NATS USER JWT-----") + 1] == "eyJ.a.b"
    assert lines[lines.index("-----BEGIN USER NKEY SEED-----") + 1] == "SUAXXX"
    assert jwt.read_creds_jwt(path) == "eyJ.a.b"


# -- keys.py ------------------------------------------------------------------

def test_keystore_persists_private_stable_keys(tmp_path: Path) -> None:
    store = KeyStore(tmp_path / "keys")
    first = jwt.public_key(store.account("plugin:dice"))
    assert first.startswith("A") and jwt.public_key(store.user("plugin:dice")).startswith("U")
    assert jwt.public_key(store.operator()).startswith("O")
    again = KeyStore(tmp_path / "keys")
    assert jwt.public_key(again.account("plugin:dice")) == first
    assert mode(tmp_path / "keys") == 0o700
    seeds = list((tmp_path / "keys").rglob("*.nk"))
    assert len(seeds) == 3 and all(mode(p) == 0o600 for p in seeds)
    assert all(mode(p) == 0o700 for p in (tmp_path / "keys").rglob("*") if p.is_dir())
    # A plugin called "core" is not the core account.
    assert store.account("plugin:core") is not store.account(CORE)
    assert jwt.public_key(store.account("plugin:core")) != jwt.public_key(store.account(CORE))


def test_keystore_removes_a_plugin_for_good(tmp_path: Path) -> None:
    store = KeyStore(tmp_path / "keys")
    old = jwt.public_key(store.account("plugin:dice"))
    store.user("plugin:dice")
    assert store.plugin_ids() == ["dice"]
    store.remove_plugin("dice")
    assert store.plugin_ids() == [] and not (tmp_path / "keys" / "plugins" / "dice").exists()
    assert jwt.public_key(store.account("plugin:dice")) != old


@pytest.mark.parametrize("role", ["plugin:../x", "plugin:", "plugins", "plugin:A"])
def test_keystore_refuses_roles_that_are_not_plugin_ids(tmp_path: Path, role: str) -> None:
    with pytest.raises(KeyStoreError):
        KeyStore(tmp_path / "keys").account(role)


# -- accounts.py ----------------------------------------------------------------

def test_stream_prefix_becomes_local_subject_and_services_map_local() -> None:
    key = {"plugin:dice": "ADICE", "platform": "APLAT"}.__getitem__
    assert import_claim(Import("plugin:dice", "rosey.chat.*.send", "stream", prefix="plugin.dice"), key) == {
        "account": "ADICE", "subject": "rosey.chat.*.send", "type": "stream",
        "local_subject": "plugin.dice.rosey.chat.*.send",
    }
    assert import_claim(Import("platform", "precinct.storage.dice.kv.get", "service", local="rosey.db.kv.get"), key) == {
        "account": "APLAT", "subject": "precinct.storage.dice.kv.get", "type": "service",
        "local_subject": "rosey.db.kv.get",
    }


def test_plugin_account_and_user_claims(tmp_path: Path) -> None:
    keys = KeyStore(tmp_path / "keys")
    dice = make_plugin("dice", commands={"roll": "dice.roll"}, permissions=["send_messages"])
    plans = account_plans([dice])
    acc = account_claims("plugin:dice", plans["plugin:dice"], keys).nats
    exports = {e["subject"]: e for e in acc["exports"]}
    assert exports["rosey.command.dice.roll"] == {"subject": "rosey.command.dice.roll", "type": "service", "response_type": "Singleton"}
    assert exports["rosey.chat.*.send"] == {"subject": "rosey.chat.*.send", "type": "stream"}
    assert acc["limits"]["conn"] == 4 and acc["limits"]["payload"] == 512 * 1024 and acc["limits"]["leaf"] == 0
    core = account_claims(CORE, plans[CORE], keys).nats
    assert all(core["limits"][k] == -1 for k in ("conn", "subs", "payload", "data", "imports", "exports"))
    assert {"account": jwt.public_key(keys.account("plugin:dice")), "subject": "rosey.command.dice.roll", "type": "service"} in core["imports"]
    user = user_claims("plugin:dice", plans["plugin:dice"].user, plans["plugin:dice"], keys).nats
    assert user["resp"] == {"max": 1, "ttl": 0}
    assert "rosey.chat.*.send" in user["pub"]["allow"] and "rosey.command.dice.roll" in user["sub"]["allow"]
    assert "resp" not in user_claims(CORE, plans[CORE].user, plans[CORE], keys).nats


def test_config_lists_what_the_server_needs(tmp_path: Path) -> None:
    text = render_config(port=4333, operator_jwt="OPJWT", system_account="ASYS", resolver_dir=tmp_path / "jwt",
                         preload={"ACORE": "CJWT"}, log_file=tmp_path / "n.log", http_port=8333)
    assert 'listen: "127.0.0.1:4333"' in text and 'http: "127.0.0.1:8333"' in text
    assert "type: full" in text and "allow_delete: true" in text
    assert 'ACORE: "CJWT"' in text and 'system_account: "ASYS"' in text and "n.log" in text


# -- identity.py (offline) ------------------------------------------------------------

def test_prepare_reissues_nothing_when_nothing_changed(tmp_path: Path) -> None:
    plans = make_plugins(("dice", {"commands": {"roll": "dice.roll"}}), ("quotes", {"permissions": ["database_write"]}))
    identity = Identity(tmp_path / "state")
    identity.prepare(plans)
    files = sorted(p for p in (tmp_path / "state").rglob("*") if p.suffix in (".jwt", ".creds"))
    before = {p: p.read_bytes() for p in files}
    # A new Identity on the same state (a restart) signs nothing new either.
    Identity(tmp_path / "state").prepare(plans)
    assert {p: p.read_bytes() for p in files} == before
    assert mode(tmp_path / "state") == 0o700
    assert all(mode(p) == 0o600 for p in files)
    assert all(mode(p) == 0o700 for p in (tmp_path / "state").rglob("*") if p.is_dir())


def test_offline_removal_revokes_and_forgets_the_plugin(tmp_path: Path) -> None:
    dice, quotes = make_plugins(("dice", {}), ("quotes", {}))
    identity = Identity(tmp_path / "state")
    identity.prepare([dice, quotes])
    quotes_account = identity.account_key(plugin_account("quotes"))
    quotes_user = jwt.decode(jwt.read_creds_jwt(identity.creds_for("quotes")) or "")
    identity.prepare([dice])
    with pytest.raises(KeyError):
        identity.creds_for("quotes")
    assert "quotes" not in identity.keys.plugin_ids()
    removed = json.loads((tmp_path / "state" / "removed.json").read_text())
    tomb = jwt.decode(removed[quotes_account]["jwt"], expect_type="account")["nats"]
    assert tomb["revocations"][quotes_user["sub"]] >= quotes_user["iat"]
    assert tomb["revocations"]["*"] >= quotes_user["iat"]
    assert tomb["limits"]["conn"] == 0 and "imports" not in tomb and "exports" not in tomb
    # The next server start forgets the account entirely.
    (tmp_path / "state" / "jwt").mkdir()
    (tmp_path / "state" / "jwt" / f"{quotes_account}.jwt").write_text(removed[quotes_account]["jwt"])
    config = identity.server_config()
    assert not (tmp_path / "state" / "jwt" / f"{quotes_account}.jwt").exists()
    assert quotes_account not in config.preloaded
    assert set(config.preloaded) == {identity.account_key(r) for r in ("system", CORE, PLATFORM, "plugin:dice")}


def _count_writes_and_signatures(monkeypatch) -> tuple[list[str], list[str]]:
    """Every write_private() (by file name) and every JWT signed from now on."""
    import tempfile

    from precinct.natsauth import files

    writes: list[str] = []
    signed: list[str] = []
    real_mkstemp, real_encode = tempfile.mkstemp, jwt.encode

    def mkstemp(*args, prefix: str = "", **kwargs):
        writes.append(prefix[1:-1])  # write_private's prefix is ".<name>."
        return real_mkstemp(*args, prefix=prefix, **kwargs)

    def encode(*args, **kwargs):
        signed.append(kwargs.get("subject", "?"))
        return real_encode(*args, **kwargs)

    monkeypatch.setattr(files.tempfile, "mkstemp", mkstemp)
    monkeypatch.setattr(jwt, "encode", encode)
    return writes, signed


def test_a_sync_with_nothing_changed_signs_and_writes_nothing(tmp_path: Path, monkeypatch) -> None:
    import asyncio

    plans = [make_plugin(f"quiet-{i}", commands={f"q{i}": f"quiet-{i}.run"}) for i in range(5)]
    identity = Identity(tmp_path / "nats")
    first = asyncio.run(identity.sync(plans))
    assert plugin_account("quiet-0") in first.changed
    before = {p: p.read_bytes() for p in (tmp_path / "nats").rglob("*") if p.is_file()}
    writes, signed = _count_writes_and_signatures(monkeypatch)
    again = asyncio.run(identity.sync(plans))
    assert writes == [] and signed == []
    assert {p: p.read_bytes() for p in (tmp_path / "nats").rglob("*") if p.is_file()} == before
    assert again.removed == ()
    # A change to one plugin re-signs that plugin and the shared accounts only.
    changed = [*plans[:4], make_plugin("quiet-4", commands={"q4": "quiet-4.run", "q4b": "quiet-4.other"})]
    asyncio.run(identity.sync(changed))
    subjects = {identity.account_key(r) for r in (plugin_account("quiet-4"), CORE)}
    assert subjects <= set(signed)
    assert not {identity.account_key(plugin_account(f"quiet-{i}")) for i in range(4)} & set(signed)


def test_revoking_many_plugins_in_one_sync_writes_removed_json_once(tmp_path: Path, monkeypatch) -> None:
    import asyncio

    plans = [make_plugin(f"gone-{i}", commands={f"g{i}": f"gone-{i}.run"}) for i in range(12)]
    identity = Identity(tmp_path / "nats")
    asyncio.run(identity.sync(plans))
    writes, _signed = _count_writes_and_signatures(monkeypatch)
    result = asyncio.run(identity.sync(plans[:2]))
    assert writes.count("removed.json") == 1
    assert result.removed == tuple(sorted(plugin_account(f"gone-{i}") for i in range(2, 12)))
    removed = json.loads((tmp_path / "nats" / "removed.json").read_text())
    assert sorted(e["role"] for e in removed.values()) == list(result.removed)
    for i in range(2, 12):
        assert not (tmp_path / "nats" / "creds" / "plugins" / f"gone-{i}.creds").exists()
        assert not (tmp_path / "nats" / "keys" / "plugins" / f"gone-{i}").exists()
    assert identity.keys.plugin_ids() == ["gone-0", "gone-1"]
