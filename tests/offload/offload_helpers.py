"""Shared helpers of the offload tests (imported by file name, like tests/kernels)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from hybridkv.offload import BlockKey
from hybridkv.offload.tier import Payload

# Three groups at their own block sizes, page bytes from their specs (no common size):
# full attention, block 16: 16 tokens x 2 layers x 2 heads x (64 + 64) x 2 B;
# sliding window, block 528: 528 tokens x 1 layer x 1 head x (32 + 32) x 2 B;
# a Mamba-2-like state: (3 x 96) + (2 x 16 x 8) fp32 per layer x 2 layers.
PAGES = {0: 16 * 2 * 2 * 128 * 2, 1: 528 * 1 * 1 * 64 * 2, 2: (3 * 96 + 2 * 16 * 8) * 4 * 2}


def payload_for(key: BlockKey, size: int) -> bytes:
    """Bytes determined by the key (so any process can check what it reads)."""
    rng = np.random.default_rng([key.group, key.block_hash & (2**64 - 1), key.block_hash >> 64])
    return rng.integers(0, 256, size, dtype=np.uint8).tobytes()


def items(group: int, hashes: Sequence[int], fp: bytes) -> list[tuple[BlockKey, Payload]]:
    """One page-sized block per hash for ``group``."""
    out: list[tuple[BlockKey, Payload]] = []
    for h in hashes:
        key = BlockKey(fp, group, h)
        out.append((key, payload_for(key, PAGES[group])))
    return out


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """One redis-server process bound to 127.0.0.1."""

    def __init__(self, workdir: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed: run `make redis` (Debian package)")
        self.binary = binary
        self.workdir = workdir
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Start on the current port (a fresh free one the first time)."""
        attempts = 0
        while True:
            attempts += 1
            if self.port == 0 or attempts > 1:
                self.port = _free_port()
            self.proc = subprocess.Popen(
                [
                    self.binary,
                    "--port", str(self.port),
                    "--bind", "127.0.0.1",
                    "--save", "",
                    "--appendonly", "no",
                    "--dir", str(self.workdir),
                    "--loglevel", "warning",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )  # fmt: skip
            if self._wait_ready():
                return
            self.stop()
            if attempts >= 5:
                raise RuntimeError(f"redis-server did not start on 127.0.0.1:{self.port}")

    def _wait_ready(self, timeout: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                return False
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return True
            except OSError:
                pass
            time.sleep(0.02)
        return False

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def client(self):  # type: ignore[no-untyped-def]
        import redis

        return redis.Redis.from_url(self.url, socket_timeout=2.0)
