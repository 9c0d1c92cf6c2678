"""Kubernetes resource quantities, so that one manifest means the same thing
on a single host and in a cluster.

`100M` is 100 * 10**6 bytes, `100Mi` is 100 * 2**20; CPU accepts plain cores
(`0.25`) or millicores (`250m`). We parse the canonical Kubernetes grammar
(sign, decimal number, optional decimal exponent or SI / binary suffix) and
reject everything else with a message that says what is accepted.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

_BINARY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
_DECIMAL = {"n": Decimal("1e-9"), "u": Decimal("1e-6"), "m": Decimal("1e-3"), "": Decimal(1),
            "k": Decimal("1e3"), "M": Decimal("1e6"), "G": Decimal("1e9"), "T": Decimal("1e12"),
            "P": Decimal("1e15"), "E": Decimal("1e18")}
_QUANTITY = re.compile(
    r"^(?P<num>[+-]?(?:\d+(?:\.\d*)?|\.\d+))"
    r"(?P<suffix>Ki|Mi|Gi|Ti|Pi|Ei|[numkMGTPE]|[eE][+-]?\d+)?$"
)

HELP = "a Kubernetes quantity such as 100M, 256Mi, 1G, 0.5 or 500m"


class QuantityError(ValueError):
    """Raised with a human message when a value is not a quantity."""


def parse_quantity(value: object) -> Decimal:
    """Return the quantity's value in base units (bytes or cores)."""
    if isinstance(value, bool):  # bool is an int subclass; `true` is never a size
        raise QuantityError(f"expected {HELP}, got a boolean")
    if isinstance(value, (int, float)):
        text = repr(value) if isinstance(value, float) else str(value)
    elif isinstance(value, str):
        text = value.strip()
    else:
        raise QuantityError(f"expected {HELP}, got {type(value).__name__}")
    if len(text) > 64:
        raise QuantityError(f"expected {HELP}, got a {len(text)}-character string")
    match = _QUANTITY.fullmatch(text)
    if not match:
        raise QuantityError(f"expected {HELP}, got {text!r}")
    try:
        number = Decimal(match["num"])
    except InvalidOperation as exc:  # pragma: no cover - the regex already guards this
        raise QuantityError(f"expected {HELP}, got {text!r}") from exc
    suffix = match["suffix"] or ""
    if suffix in _BINARY:
        return number * _BINARY[suffix]
    if suffix[:1] in ("e", "E"):
        exponent = int(suffix[1:])
        if abs(exponent) > 30:
            raise QuantityError(f"exponent out of range in {text!r}")
        return number * (Decimal(10) ** exponent)
    return number * _DECIMAL[suffix]


def to_bytes(value: object) -> int:
    """A memory or disk quantity as whole bytes (rounded up, as Kubernetes does)."""
    amount = parse_quantity(value)
    whole = int(amount.to_integral_value(rounding="ROUND_CEILING"))
    return whole


def to_millicores(value: object) -> int:
    """A CPU quantity as millicores (rounded up to 1m, Kubernetes' precision)."""
    amount = parse_quantity(value) * 1000
    return int(amount.to_integral_value(rounding="ROUND_CEILING"))


def format_bytes(n: int) -> str:
    """Shortest exact Kubernetes spelling of a byte count (for rendering)."""
    for suffix, factor in (("Gi", 2**30), ("Mi", 2**20), ("Ki", 2**10)):
        if n % factor == 0 and n >= factor:
            return f"{n // factor}{suffix}"
    for suffix, factor in (("G", 10**9), ("M", 10**6), ("k", 10**3)):
        if n % factor == 0 and n >= factor:
            return f"{n // factor}{suffix}"
    return str(n)


def format_millicores(m: int) -> str:
    return f"{m // 1000}" if m % 1000 == 0 else f"{m}m"
