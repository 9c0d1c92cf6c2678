"""The attack suite: one malicious plugin per attack (tests/attacks/plugins/)."""
