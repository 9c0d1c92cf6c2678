"""The plugins-dir watch: inotify says when a fingerprint comparison is worth
it; without inotify it falls back to comparing every time."""

from __future__ import annotations

import ctypes.util
import os

from precinct.runtime.dirwatch import DirWatch


def test_edits_new_folders_and_linked_checkouts_are_seen(tmp_path):
    plugins = tmp_path / "plugins"
    (plugins / "dice").mkdir(parents=True)
    (plugins / "dice" / "plugin.py").write_text("A = 1\n")
    watch = DirWatch(plugins, rescan=3600)
    assert not watch.polling, watch.problem
    assert watch.changed()                       # the first call always compares
    assert not watch.changed()                   # nothing happened since
    (plugins / "dice" / "plugin.py").write_text("A = 2\n")        # an edit in place
    assert watch.changed() and not watch.changed()
    (plugins / "new").mkdir()                                      # a new plugin folder...
    assert watch.changed()
    (plugins / "new" / "plugin.yaml").write_text("name: new\n")    # ...is watched from then on
    assert watch.changed()
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    (checkout / "plugin.py").write_text("B = 1\n")
    os.symlink(checkout, plugins / "linked")                       # a plugin folder that is a link
    assert watch.changed()
    (checkout / "plugin.py").write_text("B = 2\n")
    assert watch.changed() and not watch.changed()
    (plugins / "dice" / "plugin.py").unlink()
    assert watch.changed()
    watch.close()


def test_a_safety_rescan_is_due_even_without_events(tmp_path):
    watch = DirWatch(tmp_path, rescan=0)
    assert watch.changed() and watch.changed()
    watch.close()


def test_without_inotify_it_compares_every_time(tmp_path, monkeypatch):
    monkeypatch.setattr(ctypes.util, "find_library", lambda name: "libdoes-not-exist.so.9")
    watch = DirWatch(tmp_path, rescan=3600)
    assert watch.polling and "inotify unavailable" in watch.problem
    assert watch.changed() and watch.changed()
