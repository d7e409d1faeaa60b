"""Kubernetes resource quantities ("500m", "64Gi", "2") as numbers, for resourceFieldRef."""

from __future__ import annotations

import math
from decimal import Decimal, InvalidOperation

_SUFFIXES = {
    "n": Decimal("1e-9"),
    "u": Decimal("1e-6"),
    "m": Decimal("1e-3"),
    "": Decimal(1),
    "k": Decimal(10) ** 3,
    "M": Decimal(10) ** 6,
    "G": Decimal(10) ** 9,
    "T": Decimal(10) ** 12,
    "P": Decimal(10) ** 15,
    "E": Decimal(10) ** 18,
    "Ki": Decimal(2) ** 10,
    "Mi": Decimal(2) ** 20,
    "Gi": Decimal(2) ** 30,
    "Ti": Decimal(2) ** 40,
    "Pi": Decimal(2) ** 50,
    "Ei": Decimal(2) ** 60,
}


def parse(text: str) -> Decimal:
    """``parse("500m") == Decimal("0.5")``; ValueError naming the text when it is not one."""
    s = str(text).strip()
    for suffix in sorted(_SUFFIXES, key=len, reverse=True):
        if suffix and s.endswith(suffix):
            number, factor = s[: -len(suffix)], _SUFFIXES[suffix]
            break
    else:
        number, factor = s, Decimal(1)
    try:
        return Decimal(number) * factor
    except InvalidOperation:
        raise ValueError(f"{text!r} is not a Kubernetes quantity (e.g. 2, 500m, 64Gi)") from None


def divide_ceil(value: str, divisor: str | None) -> str:
    """What the downward API exposes: ceil(value / divisor) as an integer string."""
    d = parse(divisor) if divisor else Decimal(1)
    if d == 0:  # the API server defaults an unset divisor to "0"; the kubelet reads it as 1
        d = Decimal(1)
    return str(math.ceil(parse(value) / d))
