"""Bundles, publisher keys, the TUF index, the scan and atomic install.

Every fixture (plugins, wheels, indexes, hostile archives) is built in a tmp
dir by the test itself. Each archive-trick test starts from a valid bundle,
adds exactly one trick and lists it in the file manifest with its true hash,
so only the check under test can reject it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
import threading
import zipfile
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from precinct.cli import app
from precinct.market import bundle, client, index, install, keys, scan
from precinct.market.errors import BundleError, InstallError, ScanBlocked, TrustError
from wheel_support import make_wheel

ROOT = Path(__file__).parents[1]
cli = CliRunner()

PLUGIN_CODE = '''\
import tinydep

DEP = tinydep.VALUE


class Greeter:
    def __init__(self, nats_client, config=None):
        self.nc = nats_client

    async def initialize(self):
        pass

    async def shutdown(self):
        pass
'''


def run(*args: str):
    result = cli.invoke(app, list(args))
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    return result.exit_code, result.output


# -- fixtures built on the fly ----------------------------------------------------------


def make_plugin(folder: Path, version: str = "1.0.0", code: str = PLUGIN_CODE, permissions=(),
                wheel: bool = True, name: str = "greeter") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "plugin.yaml").write_text(yaml.safe_dump({
        "name": name, "version": version, "commands": {"hello": f"{name}.hello"},
        "permissions": list(permissions)}))
    (folder / "plugin.py").write_text(code)
    (folder / "migrations").mkdir(exist_ok=True)
    (folder / "migrations" / "001_init.sql").write_text("CREATE TABLE greetings (id INTEGER);\n")
    (folder / "assets").mkdir(exist_ok=True)
    (folder / "assets" / "hello.txt").write_text("hello\n")
    if wheel:
        make_wheel(folder / "wheels")
        (folder / "requirements.txt").write_text("tinydep==0.1\n")
    return folder


def packed(tmp_path: Path, version: str = "1.0.0", **kw) -> Path:
    src = make_plugin(tmp_path / f"src-{version}-{kw.get('name', 'greeter')}", version, **kw)
    out, _ = bundle.pack(src, tmp_path / f"{kw.get('name', 'greeter')}-{version}.roseyplug")
    return out


def rebuild(src: Path, dest: Path, add=(), drop=(), replace=None, list_added: bool = True) -> Path:
    """Copy a bundle, adding entries (name or ZipInfo, data), dropping names,
    replacing contents; added entries are listed in precinct-files.json with
    their true sha256 unless list_added is False."""
    replace = replace or {}
    with zipfile.ZipFile(src) as zf:
        entries = [(info, zf.read(info)) for info in zf.infolist()]
    files_index = json.loads(dict((i.filename, d) for i, d in entries)[bundle.FILES_MANIFEST])
    for name in drop:
        entries = [(i, d) for i, d in entries if i.filename != name]
    entries = [(i, replace.get(i.filename, d)) for i, d in entries]
    for item, data in add:
        name = item.filename if isinstance(item, zipfile.ZipInfo) else item
        if list_added:
            files_index["files"][name] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
        entries.append((item, data))
    out = []
    for info, data in entries:
        if isinstance(info, zipfile.ZipInfo) and info.filename == bundle.FILES_MANIFEST:
            data = json.dumps(files_index).encode()
        out.append((info, data))
    with zipfile.ZipFile(dest, "w", zipfile.ZIP_DEFLATED) as zf:
        for info, data in out:
            zf.writestr(info, data)
    return dest


@pytest.fixture
def market(tmp_path):
    """An index with greeter 1.0.0 published by `alice`, and a client state dir."""
    idx = index.Index(tmp_path / "index")
    root = idx.init()
    alice, alice_pub = keys.generate(tmp_path / "keys" / "alice.key")
    idx.add(packed(tmp_path, "1.0.0"), alice)
    url = (idx.repo).resolve().as_uri()
    return {"index": idx, "root": root, "alice": alice, "alice_pub": alice_pub, "url": url,
            "state": tmp_path / "state", "plugins": tmp_path / "plugins", "tmp": tmp_path}


# -- packing ------------------------------------------------------------------------------


def test_pack_is_deterministic_and_lists_every_file(tmp_path):
    src = make_plugin(tmp_path / "src")
    a, info = bundle.pack(src, tmp_path / "a.roseyplug")
    os.utime(src / "plugin.py", (1, 1))                 # mtimes must not matter
    b, _ = bundle.pack(src, tmp_path / "b.roseyplug")
    assert a.read_bytes() == b.read_bytes()
    with zipfile.ZipFile(a) as zf:
        names = zf.namelist()
        listed = json.loads(zf.read(bundle.FILES_MANIFEST))
        lock = zf.read("wheels/requirements.lock").decode()
    assert names == sorted(names)
    assert set(listed["files"]) == set(names) - {bundle.FILES_MANIFEST}
    assert {"plugin.yaml", "plugin.py", "migrations/001_init.sql", "assets/hello.txt",
            "wheels/tinydep-0.1-py3-none-any.whl"} <= set(names)
    wheel_sha = hashlib.sha256((src / "wheels" / "tinydep-0.1-py3-none-any.whl").read_bytes()).hexdigest()
    assert f"tinydep==0.1 --hash=sha256:{wheel_sha}" in lock
    assert info.wheels[0].sha256 == wheel_sha


def test_pack_refuses_a_dependency_without_a_wheel(tmp_path):
    src = make_plugin(tmp_path / "src")
    (src / "requirements.txt").write_text("tinydep==0.1\nrequests>=2\n")
    with pytest.raises(BundleError, match="'requests' has no wheel in wheels/.*pip download"):
        bundle.pack(src, tmp_path / "x.roseyplug")


def test_pack_refuses_a_wheel_whose_hash_differs_from_the_pin(tmp_path):
    src = make_plugin(tmp_path / "src")
    (src / "requirements.txt").write_text("tinydep==0.1 --hash=sha256:" + "0" * 64 + "\n")
    with pytest.raises(BundleError, match="is not a hash requirements.txt pins"):
        bundle.pack(src, tmp_path / "x.roseyplug")


def test_pack_refuses_over_50_megabytes(tmp_path, monkeypatch):
    src = make_plugin(tmp_path / "src", wheel=False)
    (src / "assets" / "noise.bin").write_bytes(os.urandom(300_000))
    monkeypatch.setattr(bundle, "MAX_BUNDLE_BYTES", 200_000)
    with pytest.raises(BundleError, match="the limit is 200,000"):
        bundle.pack(src, tmp_path / "x.roseyplug")


def test_rosey_manifest_is_mapped_into_plugin_yaml(tmp_path):
    src = tmp_path / "rosey"
    src.mkdir()
    (src / "manifest.yaml").write_text(yaml.safe_dump({
        "name": "quote-db", "version": "1.2.0", "description": "Quotes, stored.", "author": "someone",
        "entry_point": "plugin.py", "main_class": "QuotePlugin", "license": "MIT", "tags": ["fun"],
        "permissions": ["read_messages", "database_access", "file_write"],
        "resources": {"memory_limit": "100M", "storage_limit": "20M"},
        "config_schema": {"type": "object", "properties": {"max": {"type": "integer", "default": 5}}},
    }))
    (src / "plugin.py").write_text("class QuotePlugin:\n    async def initialize(self): pass\n"
                                   "    async def shutdown(self): pass\n")
    out, info = bundle.pack(src, tmp_path / "q.roseyplug")
    m = info.manifest
    assert m.entrypoint == "plugin:QuotePlugin"
    assert [p.value for p in m.permissions] == ["read_messages", "database_read", "database_write",
                                                "file_system_write"]
    assert m.resources.disk_limit == "20M" and m.config == {"max": 5}
    with zipfile.ZipFile(out) as zf:
        assert "manifest.yaml" in zf.namelist() and "plugin.yaml" in zf.namelist()
    (src / "manifest.yaml").write_text(yaml.safe_dump({"name": "x", "version": "1.0.0",
                                                       "permissions": ["bot_control"]}))
    with pytest.raises(BundleError, match="bot_control.*no sandboxed equivalent"):
        bundle.pack(src, tmp_path / "r.roseyplug")


# -- opening untrusted bundles ----------------------------------------------------------------


def test_valid_bundle_extracts_and_matches_its_manifest(tmp_path):
    b = packed(tmp_path)
    info = bundle.extract(b, tmp_path / "out")
    assert info.id == "greeter" and (tmp_path / "out" / "plugin.py").read_text() == PLUGIN_CODE
    assert bundle.verify_tree(tmp_path / "out") == []
    (tmp_path / "out" / "plugin.py").write_text("evil = 1\n")
    assert bundle.verify_tree(tmp_path / "out") == ["plugin.py: changed since install (sha256 differs)"]


def test_tampered_file_inside_the_bundle_is_rejected(tmp_path):
    good = packed(tmp_path)
    evil = rebuild(good, tmp_path / "evil.roseyplug", replace={"plugin.py": PLUGIN_CODE.encode() + b"import os\n"})
    with pytest.raises(BundleError, match=r"plugin.py: size .* differs|plugin.py: sha256 .* does not match"):
        bundle.inspect(evil)
    # Same size, different bytes: only the hash can tell.
    same_size = PLUGIN_CODE.encode()[:-2] + b"#\n"
    assert len(same_size) == len(PLUGIN_CODE.encode())
    evil2 = rebuild(good, tmp_path / "evil2.roseyplug", replace={"plugin.py": same_size})
    with pytest.raises(BundleError, match="plugin.py: sha256 .* does not match precinct-files.json"):
        bundle.inspect(evil2)
    with pytest.raises(BundleError):
        bundle.extract(evil2, tmp_path / "never")


def _symlink_entry() -> zipfile.ZipInfo:
    info = zipfile.ZipInfo("assets/passwd")
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info


TRICKS = {
    "zip-slip": ([("../x", b"pwned\n")], "path traversal"),
    "zip-slip-nested": ([("assets/../../x", b"pwned\n")], "path traversal"),
    "absolute": ([("/tmp/precinct-absolute-test", b"pwned\n")], "absolute path"),
    "backslash": ([("..\\x", b"pwned\n")], "backslash"),
    "symlink": ([(_symlink_entry(), b"/etc/passwd")], "is a symlink"),
    "zip-bomb": ([("assets/zeros.bin", b"\0" * (20 * 1000 * 1000))], "zip bomb"),
    "duplicate": ([("plugin.py", PLUGIN_CODE.encode())], "appears twice"),
    "case-duplicate": ([("PLUGIN.py", b"x = 1\n")], "appears twice"),
    "reserved-deps": ([(".deps/tinydep/__init__.py", b"VALUE = 666\n")], "reserved for the installer"),
}


@pytest.mark.filterwarnings("ignore:Duplicate name")
@pytest.mark.parametrize("trick", sorted(TRICKS))
def test_archive_tricks_are_rejected_with_a_clear_message(tmp_path, trick):
    entries, message = TRICKS[trick]
    good = packed(tmp_path)
    evil = rebuild(good, tmp_path / "evil.roseyplug", add=entries)
    with pytest.raises(BundleError, match=message):
        bundle.inspect(evil)
    with pytest.raises(BundleError, match=message):
        bundle.extract(evil, tmp_path / "dest" / "plugin")
    assert not (tmp_path / "x").exists() and not (tmp_path / "dest" / "x").exists()
    assert not Path("/tmp/precinct-absolute-test").exists()


def test_too_many_entries_is_a_zip_bomb(tmp_path, monkeypatch):
    good = packed(tmp_path)
    monkeypatch.setattr(bundle, "MAX_ENTRIES", 20)
    evil = rebuild(good, tmp_path / "evil.roseyplug", add=[(f"assets/{i}.txt", b"x") for i in range(20)])
    with pytest.raises(BundleError, match="entries; a bundle may hold at most 20"):
        bundle.inspect(evil)


def test_total_size_cap(tmp_path, monkeypatch):
    good = packed(tmp_path)
    monkeypatch.setattr(bundle, "MAX_TOTAL_UNCOMPRESSED", 50_000)
    evil = rebuild(good, tmp_path / "evil.roseyplug", add=[("assets/big.bin", os.urandom(60_000))])
    with pytest.raises(BundleError, match="expand to over 50,000 bytes"):
        bundle.inspect(evil)


def test_file_missing_from_the_bundle_is_rejected(tmp_path):
    good = packed(tmp_path)
    evil = rebuild(good, tmp_path / "evil.roseyplug", drop=["assets/hello.txt"])
    with pytest.raises(BundleError, match="lists assets/hello.txt but the bundle does not contain it"):
        bundle.inspect(evil)


def test_extra_file_not_in_the_manifest_is_rejected(tmp_path):
    good = packed(tmp_path)
    evil = rebuild(good, tmp_path / "evil.roseyplug", add=[("sneaky.py", b"import os\n")], list_added=False)
    with pytest.raises(BundleError, match="sneaky.py is in the bundle but not listed in precinct-files.json"):
        bundle.inspect(evil)


def test_bundle_without_a_file_manifest_is_rejected(tmp_path):
    good = packed(tmp_path)
    evil = rebuild(good, tmp_path / "evil.roseyplug", drop=[bundle.FILES_MANIFEST])
    with pytest.raises(BundleError, match="no precinct-files.json"):
        bundle.inspect(evil)


def test_not_a_zip_and_oversized_files_are_rejected(tmp_path, monkeypatch):
    junk = tmp_path / "junk.roseyplug"
    junk.write_bytes(b"not a zip at all")
    with pytest.raises(BundleError, match="not a ZIP archive"):
        bundle.inspect(junk)
    good = packed(tmp_path)
    monkeypatch.setattr(bundle, "MAX_BUNDLE_BYTES", 100)
    with pytest.raises(BundleError, match="a bundle may be at most 100"):
        bundle.inspect(good)


# -- publisher signatures on files --------------------------------------------------------------


def test_verify_file_with_publisher_signature(tmp_path):
    b = packed(tmp_path)
    code, out = run("plugin", "keygen", str(tmp_path / "k" / "alice.key"))
    assert code == 0, out
    code, out = run("plugin", "keygen", str(tmp_path / "k" / "mallory.key"))
    assert code == 0, out
    code, out = run("plugin", "sign", str(b), "--key", str(tmp_path / "k" / "alice.key"))
    assert code == 0, out
    code, out = run("plugin", "verify", str(b), "--publisher-key", str(tmp_path / "k" / "alice.pub"))
    assert code == 0 and "OK greeter 1.0.0" in out, out
    code, out = run("plugin", "verify", str(b), "--publisher-key", str(tmp_path / "k" / "mallory.pub"))
    assert code == 1 and "signature: signed by key" in out and "not a trusted publisher key" in out, out
    # A signature moved to another bundle does not verify.
    other = packed(tmp_path, "2.0.0")
    shutil.copy(str(b) + ".sig", str(other) + ".sig")
    code, out = run("plugin", "verify", str(other), "--publisher-key", str(tmp_path / "k" / "alice.pub"))
    assert code == 1 and "not this bundle" in out, out
    (Path(str(b) + ".sig")).unlink()
    code, out = run("plugin", "verify", str(b), "--publisher-key", str(tmp_path / "k" / "alice.pub"))
    assert code == 1 and "has no publisher signature" in out, out


def test_verify_says_which_archive_check_failed(tmp_path):
    evil = rebuild(packed(tmp_path), tmp_path / "evil.roseyplug", add=[("../x", b"1")])
    code, out = run("plugin", "verify", str(evil), "--allow-unsigned")
    assert code == 1 and "archive:" in out and "zip-slip" in out, out


# -- the TUF index ------------------------------------------------------------------------------


def test_index_round_trip_and_versions(market):
    c = client.IndexClient(market["url"], market["state"], market["root"])
    release = c.fetch("greeter")
    assert release.version == "1.0.0" and release.publisher == market["alice"].public_key.keyid
    assert bundle.inspect(release.path).id == "greeter"
    market["index"].add(packed(market["tmp"], "1.1.0"), market["alice"])
    assert client.IndexClient(market["url"], market["state"]).versions("greeter") == ["1.0.0", "1.1.0"]
    assert client.IndexClient(market["url"], market["state"]).fetch("greeter").version == "1.1.0"


def test_tampered_target_is_rejected(market):
    target = market["index"].targets_dir / "greeter" / "greeter-1.0.0.roseyplug"
    evil = rebuild(target, market["tmp"] / "evil.roseyplug", replace={"plugin.py": b"import socket\n"})
    shutil.copy(evil, target)
    c = client.IndexClient(market["url"], market["state"], market["root"])
    with pytest.raises(TrustError, match="tampered file rejected") as err:
        c.fetch("greeter")
    assert err.value.check == "hash"


def test_rollback_to_older_signed_metadata_is_rejected(market):
    idx = market["index"]
    old = market["tmp"] / "old-metadata"
    shutil.copytree(idx.metadata_dir, old)                       # validly signed, version N
    idx.add(packed(market["tmp"], "1.1.0"), market["alice"])     # version N+1
    c = client.IndexClient(market["url"], market["state"], market["root"])
    assert c.fetch("greeter").version == "1.1.0"                 # the client has seen N+1
    shutil.rmtree(idx.metadata_dir)
    shutil.copytree(old, idx.metadata_dir)                       # a mirror serves N again
    with pytest.raises(TrustError, match="rollback rejected") as err:
        client.IndexClient(market["url"], market["state"]).fetch("greeter")
    assert err.value.check == "rollback"


def test_frozen_index_with_expired_timestamp_is_rejected(market):
    market["index"].refresh(expires=datetime.now(timezone.utc) - timedelta(minutes=5))
    c = client.IndexClient(market["url"], market["state"], market["root"])
    with pytest.raises(TrustError, match="metadata has expired.*frozen") as err:
        c.fetch("greeter")
    assert err.value.check == "freeze"
    market["index"].refresh()                                    # the owner re-signs: fine again
    assert client.IndexClient(market["url"], market["state"]).fetch("greeter").version == "1.0.0"


def test_wrong_publisher_key_is_rejected_by_the_index_and_by_clients(market):
    mallory, _ = keys.generate(market["tmp"] / "keys" / "mallory.key")
    with pytest.raises(TrustError, match="is not the key delegated for plugin greeter") as err:
        market["index"].add(packed(market["tmp"], "6.6.6"), mallory)
    assert err.value.check == "publisher"
    # Someone with write access to the repository (not the keys) re-signs the
    # plugin's role with their own key after adding a release.
    idx = market["index"]
    from tuf.api.metadata import TargetFile

    evil = packed(market["tmp"], "6.6.6")
    shutil.copy(evil, idx.targets_dir / "greeter" / evil.name)
    role = idx.load("plugin-greeter")
    name = f"greeter/{evil.name}"
    role.signed.targets[name] = TargetFile.from_file(name, str(evil))
    role.signed.version += 1
    idx._write("plugin-greeter", role, mallory)
    idx._bump_snapshot({"plugin-greeter": role.signed.version, "targets": idx.load("targets").signed.version})
    c = client.IndexClient(market["url"], market["state"], market["root"])
    with pytest.raises(TrustError, match="signature check failed") as err:
        c.fetch("greeter", "6.6.6")
    assert err.value.check == "signature"


def test_client_refuses_a_different_root_and_needs_one(market, tmp_path):
    with pytest.raises(TrustError, match="no pinned root"):
        client.IndexClient(market["url"], tmp_path / "fresh")
    client.IndexClient(market["url"], market["state"], market["root"])
    other = index.Index(tmp_path / "other")
    other_root = other.init()
    with pytest.raises(TrustError, match="differs from the root this machine pinned"):
        client.IndexClient(market["url"], market["state"], other_root)


def test_served_over_http_on_loopback(market):
    ready = threading.Event()
    address = {}

    def on_ready(addr):
        address["addr"] = addr
        ready.set()

    thread = threading.Thread(target=index.serve, args=(market["index"].folder, 0),
                              kwargs={"ready": on_ready}, daemon=True)
    thread.start()
    assert ready.wait(5)
    host, port = address["addr"]
    assert host == "127.0.0.1"
    url = f"http://{host}:{port}"
    release = client.IndexClient(url, market["state"], market["root"]).fetch("greeter")
    assert release.version == "1.0.0"
    import urllib.error
    import urllib.request

    with pytest.raises(urllib.error.HTTPError):                   # keys are never served
        urllib.request.urlopen(f"{url}/../keys/root.key", timeout=5)
    with pytest.raises(urllib.error.HTTPError):
        urllib.request.urlopen(f"{url}/targets/", timeout=5)     # no listings
    # install URL: a bundle fetched over HTTP still needs a publisher signature.
    bundle_url = f"{url}/targets/greeter/greeter-1.0.0.roseyplug"
    trust = install.Trust()
    with pytest.raises(TrustError, match="no publisher signature"):
        install.install(bundle_url, market["plugins"], market["state"], trust)
    assert not (market["plugins"] / "greeter").exists()
    out = install.install(bundle_url, market["plugins"], market["state"], install.Trust(allow_unsigned=True))
    assert out.action == "installed" and (market["plugins"] / "greeter" / ".deps" / "tinydep").is_dir()


# -- scan ----------------------------------------------------------------------------------------


def _scan_code(tmp_path: Path, code: str, permissions=()) -> scan.ScanReport:
    folder = make_plugin(tmp_path / "scan", code=code, permissions=permissions, wheel=False)
    return scan.scan_folder(folder)


def checks(report):
    return {(f.severity, f.check) for f in report.findings}


NETWORK = "import requests\n\nclass P:\n    async def initialize(self): requests.get('https://x')\n    async def shutdown(self): pass\n"


def test_scan_flags_network_without_http_requests(tmp_path):
    report = _scan_code(tmp_path, NETWORK)
    assert ("high", "permission:http_requests") in checks(report)
    assert not report.passes(scan.Policy())
    ok = _scan_code(tmp_path / "2", NETWORK, permissions=["http_requests"])
    assert ("high", "permission:http_requests") not in checks(ok)
    for code in ("import socket\n", "from urllib.request import urlopen\n", "import http.client\n",
                 "import aiohttp\n", "import httpx as h\n", "from http import client\n"):
        assert ("high", "permission:http_requests") in checks(_scan_code(tmp_path / code[:12].strip(), code)), code


@pytest.mark.parametrize("code", [
    "open('x', 'w').write('1')\n",
    "f = open('x', mode='a')\n",
    "import os\nos.remove('x')\n",
    "import shutil\nshutil.rmtree('x')\n",
    "from pathlib import Path\nPath('x').write_text('1')\n",
    "from os import unlink as u\nu('x')\n",
])
def test_scan_flags_writes_without_file_system_write(tmp_path, code):
    report = _scan_code(tmp_path, code)
    assert ("high", "permission:file_system_write") in checks(report), report.findings
    allowed = _scan_code(tmp_path / "2", code, permissions=["file_system_write"])
    assert ("high", "permission:file_system_write") not in checks(allowed)


def test_reads_are_not_writes(tmp_path):
    report = _scan_code(tmp_path, "data = open('x').read()\nother = open('y', 'rb').read()\n")
    assert not any(f.check.startswith("permission:") for f in report.findings), report.findings


@pytest.mark.parametrize("code,check", [
    ("eval('1 + 1')\n", "unverifiable:eval"),
    ("exec('x = 1')\n", "unverifiable:exec"),
    ("compile('1', 'f', 'eval')\n", "unverifiable:compile"),
    ("__import__('os')\n", "unverifiable:__import__"),
    ("import importlib\n", "unverifiable:importlib"),
    ("import ctypes\n", "unverifiable:ctypes"),
    ("import subprocess\n", "unverifiable:subprocess"),
    ("import os\nos.system('ls')\n", "unverifiable:os.system"),
])
def test_scan_flags_unverifiable_code(tmp_path, code, check):
    report = _scan_code(tmp_path, code)
    assert ("medium", check) in checks(report), report.findings
    assert report.verdict(scan.Policy()) == "blocked-warnings"
    assert report.passes(scan.Policy(allow_warnings=True))


def test_scan_ignores_nosec(tmp_path):
    report = _scan_code(tmp_path, "import requests  # nosec\nx = eval('1')  # nosec B307\n")
    assert ("medium", "bandit:B307") in checks(report)                 # bandit itself, nosec ignored
    assert ("high", "permission:http_requests") in checks(report)


def test_clean_plugin_passes_and_cli_reports(tmp_path):
    folder = make_plugin(tmp_path / "clean", wheel=False,
                         code="class P:\n    async def initialize(self): pass\n    async def shutdown(self): pass\n")
    code, out = run("plugin", "scan", str(folder))
    assert code == 0 and "passes" in out, out
    bad = make_plugin(tmp_path / "bad", code=NETWORK, wheel=False)
    code, out = run("plugin", "scan", str(bad), "--json")
    assert code == 1, out
    report = json.loads(out)
    assert report["verdict"] == "blocked" and report["findings"][0]["check"] == "permission:http_requests"
    b, _ = bundle.pack(bad, tmp_path / "bad.roseyplug")
    code, out = run("plugin", "scan", str(b))
    assert code == 1 and "HIGH" in out and "blocked by policy" in out, out


# -- install / update / rollback / remove ------------------------------------------------------


def tree_digest(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and "__pycache__" not in p.parts}


def plugin_folders(plugins: Path) -> list[str]:
    """What the supervisor sees: folders holding a plugin.yaml directly under the plugins dir."""
    return sorted(p.name for p in plugins.iterdir() if p.is_dir() and (p / "plugin.yaml").is_file())


def test_pack_verify_install_round_trip_from_the_index(market):
    m = market
    common = ["--state-dir", str(m["state"]), "--index", m["url"], "--root", str(m["root"])]
    code, out = run("plugin", "verify", "greeter", *common)
    assert code == 0 and "TUF metadata" in out and "OK greeter 1.0.0" in out, out
    code, out = run("plugin", "install", "greeter", "--plugins-dir", str(m["plugins"]), *common)
    assert code == 0, out
    live = m["plugins"] / "greeter"
    assert plugin_folders(m["plugins"]) == ["greeter"]
    assert (live / ".deps" / "tinydep" / "__init__.py").is_file()
    assert (live / "migrations" / "001_init.sql").is_file() and (live / "assets" / "hello.txt").is_file()
    assert bundle.verify_tree(live) == []
    assert not list((m["plugins"] / ".precinct" / "staging").iterdir())
    # The runner imports the plugin with its own dependencies (not the host's).
    probe = ("import sys; from pathlib import Path; sys.path.insert(0, sys.argv[1]);"
             "from precinct_runner.loader import load_plugin_class;"
             "cls = load_plugin_class(Path(sys.argv[2])); import tinydep;"
             "print(cls.__name__, sys.modules[cls.__module__].DEP, tinydep.__file__)")
    proc = subprocess.run([sys.executable, "-c", probe, str(ROOT / "plugins" / "runner"), str(live)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    name, value, where = proc.stdout.split()
    assert (name, value) == ("Greeter", "42") and where.startswith(str(live / ".deps"))
    # Next time the index and root come from the state dir.
    code, out = run("plugin", "install", "greeter", "--plugins-dir", str(m["plugins"]), "--state-dir", str(m["state"]))
    assert code == 1 and "already installed" in out, out


def test_update_blocked_by_scan_leaves_the_previous_version_intact(market):
    m = market
    trust = install.Trust(index_url=m["url"], root=m["root"])
    install.install("greeter", m["plugins"], m["state"], trust)
    live = m["plugins"] / "greeter"
    before = tree_digest(live)
    bad = packed(m["tmp"], "2.0.0", code=NETWORK)                     # network without http_requests
    m["index"].add(bad, m["alice"])
    with pytest.raises(ScanBlocked, match="permission:http_requests"):
        install.install("greeter", m["plugins"], m["state"], trust, update=True)
    assert tree_digest(live) == before
    assert plugin_folders(m["plugins"]) == ["greeter"]
    assert not list((m["plugins"] / ".precinct" / "staging").iterdir())
    assert json.loads((m["plugins"] / ".precinct" / "installed" / "greeter.json").read_text())["version"] == "1.0.0"


def test_update_failing_at_dependency_install_leaves_the_previous_version(market, tmp_path):
    m = market
    trust = install.Trust(index_url=m["url"], root=m["root"])
    install.install("greeter", m["plugins"], m["state"], trust)
    live = m["plugins"] / "greeter"
    before = tree_digest(live)
    src = make_plugin(tmp_path / "broken", "3.0.0")
    (src / "wheels" / "tinydep-0.1-py3-none-any.whl").write_bytes(b"not a wheel")   # hash-pinned, but broken
    b, _ = bundle.pack(src, tmp_path / "broken.roseyplug")
    m["index"].add(b, m["alice"])
    with pytest.raises(InstallError, match="installing the bundle's wheels failed"):
        install.install("greeter", m["plugins"], m["state"], trust, update=True)
    assert tree_digest(live) == before


def test_update_rollback_remove(market):
    m = market
    trust = install.Trust(index_url=m["url"], root=m["root"])
    install.install("greeter", m["plugins"], m["state"], trust)
    m["index"].add(packed(m["tmp"], "1.1.0"), m["alice"])
    out = install.install("greeter", m["plugins"], m["state"], trust, update=True)
    assert (out.action, out.previous, out.version) == ("updated", "1.0.0", "1.1.0")
    live = m["plugins"] / "greeter"
    assert "version: 1.1.0" in (live / "plugin.yaml").read_text()
    kept = m["plugins"] / ".precinct" / "versions" / "greeter" / "1.0.0"
    assert (kept / "plugin.yaml").is_file() and (kept / ".deps" / "tinydep").is_dir()
    assert plugin_folders(m["plugins"]) == ["greeter"]
    # A downgrade through update is refused; rollback is the way back.
    with pytest.raises(InstallError, match="older than the installed"):
        install.install("greeter", m["plugins"], m["state"], trust, version="1.0.0", update=True)
    code, text = run("plugin", "rollback", "greeter", "--plugins-dir", str(m["plugins"]), "--state-dir", str(m["state"]))
    assert code == 0 and "rolled back greeter 1.0.0 (was 1.1.0)" in text, text
    assert "version: 1.0.0" in (live / "plugin.yaml").read_text()
    assert bundle.verify_tree(live) == []
    assert (m["plugins"] / ".precinct" / "versions" / "greeter" / "1.1.0").is_dir()
    # A kept copy edited at rest is refused, and the live one stays.
    tampered = m["plugins"] / ".precinct" / "versions" / "greeter" / "1.1.0" / "plugin.py"
    tampered.write_text("import os\n")
    with pytest.raises(InstallError, match="was modified"):
        install.rollback("greeter", m["plugins"], m["state"])
    assert "version: 1.0.0" in (live / "plugin.yaml").read_text()
    # remove keeps data unless --purge
    data = m["state"] / "plugins" / "greeter" / "data"
    data.mkdir(parents=True)
    (data / "x").write_text("1")
    db = m["state"] / "storage" / "greeter.db"
    db.parent.mkdir(parents=True)
    db.write_text("db")
    code, text = run("plugin", "remove", "greeter", "--plugins-dir", str(m["plugins"]), "--state-dir", str(m["state"]))
    assert code == 0 and "kept data" in text, text
    assert not live.exists() and not (m["plugins"] / ".precinct" / "versions" / "greeter").exists()
    assert data.exists() and db.exists()
    install.install("greeter", m["plugins"], m["state"], trust, version="1.0.0")
    code, text = run("plugin", "remove", "greeter", "--purge", "--plugins-dir", str(m["plugins"]),
                     "--state-dir", str(m["state"]))
    assert code == 0, text
    assert not data.exists() and not db.exists() and not live.exists()
    assert plugin_folders(m["plugins"]) == []
    code, text = run("plugin", "remove", "greeter", "--plugins-dir", str(m["plugins"]), "--state-dir", str(m["state"]))
    assert code == 1 and "not installed" in text


def test_plugin_list_shows_version_source_and_kept_versions(market):
    m = market
    trust = install.Trust(index_url=m["url"], root=m["root"])
    install.install("greeter", m["plugins"], m["state"], trust)
    m["index"].add(packed(m["tmp"], "1.1.0"), m["alice"])
    install.install("greeter", m["plugins"], m["state"], trust, update=True)
    make_plugin(m["plugins"] / "handmade", "0.3.0", name="handmade")
    (m["plugins"] / "broken").mkdir()
    (m["plugins"] / "broken" / "plugin.yaml").write_text("name: broken\n")       # no version
    common = ["--plugins-dir", str(m["plugins"]), "--state-dir", str(m["state"])]
    code, out = run("plugin", "list", *common, "--json")
    assert code == 0, out
    rows = {r["folder"]: r for r in json.loads(out)}
    assert set(rows) == {"greeter", "handmade", "broken"}       # .precinct is not a plugin
    greeter = rows["greeter"]
    assert (greeter["version"], greeter["source"], greeter["kept"]) == ("1.1.0", f"{m['url']} greeter 1.1.0", ["1.0.0"])
    assert (rows["handmade"]["version"], rows["handmade"]["source"]) == ("0.3.0", "local folder")
    assert rows["broken"]["id"] is None and rows["broken"]["state"].startswith("Invalid: ")
    assert rows["greeter"]["state"] is None                     # no supervisor runs on this state dir
    code, out = run("plugin", "list", *common)
    assert code == 0 and "states unknown" in out, out
    line = next(row for row in out.splitlines() if row.startswith("greeter"))
    assert line.split()[:5] == ["greeter", "1.1.0", m["url"], "greeter", "1.1.0"] and "1.0.0" in line, line


def test_install_refuses_tampered_index_and_unsigned_files(market):
    m = market
    target = m["index"].targets_dir / "greeter" / "greeter-1.0.0.roseyplug"
    shutil.copy(rebuild(target, m["tmp"] / "evil.roseyplug", replace={"assets/hello.txt": b"HELLO\n"}), target)
    code, out = run("plugin", "install", "greeter", "--plugins-dir", str(m["plugins"]), "--state-dir", str(m["state"]),
                    "--index", m["url"], "--root", str(m["root"]))
    assert code == 1 and "hash: tampered file rejected" in out, out
    assert not (m["plugins"] / "greeter").exists()
    b = packed(m["tmp"], "1.0.0", name="other")
    code, out = run("plugin", "install", str(b), "--plugins-dir", str(m["plugins"]), "--state-dir", str(m["state"]))
    assert code == 1 and "no publisher signature" in out, out
    code, out = run("plugin", "install", str(b), "--allow-unsigned", "--plugins-dir", str(m["plugins"]),
                    "--state-dir", str(m["state"]))
    assert code == 0 and "installed other 1.0.0" in out, out


def test_install_refuses_a_command_conflict(market, tmp_path):
    m = market
    trust = install.Trust(index_url=m["url"], root=m["root"], allow_unsigned=True)
    install.install("greeter", m["plugins"], m["state"], trust)
    src = make_plugin(tmp_path / "copycat", name="copycat", wheel=False,
                      code="class P:\n    async def initialize(self): pass\n    async def shutdown(self): pass\n")
    (src / "plugin.yaml").write_text(yaml.safe_dump({"name": "copycat", "version": "1.0.0",
                                                     "commands": {"hello": "copycat.hello"}}))
    b, _ = bundle.pack(src, tmp_path / "copycat.roseyplug")
    with pytest.raises(InstallError, match="CommandConflict"):
        install.install(str(b), m["plugins"], m["state"], trust)
    assert plugin_folders(m["plugins"]) == ["greeter"]


def test_kubernetes_output_validates(market, tmp_path):
    m = market
    code, out = run("plugin", "install", "greeter", "--kubernetes", "--namespace", "bots", "--state-dir",
                    str(m["state"]), "--index", m["url"], "--root", str(m["root"]))
    assert code == 0, out
    doc = yaml.safe_load(out)
    assert doc["kind"] == "BotPlugin" and doc["spec"]["bundle"] == {"name": "greeter", "version": "1.0.0"}
    assert doc["metadata"]["annotations"]["precinct.dev/bundle-sha256"] == \
        bundle.sha256_file(m["index"].targets_dir / "greeter" / "greeter-1.0.0.roseyplug")
    path = tmp_path / "greeter-botplugin.yaml"
    path.write_text(out)
    code, text = run("validate", str(path))
    assert code == 0, text
    assert not (m["plugins"]).exists()                            # nothing installed locally


def test_market_cli(tmp_path):
    code, out = run("market", "init", str(tmp_path / "idx"))
    assert code == 0 and "1.root.json" in out, out
    code, out = run("plugin", "keygen", str(tmp_path / "alice"))
    assert code == 0, out
    b = packed(tmp_path)
    code, out = run("market", "add", str(tmp_path / "idx"), str(b), "--key", str(tmp_path / "alice.key"))
    assert code == 0 and "published greeter 1.0.0" in out, out
    code, out = run("plugin", "pack", str(tmp_path / "src-1.0.0-greeter"), "-o", str(tmp_path / "again.roseyplug"),
                    "--sign", str(tmp_path / "alice.key"), "--json")
    assert code == 0 and json.loads(out)["sha256"] == bundle.sha256_file(b), out
    code, out = run("plugin", "verify", str(tmp_path / "again.roseyplug"), "--publisher-key", str(tmp_path / "alice.pub"))
    assert code == 0, out
    code, out = run("market", "add", str(tmp_path / "idx"), str(b), "--key", str(tmp_path / "alice.key"))
    assert code == 1 and "already published" in out, out
    code, out = run("market", "list", str(tmp_path / "idx"), "--json")
    assert code == 0 and json.loads(out) == {"greeter": ["1.0.0"]}, out
    code, out = run("market", "refresh", str(tmp_path / "idx"))
    assert code == 0 and "timestamp version" in out, out
    assert oct((tmp_path / "idx" / "keys").stat().st_mode & 0o777) == "0o700"
    assert oct((tmp_path / "alice.key").stat().st_mode & 0o777) == "0o600"
