"""The Redis tier's bound on one call: a socket wrapper whose reads and writes stop at
the call's overall deadline (a server that drips a byte at a time cannot stretch it) and
whose reads stop at the bytes the call's reply may take (``max_value_bytes`` per value
read, a little slack per other reply and per handshake), installed by subclassing the
URL scheme's connection class (:class:`hybridkv.offload.redis_tier.RedisTier` sets the
budget before every call)."""

from __future__ import annotations

import math
import threading
import time
from typing import Any

#: Reply bytes allowed per command beside the values (status, integers, RESP framing).
_REPLY_SLACK_PER_COMMAND = 64
#: Reply bytes allowed per call for the connection handshake (AUTH, SELECT, HELLO).
_REPLY_SLACK_PER_CALL = 16 << 10


class ReplyTooLargeError(OSError):
    """A Redis reply outgrew the bound of its call (an ``OSError``, so the client drops
    the connection, whose stream is now out of step, and reports a connection error)."""


class _CallBudget(threading.local):
    """The deadline and reply bytes left of the call this thread is making."""

    deadline = math.inf
    bytes_left = math.inf


class _GuardedSocket:
    """A socket whose reads and writes stop at the call's deadline and whose reads stop
    at the call's reply bound; everything else is the wrapped socket's."""

    def __init__(self, sock: Any, budget: _CallBudget) -> None:
        self._sock = sock
        self._budget = budget
        self._timeout: float | None = sock.gettimeout()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)

    def settimeout(self, value: float | None) -> None:
        self._timeout = value
        self._sock.settimeout(value)

    def gettimeout(self) -> float | None:
        return self._timeout

    def _arm(self) -> None:
        remaining = self._budget.deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("the call's deadline passed")  # socket.timeout is this
        if self._timeout is None or self._timeout > remaining:
            self._sock.settimeout(remaining)
        else:
            self._sock.settimeout(self._timeout)

    def _count(self, n: int) -> None:
        budget = self._budget
        budget.bytes_left -= n
        if budget.bytes_left < 0:
            raise ReplyTooLargeError("the reply is larger than this call's bound")

    def recv(self, bufsize: int, *flags: int) -> bytes:
        self._arm()
        data: bytes = self._sock.recv(bufsize, *flags)
        self._count(len(data))
        return data

    def recv_into(self, buffer: Any, nbytes: int = 0, *flags: int) -> int:
        self._arm()
        n: int = self._sock.recv_into(buffer, nbytes, *flags)
        self._count(n)
        return n

    def sendall(self, data: Any, *flags: int) -> None:
        self._arm()
        self._sock.sendall(data, *flags)

    def send(self, data: Any, *flags: int) -> int:
        self._arm()
        n: int = self._sock.send(data, *flags)
        return n


def _guarded_connection_class(base: type, budget: _CallBudget) -> type:
    """``base`` (the URL scheme's connection class) with its socket guarded."""

    def _connect(self: Any) -> Any:
        return _GuardedSocket(base._connect(self), budget)  # type: ignore[attr-defined]

    return type(f"Guarded{base.__name__}", (base,), {"_connect": _connect})
