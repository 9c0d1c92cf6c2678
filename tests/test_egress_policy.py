"""The egress proxy's address policy (confine/egress.denied_reason), table-driven.

Pure function, no connection is made: this is the only place addresses that
could route off this machine (1.1.1.1, 10.x, 169.254.169.254, NAT64 and 6to4
forms of public hosts) appear. End-to-end proofs use addresses this machine
owns (tests/test_egress_e2e.py).
"""

from __future__ import annotations

import ipaddress
import socket

import pytest

from precinct.confine.egress import EMBEDDINGS, denied_reason, parse_allow


def teredo(server: str, client: str, port: int = 0x8000) -> str:
    """A Teredo address: 2001:0000:<server>:<flags>:<~port>:<~client>."""
    value = ((0x20010000 << 96) | (int(ipaddress.IPv4Address(server)) << 64) | ((~port & 0xFFFF) << 32)
             | (~int(ipaddress.IPv4Address(client)) & 0xFFFFFFFF))
    return str(ipaddress.IPv6Address(value))


# (address, refused?, a word the reason must contain)
IPV4 = [
    ("127.0.0.1", True, "127.0.0.0/8"), ("127.9.9.9", True, "127.0.0.0/8"),
    ("10.1.2.3", True, "10.0.0.0/8"), ("172.16.0.1", True, "172.16.0.0/12"), ("192.168.1.1", True, "192.168.0.0/16"),
    ("100.64.0.1", True, "100.64.0.0/10"), ("169.254.169.254", True, "169.254.0.0/16"),
    ("0.0.0.0", True, "0.0.0.0/8"), ("224.0.0.1", True, "224.0.0.0/4"), ("239.255.255.250", True, "224.0.0.0/4"),
    ("192.0.0.8", True, "IETF"), ("192.0.2.1", True, "TEST-NET-1"), ("198.51.100.7", True, "TEST-NET-2"),
    ("203.0.113.9", True, "TEST-NET-3"), ("192.88.99.1", True, "6to4 relay"), ("198.18.0.1", True, "benchmarking"),
    ("240.0.0.1", True, "reserved"), ("255.255.255.255", True, "broadcast"),
    ("1.1.1.1", False, ""), ("93.184.215.14", False, ""), ("8.8.8.8", False, ""),
]
IPV6 = [
    ("::1", True, "::1/128"), ("::", True, "unspecified"), ("fe80::1", True, "fe80::/10"),
    ("fe80::1%eth0", True, "fe80::/10"), ("fc00::1", True, "fc00::/7"), ("fd12:3456::1", True, "fc00::/7"),
    ("ff02::1", True, "ff00::/8"), ("2001:db8::1", True, "documentation"), ("100::1", True, "discard"),
    ("fec0::1", True, "site-local"), ("2001:10::1", True, "not a public address"),
    ("2606:4700:4700::1111", False, ""), ("2a00:1450:4001:80b::200e", False, ""),
]
# Every IPv6 form that embeds an IPv4 address, with a refused and a public IPv4 inside.
EMBEDDED = [
    # IPv4-compatible ::/96 (deprecated): refused whatever it carries.
    ("::7f00:1", True, "127.0.0.1"), ("::127.0.0.1", True, "127.0.0.1"), ("::a9fe:a9fe", True, "169.254.169.254"),
    ("::10.0.0.1", True, "10.0.0.1"), ("::8.8.8.8", True, "IPv4-compatible"),
    # IPv4-mapped ::ffff:0:0/96: judged by the IPv4 address (the kernel connects to it).
    ("::ffff:127.0.0.1", True, "127.0.0.1"), ("::ffff:7f00:1", True, "127.0.0.1"),
    ("::ffff:169.254.169.254", True, "169.254.169.254"), ("::ffff:192.168.1.1", True, "192.168.1.1"),
    ("::ffff:8.8.8.8", False, ""),
    # SIIT ::ffff:0:0:0/96: refused whatever it carries.
    ("::ffff:0:7f00:1", True, "127.0.0.1"), ("::ffff:0:10.0.0.1", True, "10.0.0.1"),
    ("::ffff:0:8.8.8.8", True, "SIIT"),
    # NAT64 well-known prefix 64:ff9b::/96: judged by the IPv4 address (DNS64 hosts use it for public ones).
    ("64:ff9b::7f00:1", True, "127.0.0.1"), ("64:ff9b::10.0.0.1", True, "10.0.0.1"),
    ("64:ff9b::169.254.169.254", True, "169.254.169.254"), ("64:ff9b::808:808", False, ""),
    # Local-use NAT64 64:ff9b:1::/48: refused whatever it carries.
    ("64:ff9b:1::7f00:1", True, "127.0.0.1"), ("64:ff9b:1::808:808", True, "local-use NAT64"),
    # 6to4 2002::/16: the IPv4 address in bits 16-47; refused whatever it carries.
    ("2002:7f00:1::1", True, "127.0.0.1"), ("2002:a9fe:a9fe::", True, "169.254.169.254"),
    ("2002:c0a8:101::1", True, "192.168.1.1"), ("2002:808:808::1", True, "6to4"),
    # Teredo 2001::/32: the client address XOR-ed in the low 32 bits; refused whatever it carries.
    (teredo("8.8.8.8", "127.0.0.1"), True, "127.0.0.1"), (teredo("8.8.8.8", "10.0.0.1"), True, "10.0.0.1"),
    (teredo("8.8.8.8", "8.8.4.4"), True, "Teredo"), ("2001::1", True, "Teredo"),
]


@pytest.mark.parametrize("address, refused, word", IPV4 + IPV6 + EMBEDDED)
def test_policy(address, refused, word):
    reason = denied_reason(address)
    if refused:
        assert reason and word in reason, (address, reason)
    else:
        assert reason is None, (address, reason)


def test_every_embedding_form_is_in_the_table():
    """Each prefix in EMBEDDINGS has a refused example above (table and code stay in step)."""
    covered = {form.prefix for form in EMBEDDINGS
               for address, refused, _ in EMBEDDED
               if refused and ipaddress.ip_address(address) in form.prefix}
    assert covered == {form.prefix for form in EMBEDDINGS}


def test_garbage_is_refused_with_a_reason():
    for text in ("", "localhost", "1.2.3", "::g", "[::1]"):
        assert "not an IP address" in denied_reason(text), text


@pytest.mark.parametrize("spelling", ["2130706433", "0x7f.1", "127.1", "0177.0.0.1", "::7f00:1", "::ffff:0:7f00:1"])
def test_other_spellings_of_loopback_resolve_to_a_refused_address(spelling):
    """The proxy resolves the host before judging it; numeric spellings (no
    DNS query: AI_NUMERICHOST) come back as the address they mean."""
    infos = socket.getaddrinfo(spelling, 80, flags=socket.AI_NUMERICHOST, type=socket.SOCK_STREAM)
    for info in infos:
        assert denied_reason(info[4][0]), (spelling, info[4][0])


def test_allow_list_parsing_names_the_bad_entry():
    assert parse_allow("127.0.0.1:8080, [::1]:81") == {("127.0.0.1", 8080), ("::1", 81)}
    assert parse_allow("") == frozenset()
    for bad in ("localhost:80", "127.0.0.1", "127.0.0.1:0", "[::1]"):
        with pytest.raises(ValueError, match="ADDRESS:PORT|port"):
            parse_allow(bad)


def test_up_names_a_bad_test_allow_list_before_starting(tmp_path):
    import os
    import subprocess
    import sys

    (tmp_path / "plugins").mkdir()
    done = subprocess.run([sys.executable, "-m", "precinct.cli", "up", str(tmp_path / "plugins"), "--state-dir",
                           str(tmp_path / "state")], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PRECINCT_EGRESS_TEST_ALLOW": "localhost:80"})
    assert done.returncode != 0
    assert "PRECINCT_EGRESS_TEST_ALLOW: 'localhost:80'" in done.stderr and "Traceback" not in done.stderr, done.stderr
