"""Reading files a user names, within bounds: size, decompressed size, JSON depth.

A config or trace path on the command line may be anything: a FIFO, a device, a sparse
8 GB file, a gzip bomb, JSON nested a million deep or holding a 5,000-digit integer.
:func:`read_bytes` opens only regular files and reads at most ``max_bytes`` (after
decompressing, when the file is gzip), and :func:`parse_json` turns every way
``json.loads`` can fail (``RecursionError`` and the integer-digit limit included) into
the caller's error class, so each is one clear line, never a traceback, a hang or an
exhausted memory.
"""

from __future__ import annotations

import json
import os
import stat
import zlib
from pathlib import Path
from typing import Any

from hybridkv.errors import HybridKVError

_GZIP_MAGIC = b"\x1f\x8b"
_CHUNK = 1 << 20


def _limit_text(nbytes: int) -> str:
    return f"{nbytes / (1 << 20):.0f} MiB" if nbytes >= 1 << 20 else f"{nbytes} bytes"


def read_bytes(
    path: str | Path,
    *,
    max_bytes: int,
    error: type[HybridKVError],
    what: str,
    gunzip: bool = False,
) -> bytes:
    """The bytes of the regular file ``path``, at most ``max_bytes`` of them (of
    decompressed data when ``gunzip`` and the file starts with the gzip magic).

    Anything else (a missing or unreadable file, a directory, FIFO or device, a file
    or a decompressed stream over the bound, a corrupt gzip stream) raises ``error``
    naming ``what`` and the path. Only regular files are opened, without blocking, so a
    FIFO cannot hang the reader.
    """
    p = str(path)
    try:
        fd = os.open(p, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise error(f"cannot read {what} {p!r}: {exc.strerror or exc}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise error(f"{what} {p!r} is not a regular file")
        if st.st_size > max_bytes and not gunzip:
            raise error(
                f"{what} {p!r} is {st.st_size} bytes, more than the {_limit_text(max_bytes)} "
                "accepted"
            )
        with os.fdopen(fd, "rb", closefd=False) as f:
            head = f.read(2)
            if gunzip and head == _GZIP_MAGIC:
                return _gunzip(f, head, max_bytes, error, what, p)
            rest = f.read(max_bytes - len(head) + 1)
    except OSError as exc:
        raise error(f"cannot read {what} {p!r}: {exc.strerror or exc}") from None
    finally:
        os.close(fd)
    data = head + rest
    if len(data) > max_bytes:  # grew while being read
        raise error(f"{what} {p!r} is more than the {_limit_text(max_bytes)} accepted")
    return data


def _gunzip(
    f: Any, head: bytes, max_bytes: int, error: type[HybridKVError], what: str, p: str
) -> bytes:
    """Decompress a gzip stream (members one after another) up to ``max_bytes``."""
    out = bytearray()
    d = zlib.decompressobj(wbits=31)
    fed = False  # whether the current member has started
    data = head
    while True:
        if not data:
            data = f.read(_CHUNK)
            if not data:
                break
        try:
            piece = d.decompress(data, max_bytes + 1 - len(out))
        except zlib.error as exc:
            raise error(f"{what} {p!r} is not a valid gzip stream ({exc})") from None
        fed = True
        out += piece
        if len(out) > max_bytes:
            raise error(
                f"{what} {p!r} decompresses to more than the {_limit_text(max_bytes)} accepted"
            )
        if d.eof:  # another member may follow
            data = d.unused_data
            d = zlib.decompressobj(wbits=31)
            fed = False
        else:
            data = d.unconsumed_tail
    if fed:
        raise error(f"{what} {p!r} is a truncated gzip stream")
    return bytes(out)


def parse_json(data: bytes | str, *, error: type[HybridKVError], what: str) -> Any:
    """``json.loads(data)`` with every failure as ``error`` naming ``what``: invalid
    JSON or text, nesting deeper than the parser's recursion limit, integers of more
    digits than Python converts (4,300 by default)."""
    try:
        return json.loads(data)
    except RecursionError:
        raise error(f"{what} is nested too deeply to parse") from None
    except UnicodeDecodeError as exc:
        raise error(f"{what} is not UTF-8 text ({exc.reason})") from None
    except ValueError as exc:  # JSONDecodeError, the int digit limit
        message = str(exc).split(";")[0]
        raise error(f"{what} is not valid JSON: {message}") from None
