"""`precinct plugin {pack,keygen,sign,verify,scan,install,update,rollback,remove,fetch,list}`
and `precinct market {init,add,serve,refresh,list}`.

`register_plugin_commands` adds the plugin commands to the CLI's existing
`plugin` group; `market_app` is its own group. Heavy imports (python-tuf,
bandit) happen inside the commands so `precinct --help` stays fast.

Exit codes: 0 success; 1 a check failed or the operation was refused (the
message names the check); 2 the command line is wrong.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer

STATE_HELP = "State dir (TUF metadata cache, plugin data). Default: as for `precinct up`."
PLUGINS_DIR_HELP = "The single-host plugins dir (the folder `precinct up` watches)."
INDEX_HELP = "Index URL (http(s):// or file://); remembered in the state dir as the default."
ROOT_HELP = "The index's pinned root (its repository/metadata/1.root.json), needed the first time."

market_app = typer.Typer(help="Run a plugin index: a TUF repository of signed releases.", no_args_is_help=True)


def _state(state_dir: Optional[Path]) -> Path:
    from ..settings import HostSettings, SettingsError

    try:
        return HostSettings.load(state_dir=state_dir).default_state_dir()
    except SettingsError as exc:
        _fail(str(exc))


def _fail(message: str, code: int = 1, check: str | None = None, as_json: bool = False, **extra) -> None:
    if as_json:
        typer.echo(json.dumps({"ok": False, "check": check, "error": message, **extra}))
    else:
        typer.echo(f"precinct: {message}", err=True)
    raise typer.Exit(code)


def _guard(fn, as_json: bool = False):
    from ..market.errors import MarketError

    try:
        return fn()
    except MarketError as exc:
        label = f"{exc.check}: " if not as_json else ""
        extra = {"permissions": exc.diff.to_dict()} if getattr(exc, "diff", None) is not None else {}
        _fail(f"{label}{exc}", 1, exc.check, as_json, **extra)


ACCEPT_HELP = ("Apply a version that may do more than the installed one (its permission diff is printed) "
               "without asking. Without it the diff is printed and you are asked; with no terminal to ask "
               "(or with --json) such a change is refused.")


def _consent(accept: bool, as_json: bool):
    """How the CLI answers install.check_consent: print the diff, then the flag
    or the person at the terminal decides; nobody to ask means no."""

    def ask(diff) -> bool:
        if not as_json:
            for line in diff.lines():
                typer.echo(line)
        if accept:
            if not as_json:
                typer.echo("accepted (--accept-permissions)")
            return True
        if as_json or not sys.stdin.isatty():
            return False
        return typer.confirm("Apply these changes?", default=False)

    return ask


def _policy(allow_warnings: bool, block_on: str):
    from ..market.scan import SEVERITIES, Policy

    if block_on not in (*SEVERITIES, "none"):
        _fail(f"--block-on must be one of {', '.join((*SEVERITIES, 'none'))}", 2)
    return Policy(block_on=block_on, allow_warnings=allow_warnings)


def _trust(index: Optional[str], root: Optional[Path], publisher_key: list[Path], signature: Optional[Path],
           allow_unsigned: bool):
    from ..market.install import Trust

    return Trust(index_url=index, root=root, publisher_keys=list(publisher_key or []), signature=signature,
                 allow_unsigned=allow_unsigned)


def register_plugin_commands(plugin_app: typer.Typer) -> None:
    """Add the bundle/trust/install commands to the `precinct plugin` group."""

    @plugin_app.command("pack")
    def pack(
        folder: Path = typer.Argument(..., help="Plugin folder with plugin.yaml (or Rosey's manifest.yaml) and code."),
        output: Optional[Path] = typer.Option(None, "--output", "-o", help="Bundle path or folder (default: ./<id>-<version>.roseyplug)."),
        sign_key: Optional[Path] = typer.Option(None, "--sign", help="Also sign it with this publisher key (writes BUNDLE.sig)."),
        as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
    ) -> None:
        """Pack a folder into a deterministic .roseyplug with a per-file sha256 manifest (offline)."""
        from ..market import bundle

        path, info = _guard(lambda: bundle.pack(folder, output), as_json)
        sig_path = None
        if sign_key:
            sig_path = _guard(lambda: _sign(path, sign_key), as_json)
        if as_json:
            typer.echo(json.dumps({"ok": True, "bundle": str(path), "id": info.id, "version": info.version,
                                   "sha256": info.sha256, "size": info.size, "files": len(info.files),
                                   "wheels": [w.path for w in info.wheels],
                                   "signature": str(sig_path) if sig_path else None}))
        else:
            typer.echo(f"packed {info.id} {info.version}: {path} ({info.size:,} bytes, {len(info.files)} files, "
                       f"{len(info.wheels)} wheel(s)) sha256 {info.sha256}")
            if sig_path:
                typer.echo(f"signed: {sig_path}")

    @plugin_app.command("keygen")
    def keygen(
        path: Path = typer.Argument(..., help="Private key file to create (NAME.key); NAME.pub is written next to it."),
    ) -> None:
        """Create a publisher Ed25519 key pair (set $PRECINCT_KEY_PASSPHRASE to encrypt the private key)."""
        from ..market import keys

        signer, pub = _guard(lambda: keys.generate(path))
        typer.echo(f"private key: {path if path.suffix == '.key' else path.with_name(path.name + '.key')} (keep it secret)")
        typer.echo(f"public key:  {pub} keyid {signer.public_key.keyid}")

    @plugin_app.command("sign")
    def sign(
        bundle_path: Path = typer.Argument(..., help="A .roseyplug bundle."),
        key: Path = typer.Option(..., "--key", help="Publisher private key (.key)."),
    ) -> None:
        """Write BUNDLE.sig: the publisher's Ed25519 signature over this bundle's id, version and sha256."""
        sig_path = _guard(lambda: _sign(bundle_path, key))
        typer.echo(f"signed: {sig_path}")

    @plugin_app.command("verify")
    def verify(
        target: str = typer.Argument(..., help="A .roseyplug file, or a plugin NAME in the index."),
        version: Optional[str] = typer.Option(None, "--version", help="Release to verify (NAME; default: latest)."),
        publisher_key: list[Path] = typer.Option([], "--publisher-key", help="Trusted publisher public key (FILE); repeatable."),
        signature: Optional[Path] = typer.Option(None, "--signature", help="Signature file (default: FILE.sig)."),
        allow_unsigned: bool = typer.Option(False, "--allow-unsigned", help="Only check the archive of an unsigned FILE."),
        index: Optional[str] = typer.Option(None, "--index", help=INDEX_HELP),
        root: Optional[Path] = typer.Option(None, "--root", help=ROOT_HELP),
        state_dir: Optional[Path] = typer.Option(None, "--state-dir", help=STATE_HELP),
        as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
    ) -> None:
        """Check a bundle: archive safety, every file's sha256, the manifest, and its signature
        (TUF for NAME: hashes, rollback, freeze, publisher key). Says exactly which check failed."""
        from ..market import bundle
        from ..market.install import fetch_source

        trust = _trust(index, root, publisher_key, signature, allow_unsigned)
        lines: list[str] = []

        def run():
            import tempfile

            with tempfile.TemporaryDirectory(prefix="precinct-verify-") as tmp:
                fetched = fetch_source(target, _state(state_dir), trust, Path(tmp) / "work", version)
                info = bundle.inspect(fetched.path)
                if fetched.index_url:
                    lines.append(f"signature: TUF metadata of {fetched.index_url} verified (publisher key "
                                 f"{fetched.publisher[:16]}..., not rolled back, not expired)")
                elif fetched.publisher:
                    lines.append(f"signature: publisher key {fetched.publisher[:16]}... signed this bundle")
                else:
                    lines.append("signature: NONE (unsigned; --allow-unsigned)")
                lines.append(f"archive: safe ({len(info.files)} files, {info.size:,} bytes), every sha256 matches "
                             f"{bundle.FILES_MANIFEST}")
                lines.append(f"manifest: {info.id} {info.version} valid")
                return info, fetched

        info, fetched = _guard(run, as_json)
        if as_json:
            typer.echo(json.dumps({"ok": True, "id": info.id, "version": info.version, "sha256": info.sha256,
                                   "publisher": fetched.publisher, "index": fetched.index_url, "checks": lines}))
        else:
            for line in lines:
                typer.echo(line)
            typer.echo(f"OK {info.id} {info.version} sha256 {info.sha256}")

    @plugin_app.command("index")
    def index_cmd(
        url: Optional[str] = typer.Argument(None, help="Index URL to use from now on (default: show the current one)."),
        root: Optional[Path] = typer.Option(None, "--root", help=ROOT_HELP),
        state_dir: Optional[Path] = typer.Option(None, "--state-dir", help=STATE_HELP),
        as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
    ) -> None:
        """Pin an index (URL and its root) as this state dir's default, or show it: the index later
        commands and the dashboard's marketplace page use. Lists its plugins, verified from the root."""
        from ..market.client import default_url, open_index

        state = _state(state_dir)
        if url is None and default_url(state) is None:
            _fail("no index configured: pass URL --root ROOT.json", 1, "root", as_json)

        def run():
            client = open_index(state, url, root)
            return client, client.publishers()

        client, publishers = _guard(run, as_json)
        if as_json:
            typer.echo(json.dumps({"ok": True, "index": client.url, "plugins": sorted(publishers)}))
            return
        typer.echo(f"index {client.url} (verified from the pinned root; the marketplace page uses it)")
        typer.echo(f"plugins: {', '.join(sorted(publishers)) or '(none yet)'}")

    @plugin_app.command("scan")
    def scan(
        target: Path = typer.Argument(..., help="A plugin folder or a .roseyplug bundle."),
        as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
        allow_warnings: bool = typer.Option(False, "--allow-warnings", help="Medium findings do not fail the scan."),
        block_on: str = typer.Option("high", "--block-on", help="Lowest severity that blocks: high, medium, low or none."),
    ) -> None:
        """Bandit (nosec ignored) + imports/calls versus declared permissions. Exit 1 when the policy blocks."""
        from ..spec import requirements as reqs
        from ..market.scan import scan_path

        policy = _policy(allow_warnings, block_on)
        report = _guard(lambda: scan_path(target), as_json)
        if as_json:
            typer.echo(json.dumps(report.to_dict(policy), indent=2))
        else:
            for finding in report.findings:
                typer.echo(str(finding))
            for line in reqs.describe(report.plugin, report.dependencies):
                typer.echo(f"{line} (dependencies are not scanned: the sandbox confines them like the plugin)")
            typer.echo(report.summary(policy))
        raise typer.Exit(0 if report.passes(policy) else 1)

    def _install_like(action: str):
        def command(
            source: str = typer.Argument(..., help="Plugin NAME (from the index), a .roseyplug FILE, or its URL."),
            version: Optional[str] = typer.Option(None, "--version", help="Release to install (NAME; default: latest)."),
            plugins_dir: Path = typer.Option(Path("plugins"), "--plugins-dir", help=PLUGINS_DIR_HELP),
            state_dir: Optional[Path] = typer.Option(None, "--state-dir", help=STATE_HELP),
            index: Optional[str] = typer.Option(None, "--index", help=INDEX_HELP),
            root: Optional[Path] = typer.Option(None, "--root", help=ROOT_HELP),
            publisher_key: list[Path] = typer.Option([], "--publisher-key", help="Trusted publisher public key for FILE/URL; repeatable."),
            signature: Optional[Path] = typer.Option(None, "--signature", help="Signature file for FILE (default: FILE.sig)."),
            allow_unsigned: bool = typer.Option(False, "--allow-unsigned", help="Install an unsigned FILE/URL (your own build)."),
            allow_warnings: bool = typer.Option(False, "--allow-warnings", help="Install despite medium scan findings."),
            block_on: str = typer.Option("high", "--block-on", help="Lowest scan severity that blocks."),
            allow_downgrade: bool = typer.Option(False, "--allow-downgrade", help="Accept an older version (update)."),
            kubernetes: bool = typer.Option(False, "--kubernetes", help="Print a BotPlugin for the verified release instead."),
            namespace: str = typer.Option("default", "--namespace", help="Kubernetes namespace for --kubernetes."),
            accept_permissions: bool = typer.Option(False, "--accept-permissions", help=ACCEPT_HELP),
            as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
        ) -> None:
            from ..market.install import botplugin_manifest, install

            policy = _policy(allow_warnings, block_on)
            trust = _trust(index, root, publisher_key, signature, allow_unsigned)
            state = _state(state_dir)
            if kubernetes:
                text = _guard(lambda: botplugin_manifest(source, state, trust, namespace, policy, version), as_json)
                sys.stdout.write(text)
                return
            outcome = _guard(lambda: install(source, plugins_dir, state, trust, policy, version,
                                             update=(action == "update"), allow_downgrade=allow_downgrade,
                                             consent=_consent(accept_permissions, as_json)), as_json)
            _report(outcome, policy, as_json)

        command.__doc__ = {
            "install": "Verify, scan and install a plugin atomically into the plugins dir (live if `precinct up` runs).",
            "update": "Replace an installed plugin with a newer verified release, atomically; the old one is kept for "
                      "rollback. Prints what the new version may do that the installed one may not, and asks "
                      "(or needs --accept-permissions) before applying such a change.",
        }[action]
        return command

    plugin_app.command("install")(_install_like("install"))
    plugin_app.command("update")(_install_like("update"))

    @plugin_app.command("rollback")
    def rollback_cmd(
        plugin_id: str = typer.Argument(..., help="Installed plugin id."),
        to: Optional[str] = typer.Option(None, "--to", help="Kept version to restore (default: the previous one)."),
        plugins_dir: Path = typer.Option(Path("plugins"), "--plugins-dir", help=PLUGINS_DIR_HELP),
        state_dir: Optional[Path] = typer.Option(None, "--state-dir", help=STATE_HELP),
        accept_permissions: bool = typer.Option(False, "--accept-permissions", help=ACCEPT_HELP),
        as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
    ) -> None:
        """Swap the previous kept version back in, atomically (checked against its file manifest first).
        A kept version that may do more than the live one is asked about, as for update."""
        from ..market.install import rollback

        outcome = _guard(lambda: rollback(plugin_id, plugins_dir, _state(state_dir), to,
                                          consent=_consent(accept_permissions, as_json)), as_json)
        _report(outcome, None, as_json)

    @plugin_app.command("fetch")
    def fetch_cmd(
        name: str = typer.Argument(..., help="Plugin id in the index."),
        version: str = typer.Argument(..., help="Exact release version."),
        dest: Path = typer.Option(..., "--dest", help="Empty folder to unpack the verified release into."),
        index: str = typer.Option(..., "--index", help="Index URL (http(s):// or file://)."),
        root: Optional[Path] = typer.Option(None, "--root", help=ROOT_HELP + " Default: $PRECINCT_INDEX_ROOT, "
                                            "or the JSON in $PRECINCT_INDEX_ROOT_JSON."),
        state_dir: Optional[Path] = typer.Option(None, "--state-dir", help="Keep TUF metadata here between runs "
                                                 "(default: a throwaway dir)."),
        allow_warnings: bool = typer.Option(False, "--allow-warnings", help="Accept medium scan findings."),
        block_on: str = typer.Option("high", "--block-on", help="Lowest scan severity that blocks."),
        no_deps: bool = typer.Option(False, "--no-deps", help="Do not unpack the bundle's wheels into .deps/."),
        as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
    ) -> None:
        """Verify one release (TUF chain, bundle manifest, scan) and unpack it into DEST, for a Pod's init
        container. Nothing is written to DEST unless every check passed; exit 1 with the failed check."""
        from ..market.fetch import fetch_release

        policy = _policy(allow_warnings, block_on)
        info = _guard(lambda: fetch_release(index, name, version, dest, root=root, state_dir=state_dir,
                                            policy=policy, install_deps=not no_deps), as_json)
        if as_json:
            typer.echo(json.dumps({"ok": True, "id": info.id, "version": info.version, "sha256": info.sha256,
                                   "dest": str(dest)}))
        else:
            typer.echo(f"fetched {info.id} {info.version} sha256 {info.sha256} -> {dest}")

    @plugin_app.command("list")
    def list_cmd(
        plugins_dir: Path = typer.Option(Path("plugins"), "--plugins-dir", help=PLUGINS_DIR_HELP),
        state_dir: Optional[Path] = typer.Option(None, "--state-dir", help=STATE_HELP),
        as_json: bool = typer.Option(False, "--json", help="Print a JSON list."),
    ) -> None:
        """Every plugin in the plugins dir: id, installed version, source, kept versions, and its state in a
        running `precinct up` (`-` when none runs on the state dir)."""
        from ..runtime.control import ControlError, call
        from ..market.install import installed

        state = _state(state_dir)
        try:
            states = {pid: p.get("state", "?") for pid, p in call(state, "status").get("plugins", {}).items()}
        except ControlError:
            states = None
        rows = installed(plugins_dir, state, states)
        if as_json:
            typer.echo(json.dumps(rows, indent=2))
            return
        if not rows:
            typer.echo(f"no plugins in {plugins_dir}")
            return
        table = [("PLUGIN", "VERSION", "SOURCE", "KEPT", "STATE")] + [
            (r["id"] or f"({r['folder']})", r["version"] or "-", r["source"] or "-", ", ".join(r["kept"]) or "-",
             r["state"] or "-") for r in rows]
        widths = [max(len(row[i]) for row in table) for i in range(4)]
        for row in table:
            typer.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths)) + "  " + row[4])
        if states is None:
            typer.echo(f"(no `precinct up` runs on {state}: states unknown)")

    @plugin_app.command("remove")
    def remove_cmd(
        plugin_id: str = typer.Argument(..., help="Installed plugin id."),
        purge: bool = typer.Option(False, "--purge", help="Also delete its data (storage database and data dir)."),
        plugins_dir: Path = typer.Option(Path("plugins"), "--plugins-dir", help=PLUGINS_DIR_HELP),
        state_dir: Optional[Path] = typer.Option(None, "--state-dir", help=STATE_HELP),
        as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
    ) -> None:
        """Remove a plugin's folder and kept versions (a running supervisor stops it and revokes its account)."""
        from ..market.install import remove

        outcome = _guard(lambda: remove(plugin_id, plugins_dir, _state(state_dir), purge), as_json)
        _report(outcome, None, as_json)


def _sign(bundle_path: Path, key: Path) -> Path:
    from ..market import bundle, keys

    info = bundle.inspect(bundle_path)
    signer = keys.load_signer(key)
    doc = keys.sign_bundle(signer, info.id, info.version, info.sha256)
    sig_path = bundle_path.with_name(bundle_path.name + ".sig")
    sig_path.write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")
    return sig_path


def _report(outcome, policy, as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps({"ok": True, **outcome.to_dict(policy)}))
        return
    if outcome.scan is not None and policy is not None:
        for finding in outcome.scan.findings:
            if finding.severity != "low":
                typer.echo(str(finding))
    if outcome.permissions is not None and not outcome.permissions.needs_consent and outcome.permissions.changes:
        for line in outcome.permissions.lines():     # nothing to accept (a widening diff was printed when asked)
            typer.echo(line)
    verb = {"installed": "installed", "updated": "updated", "rolled-back": "rolled back", "removed": "removed",
            "unchanged": "unchanged:"}[outcome.action]
    prev = f" (was {outcome.previous})" if outcome.previous and outcome.action != "removed" else ""
    typer.echo(f"{verb} {outcome.id} {outcome.version}{prev} -> {outcome.folder}".replace("  ", " "))
    for note in outcome.notes:
        typer.echo(f"  {note}")


# -- market -------------------------------------------------------------------------------


@market_app.command("init")
def market_init(
    folder: Path = typer.Argument(..., help="New index folder (keys/ and repository/ are created in it)."),
) -> None:
    """Create an index: role keys and signed root/targets/snapshot/timestamp metadata."""
    from ..market.index import Index

    root = _guard(lambda: Index(folder).init())
    typer.echo(f"index created in {folder}")
    typer.echo(f"pin this root on every client (--root): {root}")
    typer.echo(f"keep {folder / 'keys'} private; only {folder / 'repository'} is served")


@market_app.command("add")
def market_add(
    folder: Path = typer.Argument(..., help="Index folder."),
    bundle_path: Path = typer.Argument(..., help="The .roseyplug to publish."),
    key: Path = typer.Option(..., "--key", help="The publisher's private key; the first release binds the plugin to it."),
) -> None:
    """Publish a signed release: the publisher key signs the plugin's delegated TUF role."""
    from ..market import keys
    from ..market.index import Index, role_for

    signer = _guard(lambda: keys.load_signer(key))
    info = _guard(lambda: Index(folder).add(bundle_path, signer))
    typer.echo(f"published {info.id} {info.version} (sha256 {info.sha256}) in role {role_for(info.id)}, "
               f"publisher {signer.public_key.keyid[:16]}...")


@market_app.command("refresh")
def market_refresh(
    folder: Path = typer.Argument(..., help="Index folder."),
) -> None:
    """Re-sign the timestamp (run at least daily, e.g. from cron; `market serve` does it itself)."""
    from ..market.index import Index

    ts = _guard(lambda: Index(folder).refresh())
    typer.echo(f"timestamp version {ts.signed.version}, expires {ts.signed.expires.isoformat()}")


@market_app.command("list")
def market_list(
    folder: Path = typer.Argument(..., help="Index folder."),
    as_json: bool = typer.Option(False, "--json", help="Print as JSON."),
) -> None:
    """List published plugins and their versions."""
    from ..market.index import Index

    listing = _guard(lambda: Index(folder).listing())
    if as_json:
        typer.echo(json.dumps(listing))
        return
    for plugin_id, versions in listing.items():
        typer.echo(f"{plugin_id}: {', '.join(versions)}")


@market_app.command("serve")
def market_serve(
    folder: Path = typer.Argument(..., help="Index folder."),
    port: int = typer.Option(8765, "--port", help="TCP port on 127.0.0.1 (0 = any free port)."),
    no_refresh: bool = typer.Option(False, "--no-refresh", help="Do not re-sign the timestamp while serving."),
) -> None:
    """Serve the index's repository/ as static files on loopback (never keys/). Ctrl-C stops."""
    from ..market.index import serve

    def ready(address) -> None:
        typer.echo(f"serving {folder / 'repository'} on http://{address[0]}:{address[1]}/ (Ctrl-C to stop)")

    try:
        _guard(lambda: serve(folder, port, auto_refresh=not no_refresh, ready=ready))
    except KeyboardInterrupt:
        pass
    except OSError as exc:
        _fail(f"cannot serve on port {port}: {exc.strerror or exc}")
