"""The one exception family of the marketplace code. Every message is a
single line meant for the person at the terminal: it says what was checked,
what was found, and (when there is one) what to do about it."""

from __future__ import annotations


class MarketError(Exception):
    """Base class; `check` names the check that failed (for --json output)."""

    check = "market"

    def __init__(self, message: str, check: str | None = None) -> None:
        super().__init__(message)
        if check:
            self.check = check


class BundleError(MarketError):
    """The archive is malformed, unsafe, or does not match its file manifest."""

    check = "bundle"


class TrustError(MarketError):
    """A signature, the TUF metadata or a publisher key did not verify."""

    check = "signature"


class ScanBlocked(MarketError):
    """The scan policy refused the plugin."""

    check = "scan"


class InstallError(MarketError):
    """Installing, updating, rolling back or removing failed; nothing changed."""

    check = "install"


class PermissionsNotAccepted(InstallError):
    """The new version may do more than the installed one and nobody accepted
    that; `diff` is the PermissionDiff (plan/permission_diff.py) to show."""

    check = "permissions"

    def __init__(self, message: str, diff) -> None:
        super().__init__(message)
        self.diff = diff
