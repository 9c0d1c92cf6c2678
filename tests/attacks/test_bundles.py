"""A bundle with escaping symlinks (issue 10). The archive-level tricks
(zip-slip, absolute paths, symlink entries, zip bombs) are proven one by one
in tests/test_market.py; here the attack goes through the CLI a publisher or
an operator would use, and is refused with a message naming the link
(the report), leaving nothing behind (containment)."""

from __future__ import annotations

import os
import stat
import zipfile
from pathlib import Path

from runtime_support import FIXTURES, copy_plugin, precinct


def _folder(tmp_path: Path) -> Path:
    folder = copy_plugin(FIXTURES / "8ball", tmp_path, "evil")
    return folder


def test_packing_a_folder_with_an_escaping_symlink_is_refused(tmp_path):
    for i, target in enumerate(("/etc/shadow", "../../..")):
        folder = _folder(tmp_path / str(i))
        (folder / "leak").symlink_to(target)
        out = tmp_path / f"out{i}.roseyplug"
        packed = precinct("plugin", "pack", str(folder), "--output", str(out))
        assert packed.returncode != 0, packed.stdout
        assert "leak is a symlink" in packed.stdout + packed.stderr, (packed.stdout, packed.stderr)
        assert not out.exists()


def test_installing_a_bundle_with_a_symlink_entry_is_refused(tmp_path):
    folder = _folder(tmp_path)
    good = tmp_path / "good.roseyplug"
    packed = precinct("plugin", "pack", str(folder), "--output", str(good))
    assert packed.returncode == 0, packed.stderr
    evil = tmp_path / "evil.roseyplug"
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(evil, "w") as dst:
        for item in src.infolist():
            dst.writestr(item, src.read(item))
        link = zipfile.ZipInfo("leak")
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        dst.writestr(link, "/etc/shadow")
    plugins, state = tmp_path / "plugins", tmp_path / "state"
    plugins.mkdir()
    installed = precinct("plugin", "install", str(evil), "--plugins-dir", str(plugins), "--state-dir", str(state),
                         "--allow-unsigned") if "--allow-unsigned" in precinct("plugin", "install", "--help").stdout \
        else precinct("plugin", "install", str(evil), "--plugins-dir", str(plugins), "--state-dir", str(state))
    assert installed.returncode != 0, installed.stdout
    assert "symlink" in installed.stdout + installed.stderr, (installed.stdout, installed.stderr)
    assert not any(p.is_symlink() for p in plugins.rglob("*")), list(plugins.rglob("*"))
    assert not os.path.lexists(plugins / "eightball" / "leak")
