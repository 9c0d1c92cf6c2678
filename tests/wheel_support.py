"""Python packages for dependency tests, built here, and a PEP 503 wheel
index served on loopback (tests never reach a remote index)."""

from __future__ import annotations

import base64
import hashlib
import html
import http.server
import io
import re
import tarfile
import threading
import zipfile
from pathlib import Path


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def make_wheel(folder: Path, name: str = "tinydep", version: str = "0.1", body: str = "VALUE = 42\n",
               requires: tuple[str, ...] = (), modules: dict[str, str] | None = None) -> Path:
    """A minimal, valid pure-Python wheel: package `name` (its __init__ is
    `body`) plus any extra top-level `modules` {path: source}."""
    folder.mkdir(parents=True, exist_ok=True)
    dist = f"{name}-{version}.dist-info"
    metadata = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
    metadata += "".join(f"Requires-Dist: {r}\n" for r in requires)
    files = {f"{name}/__init__.py": body.encode(),
             **{path: src.encode() for path, src in (modules or {}).items()},
             f"{dist}/METADATA": metadata.encode(),
             f"{dist}/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    record = []
    for path, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(data)}")
    record.append(f"{dist}/RECORD,,")
    files[f"{dist}/RECORD"] = ("\n".join(record) + "\n").encode()
    path = folder / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as zf:
        for arc, data in files.items():
            zf.writestr(arc, data)
    return path


def make_sdist(folder: Path, name: str, version: str, canary: Path) -> Path:
    """A source distribution whose setup.py would create `canary` if anything
    ever built it."""
    folder.mkdir(parents=True, exist_ok=True)
    setup = (f"import pathlib\npathlib.Path({str(canary)!r}).write_text('built')\n"
             f"from setuptools import setup\nsetup(name={name!r}, version={version!r})\n").encode()
    path = folder / f"{name}-{version}.tar.gz"
    with tarfile.open(path, "w:gz") as tf:
        info = tarfile.TarInfo(f"{name}-{version}/setup.py")
        info.size = len(setup)
        tf.addfile(info, io.BytesIO(setup))
    return path


class WheelIndex:
    """A PEP 503 "simple" index of the files in `folder`, on 127.0.0.1.
    `requests` counts what was asked for (to tell a cache hit from a download)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.requests: list[str] = []
        index = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                index.requests.append(self.path)
                parts = [p for p in self.path.split("?")[0].split("/") if p]
                if parts[:1] == ["simple"] and len(parts) == 2:
                    files = [f for f in sorted(index.folder.iterdir())
                             if _normalize(re.split(r"-\d", f.name, maxsplit=1)[0]) == parts[1]]
                    if not files:
                        return self._send(404, b"not here")
                    links = "".join(f'<a href="/files/{html.escape(f.name)}">{html.escape(f.name)}</a>\n'
                                    for f in files)
                    return self._send(200, f"<html><body>{links}</body></html>".encode(), "text/html")
                if parts[:1] == ["files"] and len(parts) == 2 and (index.folder / parts[1]).is_file():
                    return self._send(200, (index.folder / parts[1]).read_bytes(), "application/octet-stream")
                self._send(404, b"not here")

            def _send(self, code: int, body: bytes, kind: str = "text/plain") -> None:
                self.send_response(code)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/simple/"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> WheelIndex:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
