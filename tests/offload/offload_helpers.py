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

    def __init__(self, workdir: Path, extra_args: Sequence[str] = (), password: str = "") -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed: run `make redis` (Debian package)")
        self.binary = binary
        self.workdir = workdir
        self.password = password
        self.extra_args = [*extra_args, *(["--requirepass", password] if password else [])]
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

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
                    *self.extra_args,
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
                    reply = s.recv(64)
                    if reply.startswith(b"+PONG") or (self.password and b"NOAUTH" in reply):
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


# ------------------------------------------------------------------ manager-level helpers


def hybrid_plan(num_blocks: tuple[int, int, int] = (400, 40, 40), mode: str = "align"):  # type: ignore[no-untyped-def]
    """Full attention at block size 16, sliding window at 528 and a state group
    checkpointing every 528 tokens: three page sizes, none a multiple of another."""
    import dataclasses

    from hybridkv.models import ModelSpec
    from hybridkv.planner import plan_with_blocks
    from hybridkv.specs import FullAttentionSpec, SlidingWindowSpec, StateSpec

    full = FullAttentionSpec(num_kv_heads=1, head_size=8)
    swa = SlidingWindowSpec(num_kv_heads=1, head_size=4, window=1000)
    state = StateSpec(shapes=((3, 5), (2, 4, 3)), dtypes=("fp32", "bf16"))
    model = ModelSpec(name="offload-toy", layer_specs=(full, swa, state, full))
    plan = plan_with_blocks(
        model,
        list(num_blocks),
        block_size=16,
        max_num_seqs=8,
        max_model_len=8192,
        max_num_batched_tokens=4096,
        mamba_cache_mode=mode,
    )

    def at(g, bs):  # type: ignore[no-untyped-def]
        return dataclasses.replace(
            g,
            block_size=bs,
            page_size_bytes=g.spec.page_size_bytes(bs) * len(g.layers),
            slot_address_space=g.num_blocks * bs,
        )

    groups = tuple(at(g, 528) if g.kind != "full_attention" else g for g in plan.groups)
    return dataclasses.replace(plan, groups=groups)


def model_step(manager, pages, fingerprint: bytes, rid: int, start: int, end: int) -> None:  # type: ignore[no-untyped-def]
    """Play the model for tokens ``[start, end)`` of ``rid``: every completed block's
    page (and a state that ends on a checkpoint boundary) gets the bytes a model would
    compute, a function of the block's key; a mid-block state gets filler."""
    from hybridkv.offload import block_keys
    from hybridkv.offload.pages import synthetic_page

    for g, grp in enumerate(manager.plan.groups):
        bs = grp.block_size
        table = manager.block_table(g, [rid])[0]
        hashes = manager.block_hashes(g, rid)
        if grp.kind == "state" and manager.mamba_cache_mode == "all":
            # Every boundary entry is a checkpoint; a mid-block end is the running state.
            for k in range(start // bs, end // bs):
                key = block_keys(fingerprint, g, hashes[k : k + 1])[0]
                page = synthetic_page(key, grp.page_size_bytes)
                pages.arrays[g][table[k]] = np.frombuffer(page, np.uint8)
            if end % bs:
                pages.arrays[g][table[end // bs]] = 0xEE
            continue
        if grp.kind == "state":
            w = -(-end // bs) - 1
            if end % bs == 0:
                key = block_keys(fingerprint, g, hashes[w : w + 1])[0]
                page = synthetic_page(key, grp.page_size_bytes)
                pages.arrays[g][table[w]] = np.frombuffer(page, np.uint8)
            else:
                pages.arrays[g][table[w]] = 0xEE
            continue
        for k in range(start // bs, end // bs):
            if table[k] != 0:
                key = block_keys(fingerprint, g, hashes[k : k + 1])[0]
                page = synthetic_page(key, grp.page_size_bytes)
                pages.arrays[g][table[k]] = np.frombuffer(page, np.uint8)


def check_loaded(manager, pages, fingerprint: bytes, rid: int, hit: int, end: int) -> int:  # type: ignore[no-untyped-def]
    """Assert every page loaded for ``rid``'s hit is byte-exact; return pages checked."""
    from hybridkv.offload import block_keys
    from hybridkv.offload.pages import synthetic_page

    checked = 0
    for g, grp in enumerate(manager.plan.groups):
        bs = grp.block_size
        table = manager.block_table(g, [rid])[0]
        hashes = manager.block_hashes(g, rid)
        if grp.kind == "state" and manager.mamba_cache_mode != "all":
            if hit == 0:
                continue
            key = block_keys(fingerprint, g, hashes[hit // bs - 1 : hit // bs])[0]
            got = bytes(pages.arrays[g][table[-(-end // bs) - 1]])
            assert got == synthetic_page(key, grp.page_size_bytes), f"state page of {rid}"
            checked += 1
            continue
        for k in range(hit // bs):
            if table[k] == 0:
                continue
            key = block_keys(fingerprint, g, hashes[k : k + 1])[0]
            got = bytes(pages.arrays[g][table[k]])
            assert got == synthetic_page(key, grp.page_size_bytes), f"group {g} block {k}"
            checked += 1
    return checked
