"""Static checks before install: bandit, plus a comparison of what the code
imports and calls with the permissions its manifest declares.

This is advice to the operator, not a security boundary: Python is too
dynamic for a static scan to be complete, and the sandbox enforces the
permissions whatever the code does. What the scan adds is an early, readable
"this plugin says it needs no network but imports requests" before anything
runs, and a list of the constructs a reviewer must read by hand.

Severities and the default policy:

| severity | examples | default policy |
|---|---|---|
| high   | network library without `http_requests`; file writes without `file_system_write`; code that does not parse; bandit HIGH (confidence >= medium) | **block** |
| medium | `exec`/`eval`/`compile`/`__import__`, `importlib`, `ctypes`, `subprocess`, `os.system`: unverifiable; native code outside wheels; other bandit MEDIUM/HIGH | **warn**: install needs `--allow-warnings` |
| low    | bandit LOW (e.g. `random` is not for secrets) | shown |

`# nosec` comments are ignored: they are the plugin author's opinion of
their own code.
"""

from __future__ import annotations

import ast
import logging
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..spec.load import load_path
from ..spec.model import Manifest, Permission
from .errors import MarketError, ScanBlocked

SEVERITIES = ("low", "medium", "high")

NETWORK_MODULES = {
    "socket", "ssl", "urllib.request", "urllib3", "http.client", "requests", "aiohttp", "httpx", "websockets",
    "websocket", "ftplib", "smtplib", "poplib", "imaplib", "telnetlib", "xmlrpc.client", "asyncssh", "paramiko",
    "pycurl", "tornado.httpclient", "grpc",
}
NETWORK_CALLS = {"asyncio.open_connection", "asyncio.create_connection", "urllib.request.urlopen"}
UNVERIFIABLE_MODULES = {"importlib", "ctypes", "cffi", "subprocess", "pty", "multiprocessing", "marshal", "pickle",
                        "code", "codeop", "runpy", "zipimport"}
UNVERIFIABLE_BUILTINS = {"exec", "eval", "compile", "__import__"}
UNVERIFIABLE_CALLS = {"os.system", "os.popen", "os.fork", "os.forkpty", "os.posix_spawn", "os.posix_spawnp",
                      "asyncio.create_subprocess_exec", "asyncio.create_subprocess_shell"}
UNVERIFIABLE_PREFIXES = ("os.exec", "os.spawn")
WRITE_CALLS = {
    "os.remove", "os.unlink", "os.rmdir", "os.removedirs", "os.rename", "os.renames", "os.replace", "os.mkdir",
    "os.makedirs", "os.truncate", "os.symlink", "os.link", "os.chmod", "os.chown", "os.mkfifo", "os.mknod",
    "os.open", "os.write", "shutil.copy", "shutil.copy2", "shutil.copyfile", "shutil.copytree", "shutil.move",
    "shutil.rmtree", "shutil.make_archive", "shutil.unpack_archive", "tempfile.mkstemp", "tempfile.mkdtemp",
    "tempfile.NamedTemporaryFile", "tempfile.TemporaryFile", "tempfile.TemporaryDirectory",
    "tempfile.SpooledTemporaryFile",
}
WRITE_METHODS = {"write_text", "write_bytes", "touch", "unlink", "rmdir", "mkdir", "symlink_to", "hardlink_to",
                 "rename", "replace"}
WRITE_MODE_CHARS = set("wax+")
NATIVE_SUFFIXES = (".so", ".pyd", ".dll", ".dylib")


@dataclass(frozen=True)
class Finding:
    severity: str
    check: str        # e.g. permission:http_requests, unverifiable:eval, bandit:B602
    file: str
    line: int
    message: str

    def __str__(self) -> str:
        return f"{self.severity.upper():6} {self.file}:{self.line}: [{self.check}] {self.message}"


@dataclass(frozen=True)
class Policy:
    """What blocks an install. High findings always block unless
    block_on is raised to 'none'; warnings block unless allowed."""

    block_on: str = "high"
    allow_warnings: bool = False

    def blocks(self, finding: Finding) -> bool:
        if self.block_on == "none":
            return False
        return SEVERITIES.index(finding.severity) >= SEVERITIES.index(self.block_on)

    def is_warning(self, finding: Finding) -> bool:
        return not self.blocks(finding) and finding.severity != "low"


@dataclass
class ScanReport:
    plugin: str
    files: list[str] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    dependencies: list[str] = field(default_factory=list)   # the manifest's; installed as wheels, not scanned

    def blocking(self, policy: Policy) -> list[Finding]:
        return [f for f in self.findings if policy.blocks(f)]

    def warnings(self, policy: Policy) -> list[Finding]:
        return [f for f in self.findings if policy.is_warning(f)]

    def verdict(self, policy: Policy) -> str:
        if self.blocking(policy):
            return "blocked"
        if self.warnings(policy):
            return "allowed-with-warnings" if policy.allow_warnings else "blocked-warnings"
        return "clean"

    def passes(self, policy: Policy) -> bool:
        return self.verdict(policy) in ("clean", "allowed-with-warnings")

    def to_dict(self, policy: Policy) -> dict:
        return {"plugin": self.plugin, "verdict": self.verdict(policy), "policy": asdict(policy),
                "files": self.files, "findings": [asdict(f) for f in self.findings],
                "dependencies": self.dependencies}

    def summary(self, policy: Policy) -> str:
        counts = {s: sum(1 for f in self.findings if f.severity == s) for s in SEVERITIES}
        verdict = self.verdict(policy)
        text = {"blocked": "blocked by policy", "blocked-warnings": "blocked: warnings need --allow-warnings",
                "allowed-with-warnings": "allowed with warnings", "clean": "passes"}[verdict]
        return (f"{self.plugin}: {len(self.files)} file(s) scanned; {counts['high']} high, {counts['medium']} medium, "
                f"{counts['low']} low; {text} (block on {policy.block_on})")

    def enforce(self, policy: Policy) -> None:
        if self.passes(policy):
            return
        worst = self.blocking(policy) or self.warnings(policy)
        raise ScanBlocked(f"scan {self.verdict(policy)}: {len(worst)} finding(s), first: {worst[0]}")


# -- the permission check ---------------------------------------------------------


class _Visitor(ast.NodeVisitor):
    """Collects imports and calls, resolving `import x as y` / `from x import y`."""

    def __init__(self, rel: str, granted: frozenset[Permission]) -> None:
        self.rel = rel
        self.granted = granted
        self.aliases: dict[str, str] = {}
        self.findings: list[Finding] = []

    def _add(self, node: ast.AST, severity: str, check: str, message: str) -> None:
        self.findings.append(Finding(severity, check, self.rel, getattr(node, "lineno", 0), message))

    def _module(self, node: ast.AST, name: str) -> None:
        for mod in NETWORK_MODULES:
            if name == mod or name.startswith(mod + "."):
                if Permission.http_requests not in self.granted:
                    self._add(node, "high", "permission:http_requests",
                              f"imports {name} (network) but the manifest does not declare http_requests")
                return
        root = name.split(".", 1)[0]
        if root in UNVERIFIABLE_MODULES:
            self._add(node, "medium", f"unverifiable:{root}",
                      f"imports {name}: what it loads or runs cannot be checked statically")

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._module(node, alias.name)
            self.aliases[alias.asname or alias.name.split(".", 1)[0]] = alias.name if alias.asname else alias.name.split(".", 1)[0]
        self.generic_visit(node)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level == 0 and node.module:
            self._module(node, node.module)
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                if full in NETWORK_MODULES:
                    self._module(node, full)
                self.aliases[alias.asname or alias.name] = full
        self.generic_visit(node)

    def _qualname(self, func: ast.expr) -> str | None:
        parts = []
        while isinstance(func, ast.Attribute):
            parts.append(func.attr)
            func = func.value
        if not isinstance(func, ast.Name):
            return None
        head = self.aliases.get(func.id, func.id)
        return ".".join([head, *reversed(parts)])

    def _write(self, node: ast.AST, what: str) -> None:
        if Permission.file_system_write not in self.granted:
            self._add(node, "high", "permission:file_system_write",
                      f"{what} writes files but the manifest does not declare file_system_write")

    def visit_Call(self, node: ast.Call) -> None:
        name = self._qualname(node.func)
        if isinstance(node.func, ast.Name) and node.func.id in UNVERIFIABLE_BUILTINS and node.func.id not in self.aliases:
            self._add(node, "medium", f"unverifiable:{node.func.id}",
                      f"{node.func.id}() runs code the scan cannot see")
        elif name in UNVERIFIABLE_CALLS or (name and name.startswith(UNVERIFIABLE_PREFIXES)):
            self._add(node, "medium", f"unverifiable:{name}", f"{name}() starts other programs")
        if name in NETWORK_CALLS and Permission.http_requests not in self.granted:
            self._add(node, "high", "permission:http_requests",
                      f"{name}() opens a network connection but the manifest does not declare http_requests")
        if name in WRITE_CALLS:
            self._write(node, f"{name}()")
        elif name in ("open", "io.open", "builtins.open", "codecs.open") or (
                isinstance(node.func, ast.Attribute) and node.func.attr == "open" and name not in ("os.open",)):
            self._check_open(node, name or f"<expr>.{node.func.attr}")  # type: ignore[union-attr]
        elif isinstance(node.func, ast.Attribute) and node.func.attr in WRITE_METHODS and not (
                name and name.split(".", 1)[0] in ("str", "bytes")):
            if node.func.attr in ("write_text", "write_bytes", "touch", "symlink_to", "hardlink_to") or name is None \
                    or "path" in (name or "").lower() or (name or "").startswith("pathlib"):
                self._write(node, f".{node.func.attr}()")
        self.generic_visit(node)

    def _check_open(self, node: ast.Call, name: str) -> None:
        is_method = isinstance(node.func, ast.Attribute) and name not in ("io.open", "builtins.open", "codecs.open")
        mode = None
        position = 0 if is_method else 1   # Path.open(mode) vs open(file, mode)
        if len(node.args) > position:
            mode = node.args[position]
        for kw in node.keywords:
            if kw.arg == "mode":
                mode = kw.value
        if mode is None:
            return                                   # default "r"
        if isinstance(mode, ast.Constant) and isinstance(mode.value, str):
            if WRITE_MODE_CHARS & set(mode.value) and len(mode.value) <= 4:
                self._write(node, f"{name}(..., {mode.value!r})")
        elif is_method and not any(kw.arg == "mode" for kw in node.keywords):
            return          # x.open(request, ...) is usually not a file (urllib openers, zipfile members)
        elif Permission.file_system_write not in self.granted:
            self._add(node, "medium", "unverifiable:open-mode",
                      f"{name}() with a computed mode: it may write files (no file_system_write declared)")


def _permission_findings(root: Path, files: list[Path], granted: frozenset[Permission]) -> list[Finding]:
    findings = []
    for path in files:
        rel = path.relative_to(root).as_posix()
        try:
            tree = ast.parse(path.read_bytes(), filename=rel)
        except (SyntaxError, ValueError) as exc:
            findings.append(Finding("high", "parse", rel, getattr(exc, "lineno", 0) or 0,
                                    f"does not parse as Python ({exc.__class__.__name__}: {exc}); the scan cannot "
                                    "vouch for it"))
            continue
        visitor = _Visitor(rel, granted)
        visitor.visit(tree)
        findings.extend(visitor.findings)
    return findings


# -- bandit ---------------------------------------------------------------------------


def _bandit_findings(root: Path, files: list[Path]) -> list[Finding]:
    from bandit.core import config as b_config
    from bandit.core import manager as b_manager

    # bandit logs every file at INFO; this is a library call, keep it quiet.
    logging.getLogger("bandit").setLevel(logging.ERROR)
    conf = b_config.BanditConfig()
    mgr = b_manager.BanditManager(conf, "file", quiet=True, ignore_nosec=True)
    mgr.files_list = sorted(str(p) for p in files)
    mgr.run_tests()
    out = []
    for issue in mgr.get_issue_list():
        sev, conf_level = issue.severity.lower(), issue.confidence.lower()
        if sev == "high" and conf_level == "low":
            sev = "medium"
        try:
            rel = Path(issue.fname).resolve().relative_to(root).as_posix()
        except ValueError:
            rel = issue.fname
        out.append(Finding(sev, f"bandit:{issue.test_id}", rel, issue.lineno,
                           f"{issue.text} (bandit {issue.severity}/{issue.confidence})"))
    for fname, reason in mgr.skipped:
        try:
            fname = Path(fname).resolve().relative_to(root).as_posix()
        except ValueError:
            pass
        out.append(Finding("high", "parse", str(fname), 0, f"bandit could not scan it: {reason}"))
    return out


# -- entry points ------------------------------------------------------------------------


def _python_files(root: Path) -> list[Path]:
    skip = {".deps", "__pycache__", ".git", "wheels"}
    return sorted(p for p in root.rglob("*.py")
                  if not (set(p.relative_to(root).parts) & skip) and p.is_file() and not p.is_symlink())


def scan_folder(root: Path, manifest: Manifest | None = None) -> ScanReport:
    """Scan a plugin folder (an extracted bundle or an author's folder)."""
    root = root.resolve()
    if manifest is None:
        loaded, problems = load_path(root)
        if problems or not isinstance(loaded, Manifest):
            raise MarketError("cannot scan: " + "; ".join(map(str, problems or ["not a plugin manifest"])), "manifest")
        manifest = loaded
    files = _python_files(root)
    report = ScanReport(plugin=manifest.id, files=[p.relative_to(root).as_posix() for p in files],
                        dependencies=list(manifest.dependencies))
    report.findings.extend(_permission_findings(root, files, manifest.granted))
    report.findings.extend(_bandit_findings(root, files))
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if path.is_file() and path.name.endswith(NATIVE_SUFFIXES) and not ({".deps", "wheels"} & set(rel.parts)):
            report.findings.append(Finding("medium", "unverifiable:native", rel.as_posix(), 0,
                                           "native code: the scan cannot read it"))
    order = {s: i for i, s in enumerate(reversed(SEVERITIES))}
    report.findings.sort(key=lambda f: (order[f.severity], f.file, f.line, f.check))
    return report


def scan_path(path: Path) -> ScanReport:
    """A folder, or a `.roseyplug` (checked and extracted to a temp dir first)."""
    if path.is_dir():
        return scan_folder(path)
    from . import bundle

    with tempfile.TemporaryDirectory(prefix="precinct-scan-") as tmp:
        dest = Path(tmp) / "plugin"
        info = bundle.extract(path, dest)
        return scan_folder(dest, info.manifest)
