"""The runner's own Python environment on a single host.

Plugins run under their own uids, so the interpreter hosting them must be
one an unprivileged uid can execute: not a pyenv build inside root's 0700
home, which is this machine's default `python3`. The environment is a venv
built from such an interpreter (Debian's /usr/bin/python3 first) holding only
precinct-runner, nats-py and nkeys (and nkeys' own dependencies). It must
never hold aiohttp: nats-py imports it eagerly when present, which costs each
plugin about 11 MB and 0.2 s.

Where it lives:
  * `ensure_runner_env(base)`: `<base>/runner-<hash>`;
  * else PRECINCT_RUNNER_ENV, used as the environment's directory;
  * else `/var/lib/precinct/runner-<hash>`.
`<hash>` covers the runner's sources (plugins/runner) and the interpreter's
version, so a change to either builds a fresh environment. A marker file
written last says the environment is complete; until then it is rebuilt.

Overrides: PRECINCT_RUNNER_PYTHON (the interpreter), PRECINCT_RUNNER_SOURCE
(the runner's source folder, when the control plane is not run from a
checkout).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ..settings import HostSettings

DEFAULT_ROOT = Path("/var/lib/precinct")
PREFERRED_PYTHONS = ("/usr/bin/python3",)
MARKER = ".precinct-runner-env.json"
BUILDING = ".precinct-runner-env.building"
MIN_PYTHON = (3, 11)
_SKIP_DIRS = {"__pycache__", "build", "dist", ".pytest_cache"}


class RunnerEnvError(RuntimeError):
    """The runner environment cannot be found or built; the message says why."""


def default_source() -> Path:
    configured = HostSettings.load().runner_source
    if configured:
        return configured
    # operator/precinct/runtime/runner_env.py -> the checkout's plugins/runner
    return Path(__file__).resolve().parents[3] / "plugins" / "runner"


# -- can another uid run it? ---------------------------------------------------


def _component_problems(path: Path, final: str) -> list[str]:
    """Every directory on the way to `path` must let others search it (o+x);
    `final` says what the last component needs: 'x' (file), 'rx' (dir)."""
    problems = []
    parts = path.parts
    for i in range(1, len(parts) + 1):
        current = Path(*parts[:i])
        try:
            st = os.stat(current)
        except OSError as exc:
            problems.append(f"{current}: {exc.strerror}")
            break
        mode = stat.S_IMODE(st.st_mode)
        last = i == len(parts)
        if stat.S_ISDIR(st.st_mode) and not (mode & stat.S_IXOTH):
            problems.append(f"{current} is mode {mode:04o}: other users cannot enter it")
        elif last and "x" in final and not stat.S_ISDIR(st.st_mode) and not (mode & stat.S_IXOTH):
            problems.append(f"{current} is mode {mode:04o}: other users cannot execute it")
        if last and "r" in final and not (mode & stat.S_IROTH):
            problems.append(f"{current} is mode {mode:04o}: other users cannot read it")
    return problems


def world_executable_problems(executable: str | Path) -> list[str]:
    """Why a uid other than the owner could not execute `executable` (empty
    list: it can). Checks the path as given and the file it resolves to."""
    given = Path(os.path.abspath(executable))
    real = Path(os.path.realpath(given))
    problems = _component_problems(given.parent, "rx")
    problems += [p for p in _component_problems(real, "x") if p not in problems]
    return problems


def _probe(python: str) -> dict:
    """Run the interpreter once: version, stdlib location, venv support."""
    script = (
        "import json, sys, sysconfig\n"
        "try:\n    import venv, ensurepip\n    ok = True\nexcept ImportError:\n    ok = False\n"
        "print(json.dumps({'version': sys.version, 'info': list(sys.version_info[:3]), "
        "'stdlib': sysconfig.get_paths()['stdlib'], 'venv': ok}))\n"
    )
    try:
        out = subprocess.run([python, "-I", "-c", script], capture_output=True, text=True, timeout=60, check=True)
        return json.loads(out.stdout)
    except (OSError, subprocess.SubprocessError, ValueError) as exc:
        raise RunnerEnvError(f"{python} does not run: {exc}") from None


def find_interpreter(python: str | None = None) -> tuple[str, dict]:
    """(path, probe) of an interpreter an unprivileged uid can execute."""
    chosen = python or HostSettings.load().runner_python
    if chosen:
        candidates = [chosen]
    else:
        candidates = list(PREFERRED_PYTHONS)
        on_path = shutil.which("python3")
        for extra in (on_path, getattr(sys, "_base_executable", None)):
            if extra and extra not in candidates:
                candidates.append(extra)
    rejected = []
    for candidate in candidates:
        if not os.path.exists(candidate):
            rejected.append(f"{candidate}: does not exist")
            continue
        problems = world_executable_problems(candidate)
        if problems:
            rejected.append(f"{candidate}: {'; '.join(problems)}")
            continue
        try:
            probe = _probe(candidate)
        except RunnerEnvError as exc:
            rejected.append(str(exc))
            continue
        if tuple(probe["info"][:2]) < MIN_PYTHON:
            rejected.append(f"{candidate}: Python {'.'.join(map(str, probe['info']))} is older than "
                            f"{'.'.join(map(str, MIN_PYTHON))}")
            continue
        if not probe["venv"]:
            rejected.append(f"{candidate}: has no venv/ensurepip module (Debian: apt-get install python3-venv)")
            continue
        stdlib_problems = _component_problems(Path(probe["stdlib"]), "rx")
        if stdlib_problems:
            rejected.append(f"{candidate}: its standard library is not readable by others: {'; '.join(stdlib_problems)}")
            continue
        return candidate, probe
    raise RunnerEnvError(
        "no Python interpreter that an unprivileged plugin uid can execute; tried:\n  "
        + "\n  ".join(rejected)
        + "\nInstall Debian's python3 and python3-venv, or set PRECINCT_RUNNER_PYTHON to an interpreter "
        "outside any private home directory."
    )


# -- identity of an environment -------------------------------------------------


def _source_files(source: Path) -> list[Path]:
    files = []
    for root, dirs, names in os.walk(source):
        dirs[:] = sorted(d for d in dirs if d not in _SKIP_DIRS and not d.endswith(".egg-info") and not d.startswith("."))
        for name in sorted(names):
            if name.endswith((".pyc", ".pyo")) or name.startswith("."):
                continue
            files.append(Path(root) / name)
    return files


def env_hash(source: Path, python: str, version: str) -> str:
    digest = hashlib.sha256()
    for path in _source_files(source):
        digest.update(path.relative_to(source).as_posix().encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    digest.update(f"{os.path.realpath(python)}\0{version}".encode())
    return digest.hexdigest()[:16]


def _is_complete(env_dir: Path, digest: str) -> bool:
    try:
        marker = json.loads((env_dir / MARKER).read_text())
    except (OSError, ValueError):
        return False
    return (
        isinstance(marker, dict) and marker.get("hash") == digest
        and not (env_dir / BUILDING).exists()
        and os.access(env_dir / "bin" / "python", os.X_OK)
    )


@contextlib.contextmanager
def file_lock(lock_path: Path):
    """An exclusive flock on `lock_path` (created if missing) while inside."""
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


# -- building -------------------------------------------------------------------


def _run(argv: list[str], what: str, timeout: float = 900) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env["PYTHONNOUSERSITE"] = "1"
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise RunnerEnvError(f"{what} failed: {exc}") from None
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-25:])
        raise RunnerEnvError(f"{what} failed (exit {done.returncode}): {' '.join(argv)}\n{tail}")
    return done.stdout


def open_up(root: Path) -> None:
    """World-readable, and executable where the owner may execute. Symlinks
    are skipped: bin/python points at the system interpreter."""
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames]:
            path = os.path.join(dirpath, name)
            if os.path.islink(path):
                continue
            mode = stat.S_IMODE(os.lstat(path).st_mode)
            if os.path.isdir(path):
                wanted = mode | 0o755
            else:
                wanted = mode | 0o644 | (0o111 if mode & 0o100 else 0)
            if wanted != mode:
                os.chmod(path, wanted)
    os.chmod(root, stat.S_IMODE(os.stat(root).st_mode) | 0o755)


_VERIFY = """
import importlib.util, json, sys
import nats, nkeys, precinct_runner
print(json.dumps({
    "runner": precinct_runner.__file__,
    "version": precinct_runner.__version__,
    "aiohttp": importlib.util.find_spec("aiohttp") is not None,
}))
"""


def _build(env_dir: Path, python: str, probe: dict, source: Path, digest: str) -> None:
    if env_dir.exists():
        ours = (env_dir / MARKER).exists() or (env_dir / BUILDING).exists() or not any(env_dir.iterdir())
        if not ours:
            raise RunnerEnvError(f"{env_dir} exists and is not a runner environment; "
                                 "remove it or point PRECINCT_RUNNER_ENV somewhere else")
    started = time.monotonic()
    print(f"precinct: building the plugin runner environment in {env_dir} "
          f"(Python {'.'.join(map(str, probe['info']))} from {python}); this takes a minute...",
          file=sys.stderr, flush=True)
    if env_dir.exists():
        shutil.rmtree(env_dir)          # stale (other sources) or half-built
    env_dir.mkdir(mode=0o755)
    (env_dir / BUILDING).write_text(f"started by pid {os.getpid()}\n")

    _run([python, "-I", "-m", "venv", str(env_dir)], "creating the venv")
    env_python = env_dir / "bin" / "python"
    with tempfile.TemporaryDirectory(prefix="precinct-runner-src-") as tmp:
        # Build from a copy: setuptools writes build/ and *.egg-info next to
        # the sources, and the checkout may be read-only or shared.
        copy = Path(tmp) / "runner"
        shutil.copytree(source, copy, ignore=shutil.ignore_patterns(
            "__pycache__", "*.pyc", "build", "dist", "*.egg-info", ".*"))
        _run([str(env_python), "-m", "pip", "install", "--no-input", "--disable-pip-version-check",
              "--quiet", str(copy)], "installing precinct-runner, nats-py and nkeys")
    report = json.loads(_run([str(env_python), "-I", "-c", _VERIFY], "checking the runner environment"))
    if report["aiohttp"]:
        raise RunnerEnvError(f"aiohttp got installed into {env_dir} (a dependency pulled it in); the runner "
                             "environment must not contain it: nats-py would import it in every plugin")
    if not Path(report["runner"]).resolve().is_relative_to(env_dir.resolve()):
        raise RunnerEnvError(f"precinct_runner imported from {report['runner']}, not from {env_dir}")

    open_up(env_dir)
    (env_dir / BUILDING).unlink()
    marker = {"hash": digest, "python": python, "python_version": probe["version"], "runner": report["version"],
              "source": str(source), "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    tmp_marker = env_dir / (MARKER + ".tmp")
    tmp_marker.write_text(json.dumps(marker, indent=2) + "\n")
    os.chmod(tmp_marker, 0o644)
    os.replace(tmp_marker, env_dir / MARKER)        # last: the environment is complete
    print(f"precinct: runner environment ready in {time.monotonic() - started:.0f} s: {env_python}",
          file=sys.stderr, flush=True)
    unreachable = _component_problems(env_dir.parent, "rx")
    if unreachable:
        print(f"precinct: note: plugin uids cannot reach {env_dir}: {'; '.join(unreachable)}",
              file=sys.stderr, flush=True)


def ensure_runner_env(base: Path | None = None, *, source: Path | None = None, python: str | None = None) -> Path:
    """Return the python executable of a complete runner environment,
    building it first if needed (see the module docstring for where)."""
    source = Path(source) if source is not None else default_source()
    if not (source / "pyproject.toml").is_file() or not (source / "precinct_runner").is_dir():
        raise RunnerEnvError(f"runner sources not found at {source} (expected pyproject.toml and precinct_runner/); "
                             "set PRECINCT_RUNNER_SOURCE to the plugins/runner folder")
    interpreter, probe = find_interpreter(python)
    digest = env_hash(source, interpreter, probe["version"])
    if base is not None:
        env_dir = Path(base) / f"runner-{digest}"
    elif HostSettings.load().runner_env:
        env_dir = HostSettings.load().runner_env
    else:
        env_dir = DEFAULT_ROOT / f"runner-{digest}"
    env_dir = Path(os.path.abspath(env_dir))
    env_python = env_dir / "bin" / "python"
    if _is_complete(env_dir, digest):
        return env_python
    try:
        created = not env_dir.parent.exists()
        env_dir.parent.mkdir(parents=True, exist_ok=True)
        if created:
            os.chmod(env_dir.parent, 0o755)  # nosec B103 - the shared runner venv's root-owned parent dir; plugins need to traverse it, never write
        with file_lock(env_dir.parent / f".{env_dir.name}.lock"):
            if not _is_complete(env_dir, digest):       # another process may have built it meanwhile
                _build(env_dir, interpreter, probe, source, digest)
    except OSError as exc:
        raise RunnerEnvError(f"cannot build the runner environment in {env_dir}: {exc.strerror or exc} "
                             f"({exc.filename or env_dir}); set PRECINCT_RUNNER_ENV to a writable place") from None
    return env_python


def main() -> int:
    """`python -m precinct.runtime.runner_env`: build (or find) it and print its python."""
    try:
        print(ensure_runner_env())
    except RunnerEnvError as exc:
        print(f"precinct: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
