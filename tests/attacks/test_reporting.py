"""Unit checks of the reporting that the attack suite added: the server-log
line for an oversized payload, and the pids counter on a fake cgroup tree."""

from __future__ import annotations

from precinct.services.serverlog import parse_violation

ACCOUNT = "ADXM6B3FVHG3FXWAK2X2NSD56724XCNDL5MQTZJY7VBXANHYKLWZTIMX"
USER = "UBI6USAH2JSE7TKFLDUYA7U6ACD4ZTE6GKHBSQZPLM3JYBPG5XCVOYXE"


def test_an_oversized_payload_line_is_a_violation_of_that_account():
    line = (f'[29755] 2026/11/27 23:38:11.949088 [ERR] 127.0.0.1:34772 - cid:40 - "v2.16.0:python3:runner" - '
            f'"{ACCOUNT}/plugin:bigpayload/jwt:{USER}" - maximum payload exceeded: 614400 vs 524288')
    found = parse_violation(line)
    assert found is not None and found.account == ACCOUNT and found.operation == "publish"
    assert found.subject == "(payload 614400 bytes > max 524288)"


def test_a_client_name_cannot_forge_an_oversized_payload_line():
    # The client picks its name and the server quotes it; a forged account inside it never matches.
    forged = (f'[1] 2026/11/27 23:38:11.949088 [ERR] 127.0.0.1:1 - cid:4 - "x \\"{ACCOUNT}/p/jwt:{USER}\\" - '
              f'maximum payload exceeded: 1 vs 2" - "AOTHERACCOUNT/p/jwt:{USER}" - Slow Consumer Detected')
    assert parse_violation(forged) is None


def test_pids_refused_reads_pids_events(tmp_path):
    from precinct.confine import cgroups

    group = object.__new__(cgroups.PluginCgroup)
    (tmp_path / "pids.events").write_text("max 7\n")
    group.dir = lambda controller: tmp_path        # the only thing pids_refused() reads
    assert group.pids_refused() == 7
    (tmp_path / "pids.events").unlink()
    assert group.pids_refused() == 0
