"""Sizes: integers in bytes inside the library; parsed from and printed for people."""

from __future__ import annotations

import re

from liveos_tools.errors import UsageError

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB
TiB = 1024 * GiB
SECTOR = 512

_SUFFIX = {
    "": MiB,  # a bare number means MiB, as livecd-iso-to-disk's *-size-mb options do
    "b": 1,
    "k": KiB,
    "kb": 1000,
    "kib": KiB,
    "m": MiB,
    "mb": 1000**2,
    "mib": MiB,
    "g": GiB,
    "gb": 1000**3,
    "gib": GiB,
    "t": TiB,
    "tb": 1000**4,
    "tib": TiB,
    "s": SECTOR,
}

_SIZE_RE = re.compile(r"^\s*(\d+)(?:\.(\d+))?\s*([a-zA-Z]*)\s*$")
#: No file or disk is anywhere near this (2^63 - 1, the largest file offset).
MAX_SIZE = (1 << 63) - 1
#: Digits worth reading: MAX_SIZE has 19, fractions of a TB need no more than 13.
_MAX_DIGITS = 24


def parse_size(text: str) -> int:
    """Parse '300', '300M', '1.5GiB', '4096b', '8s' into bytes. A bare number is MiB."""
    match = _SIZE_RE.match(text)
    if not match:
        raise UsageError(
            f"not a size: {text!r}", "write a number with an optional unit, e.g. 512M or 2G"
        )
    whole, frac, unit = match.groups()
    factor = _SUFFIX.get(unit.lower())
    if factor is None:
        raise UsageError(
            f"unknown size unit {unit!r} in {text!r}", "use K, M, G, T (or KiB, MB...)"
        )
    whole = whole.lstrip("0") or "0"
    frac = (frac or "").rstrip("0")
    if len(whole) > _MAX_DIGITS or len(frac) > _MAX_DIGITS:
        shown = text.strip() if len(text.strip()) <= 40 else text.strip()[:37] + "..."
        raise UsageError(f"size {shown!r} has too many digits", _TOO_BIG_HINT)
    # Exact integer arithmetic (a float loses bytes past 2^53 and overflows at 1e308);
    # a fraction of a byte is dropped.
    scale: int = 10 ** len(frac)
    value = int(whole) * factor + int(frac or "0") * factor // scale
    if value > MAX_SIZE:
        raise UsageError(f"size {text.strip()!r} is larger than any disk", _TOO_BIG_HINT)
    return value


_TOO_BIG_HINT = "write a size such as 512M or 2G"


def format_size(nbytes: int) -> str:
    """Human size with binary units, e.g. '1.5 GiB', '300 MiB', '512 B'."""
    value = float(nbytes)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            if unit == "B":
                return f"{int(value)} B"
            text = f"{value:.1f}".rstrip("0").rstrip(".")
            return f"{text} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def mib(nbytes: int) -> float:
    return nbytes / MiB
