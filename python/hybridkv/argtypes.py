"""``argparse`` value types and arguments shared by the subcommands (``plan``,
``simulate``): each bad value is one clear line from the parser, never a traceback."""

from __future__ import annotations

import argparse


def _int_at_least(text: str, minimum: int, what: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = minimum - 1
    if value < minimum:
        raise argparse.ArgumentTypeError(f"expected a {what} integer, got {text!r}")
    return value


def positive_int(text: str) -> int:
    """An ``argparse`` type for integers >= 1."""
    return _int_at_least(text, 1, "positive")


def non_negative_int(text: str) -> int:
    """An ``argparse`` type for integers >= 0."""
    return _int_at_least(text, 0, "non-negative")


def add_state_cache_slots_argument(p: argparse.ArgumentParser) -> None:
    """``--state-cache-slots N``: spare state blocks for cached checkpoints."""
    p.add_argument(
        "--state-cache-slots",
        type=non_negative_int,
        default=0,
        metavar="N",
        help="spare blocks per state group (modes none/align) that keep finished turns' "
        "state checkpoints cached; paid for in token capacity",
    )
