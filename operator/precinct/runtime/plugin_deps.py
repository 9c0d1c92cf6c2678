"""A plugin's own dependencies on a single host: wheels only, cached by hash.

A manifest's `dependencies` (spec/requirements.py) are installed on the
trusted side, before the plugin starts, never from inside the sandbox:

* `pip install --only-binary=:all:`: wheels are unpacked, never built, so no
  code from a dependency runs as root (an sdist's setup.py would);
* `--target <state>/deps/<key>/site`, one folder per distinct set of
  requirements, index and runner interpreter (`key` is their sha256), shared
  by the plugins that ask for the same set and reused across restarts;
* the interpreter is the runner environment's, so wheels match the Python
  the plugin runs on;
* when the operator names a wheel index (`precinct up --wheel-index`,
  PRECINCT_WHEEL_INDEX: a URL of a PEP 503 simple index, or a folder of
  wheels), it is the only source: pip's own configuration and PIP_* variables
  are ignored. Without one, pip's configured index is used (PyPI by default).

The runner puts the folder on sys.path *after* its own site-packages, so the
runner's nats-py always wins over a copy a dependency dragged in. A folder is
complete once `installed.json` exists (written last); a failed install leaves
nothing behind and is retried on the plugin's next start.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from ..spec import requirements as reqs
from .runner_env import file_lock, open_up

MARKER = "installed.json"
PIP_TIMEOUT = 600.0


class DependencyError(RuntimeError):
    """The dependencies could not be installed; the message says which and why."""

    reason = "DependenciesFailed"


def cache_key(requirements: list[str], runner_python: str, index: str | None) -> str:
    ident = {"requirements": sorted(requirements), "python": os.path.abspath(runner_python),
             "interpreter": os.path.realpath(runner_python), "index": index or ""}
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:24]


def _source_args(index: str | None) -> list[str]:
    if not index:
        return []
    if "://" in index:
        return ["--index-url", index]
    folder = Path(index)
    if not folder.is_dir():
        raise DependencyError(f"wheel index {index} is neither a URL nor a folder")
    return ["--no-index", "--find-links", str(folder.resolve())]


def _pip_env(index: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env["PYTHONNOUSERSITE"] = "1"
    if index:   # the named index is the only source: no pip.conf, no PIP_INDEX_URL/FIND_LINKS from the host
        env = {k: v for k, v in env.items() if not k.startswith("PIP_")}
        env["PIP_CONFIG_FILE"] = os.devnull
    return env


def installed(site: Path) -> list[str]:
    """`name==version` of every distribution in a site folder."""
    out = []
    for info in sorted(site.glob("*.dist-info")):
        name, _, version = info.name[: -len(".dist-info")].partition("-")
        out.append(f"{reqs.normalize(name)}=={version}")
    return out


def ensure(requirements: list[str], *, runner_python: str, state_dir: Path, index: str | None = None) -> Path | None:
    """The site folder holding `requirements` (installed now if not cached),
    or None when there is nothing to install. Blocking: call it in a thread."""
    wanted = list(reqs.plan(requirements).install)
    if not wanted:
        return None
    root = Path(state_dir) / "deps"
    root.mkdir(parents=True, exist_ok=True)
    os.chmod(root, 0o755)  # nosec B103 - plugin uids traverse it to read their wheels; only root writes
    key = cache_key(wanted, runner_python, index)
    home = root / key
    site = home / "site"
    with file_lock(root / f".{key}.lock"):
        if (home / MARKER).is_file():
            return site
        if home.exists():
            shutil.rmtree(home)       # an install that did not finish
        with tempfile.TemporaryDirectory(prefix=f".{key}-", dir=root) as tmp:
            target = Path(tmp) / "site"
            argv = [runner_python, "-I", "-m", "pip", "install", "--no-input", "--disable-pip-version-check",
                    "--quiet", "--only-binary=:all:", "--no-compile", "--target", str(target),
                    *_source_args(index), *wanted]
            started = time.monotonic()
            try:
                done = subprocess.run(argv, capture_output=True, text=True, timeout=PIP_TIMEOUT,
                                      env=_pip_env(index), cwd=tmp)
            except (OSError, subprocess.TimeoutExpired) as exc:
                raise DependencyError(f"installing {', '.join(wanted)} failed: {exc}") from None
            if done.returncode != 0:
                tail = " | ".join(line.strip() for line in (done.stdout + done.stderr).strip().splitlines()[-6:])
                source = index or "pip's configured index"
                raise DependencyError(f"installing {', '.join(wanted)} as wheels from {source} failed "
                                      f"(pip exit {done.returncode}): {tail}")
            got = installed(target)
            (target.parent / MARKER).write_text(json.dumps(
                {"requirements": wanted, "index": index, "python": runner_python, "installed": got,
                 "seconds": round(time.monotonic() - started, 2)}, indent=1) + "\n")
            open_up(Path(tmp))
            os.rename(tmp, home)      # atomic: the folder appears complete or not at all
            os.mkdir(tmp)             # for TemporaryDirectory's cleanup
    return site
