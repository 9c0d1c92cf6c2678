"""Issue 8, item 6: the operator takes bundles from the same index.

- `precinct plugin fetch --index URL NAME VERSION --dest DIR [--root ROOT.json]`
  verifies (TUF chain, bundle manifest, scan) before anything lands in DIR;
- a BotPlugin with spec.bundle is verified before any Pod starts; otherwise
  Ready=False with reason SignatureInvalid and nothing is applied.

A real TUF index (tests/test_market.py's builders) served over HTTP on
loopback; the Kubernetes API is tests/k8s_standin.py.
"""

from __future__ import annotations

import copy
import shutil
import threading
from pathlib import Path
from typing import Any

import pytest
from tuf.api.metadata import TargetFile

from precinct import conditions as cond
from precinct.k8s import render as r
from precinct.market import index, keys
from precinct.market.fetch import fetch_release

from k8s_standin import StandIn
from test_market import packed, run
from test_operator import NS, Harness

PLUGIN = "greeter"


def poison(served) -> None:
    """Someone who can write to the repository but holds no delegated key
    adds 6.6.6 and re-signs the plugin's role with their own key."""
    idx, tmp = served["index"], served["tmp"]
    mallory, _ = keys.generate(tmp / "keys" / "mallory.key")
    evil = packed(tmp, "6.6.6")
    shutil.copy(evil, idx.targets_dir / PLUGIN / evil.name)
    role = idx.load(f"plugin-{PLUGIN}")
    name = f"{PLUGIN}/{evil.name}"
    role.signed.targets[name] = TargetFile.from_file(name, str(evil))
    role.signed.version += 1
    idx._write(f"plugin-{PLUGIN}", role, mallory)
    idx._bump_snapshot({f"plugin-{PLUGIN}": role.signed.version, "targets": idx.load("targets").signed.version})


@pytest.fixture
def served(tmp_path):
    """greeter 1.0.0 signed by its publisher alice, served over HTTP on loopback."""
    idx = index.Index(tmp_path / "index")
    root = idx.init()
    alice, _ = keys.generate(tmp_path / "keys" / "alice.key")
    idx.add(packed(tmp_path, "1.0.0"), alice)

    ready, address = threading.Event(), {}

    def on_ready(addr):
        address["addr"] = addr
        ready.set()

    threading.Thread(target=index.serve, args=(idx.folder, 0), kwargs={"ready": on_ready}, daemon=True).start()
    assert ready.wait(5)
    host, port = address["addr"]
    return {"url": f"http://{host}:{port}", "root": root, "tmp": tmp_path, "index": idx}


# -- precinct plugin fetch ----------------------------------------------------------------


def test_fetch_verifies_then_unpacks_code_and_wheels(served, tmp_path):
    dest = tmp_path / "pod" / "plugin"
    dest.mkdir(parents=True)                       # the Pod's emptyDir exists and is empty
    code, out = run("plugin", "fetch", "--index", served["url"], PLUGIN, "1.0.0", "--dest", str(dest),
                    "--root", str(served["root"]))
    assert code == 0, out
    assert f"fetched {PLUGIN} 1.0.0" in out
    assert (dest / "plugin.yaml").is_file() and (dest / "plugin.py").is_file()
    assert (dest / ".deps" / "tinydep" / "__init__.py").is_file()   # wheels unpacked, offline


@pytest.mark.parametrize("version,check", [("9.9.9", "not-found"), ("6.6.6", "signature")])
def test_fetch_refuses_with_one_line_and_leaves_dest_empty(served, tmp_path, version, check):
    if version == "6.6.6":
        poison(served)
    dest = tmp_path / "dest"
    code, out = run("plugin", "fetch", "--index", served["url"], PLUGIN, version, "--dest", str(dest),
                    "--root", str(served["root"]))
    assert code == 1
    lines = [line for line in out.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"precinct: {check}:"), out
    assert not dest.exists() or not any(dest.iterdir())


def test_fetch_needs_a_pinned_root_and_refuses_a_foreign_one(served, tmp_path, monkeypatch):
    monkeypatch.delenv("PRECINCT_INDEX_ROOT", raising=False)
    monkeypatch.delenv("PRECINCT_INDEX_ROOT_JSON", raising=False)
    code, out = run("plugin", "fetch", "--index", served["url"], PLUGIN, "1.0.0", "--dest", str(tmp_path / "a"))
    assert code == 1 and "no pinned root" in out
    other = index.Index(tmp_path / "other").init()
    code, out = run("plugin", "fetch", "--index", served["url"], PLUGIN, "1.0.0", "--dest", str(tmp_path / "b"),
                    "--root", str(other))
    assert code == 1 and "precinct: signature:" in out, out
    assert not (tmp_path / "b").exists() or not any((tmp_path / "b").iterdir())
    # The root the operator passes to the init container, as JSON in the environment.
    monkeypatch.setenv("PRECINCT_INDEX_ROOT_JSON", served["root"].read_text())
    info = fetch_release(served["url"], PLUGIN, "1.0.0", tmp_path / "c", install_deps=False)
    assert info.version == "1.0.0" and (tmp_path / "c" / "plugin.py").is_file()


# -- the operator -------------------------------------------------------------------------


def bundle_plugin(name: str, version: str) -> dict[str, Any]:
    return {"apiVersion": "precinct.dev/v1alpha1", "kind": "BotPlugin", "metadata": {"name": name, "namespace": NS},
            "spec": {"version": version, "bundle": {"name": PLUGIN, "version": version},
                     "commands": {"hello": f"{name}.hello"}}}


@pytest.fixture
async def k8s() -> Any:
    server = await StandIn().start()
    await server.put({"apiVersion": "v1", "kind": "Namespace", "metadata": {
        "name": NS, "labels": {"kubernetes.io/metadata.name": NS}}})
    yield server
    await server.stop()


@pytest.fixture
async def h(k8s: StandIn, served, tmp_path: Path) -> Any:
    harness = Harness(k8s, tmp_path / "state")
    harness.ctx.settings = r.Settings(index_url=served["url"], index_root_json=served["root"].read_text())
    yield harness
    await harness.close()


async def test_signed_release_is_verified_then_rendered_with_the_pinned_root(h: Harness) -> None:
    await h.create(bundle_plugin("hello", "1.0.0"))
    await h.reconcile("hello")
    dep = h.deployment("hello")
    init = dep["spec"]["template"]["spec"]["initContainers"][0]
    assert init["args"][:4] == ["--index", h.ctx.settings.index_url, PLUGIN, "1.0.0"]
    env = {e["name"]: e.get("value") for e in init["env"]}
    assert env["PRECINCT_INDEX_ROOT_JSON"] == h.ctx.settings.index_root_json
    assert h.condition("hello", cond.READY)["reason"] != cond.SIGNATURE_INVALID


@pytest.mark.parametrize("version,words", [("9.9.9", "is not a signed release"),
                                           ("6.6.6", "signature check failed")])
async def test_unverifiable_release_starts_no_pod_and_says_signature_invalid(h: Harness, served, version,
                                                                              words) -> None:
    if version == "6.6.6":
        poison(served)
    await h.create(bundle_plugin("hello", version))
    await h.reconcile("hello")
    ready = h.condition("hello", cond.READY)
    assert ready["status"] == "False" and ready["reason"] == cond.SIGNATURE_INVALID, ready
    assert words in ready["message"], ready
    assert h.condition("hello", cond.STALLED)["status"] == "True"
    assert h.k8s.get("Deployment", NS, "hello") is None
    assert not h.k8s.all("Secret", NS)


async def test_a_bad_update_keeps_the_verified_deployment(h: Harness, served) -> None:
    await h.create(bundle_plugin("hello", "1.0.0"))
    await h.reconcile("hello")
    poison(served)
    h.ctx.bundles._ok.clear()   # (successes are cached for a while; the poisoned role must be re-read)
    before = copy.deepcopy(h.deployment("hello")["spec"]["template"])
    body = h.body("hello")
    body["spec"]["bundle"]["version"] = body["spec"]["version"] = "6.6.6"
    await h.api.patch("BotPlugin", NS, "hello", {"spec": body["spec"]})
    await h.reconcile("hello")
    assert h.condition("hello", cond.READY)["reason"] == cond.SIGNATURE_INVALID
    assert h.deployment("hello")["spec"]["template"] == before


async def test_no_pinned_root_fails_closed(h: Harness) -> None:
    h.ctx.settings = r.Settings(index_url=h.ctx.settings.index_url)
    h.ctx.bundles = None
    await h.create(bundle_plugin("hello", "1.0.0"))
    await h.reconcile("hello")
    ready = h.condition("hello", cond.READY)
    assert ready["reason"] == cond.SIGNATURE_INVALID and "index_root_json" in ready["message"]
    assert h.k8s.get("Deployment", NS, "hello") is None
