"""Byte sizes for humans: ``70GiB``, ``60GB``, ``512MiB``, ``1.5TiB`` or plain bytes."""

from __future__ import annotations

import argparse
import re
from decimal import Decimal, InvalidOperation

from hybridkv.errors import InvalidArgumentError

_UNITS: dict[str, int] = {
    "": 1,
    "b": 1,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "tb": 1000**4,
    "k": 1024,
    "m": 1024**2,
    "g": 1024**3,
    "t": 1024**4,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
}
_SIZE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([a-zA-Z]*)\s*$")


def parse_size(text: str) -> int:
    """Bytes in ``text``: a number with an optional unit (B, KB/MB/GB/TB = powers of 1000,
    KiB/MiB/GiB/TiB or K/M/G/T = powers of 1024), case-insensitive. Fractions round down
    to whole bytes; the result must be positive."""
    if not isinstance(text, str):
        raise InvalidArgumentError(f"a size must be a string like 70GiB, got {text!r}")
    match = _SIZE.match(text)
    if match is None or match.group(2).lower() not in _UNITS:
        raise InvalidArgumentError(
            f"invalid size {text!r}: use bytes or a number with B, KB, MB, GB, TB, KiB, MiB, GiB, TiB"
        )
    try:
        value = Decimal(match.group(1)) * _UNITS[match.group(2).lower()]
    except InvalidOperation:  # pragma: no cover - the regex admits only decimals
        raise InvalidArgumentError(f"invalid size {text!r}") from None
    size = int(value)
    if size <= 0:
        raise InvalidArgumentError(f"size {text!r} must be at least one byte")
    return size


def size_type(text: str) -> int:
    """:func:`parse_size` as an ``argparse`` type (bad values become usage errors)."""
    try:
        return parse_size(text)
    except InvalidArgumentError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def format_bytes(n: float) -> str:
    """``n`` bytes in binary units, e.g. ``1.50 GiB``."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(value) < 1024:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.2f} {unit}"
        value /= 1024
    return f"{value:.2f} TiB"


__all__ = ["format_bytes", "parse_size", "size_type"]
