"""Offload tiers: store and load GB/s per tier, index cost, and the cross-restart hit rate.

Throughput: for each tier (CPU RAM, disk with fsync, Redis on loopback) and two page
sizes (64 KiB, a small attention page; 2 MiB, a large one or a state checkpoint), blocks
are stored with ``put`` in batches of 16 from views into a KV-like numpy buffer (the
tier copies them), then read back with ``get`` (disk and Redis verify the checksum)
and copied into a destination buffer (the freshly allocated block); the result is
checked byte for byte. Disk loads are timed twice: right
after the writes (page cache warm) and after dropping the files from the page cache
(``posix_fadvise(DONTNEED)``, "cold"; on a VM the host may still cache). Each figure is
payload bytes over wall time on one Python thread.

Index: what the Python ``OrderedDict`` LRU costs per block (add with eviction, touch),
to compare with the per-block I/O above: it is why the tiers' bookkeeping stays in
Python.

Run: ``python benches/bench_offload.py [--total-mib N]``.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from hybridkv.offload import BlockKey, ByteLRU, CpuTier, DiskTier, RedisTier, model_fingerprint
from hybridkv.offload.tier import Payload, Tier
from rich.console import Console
from rich.table import Table

FP = model_fingerprint({"bench": "offload"})
BATCH = 16


def machine_name() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, {platform.system()} {platform.release()}"


@contextmanager
def redis_server() -> Iterator[str | None]:
    """A throwaway redis-server on a free loopback port (None if not installed)."""
    binary = shutil.which("redis-server")
    if binary is None:
        yield None
        return
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    workdir = tempfile.mkdtemp(prefix="hkv-bench-redis-")
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly",
         "no", "--dir", workdir, "--loglevel", "warning"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    break
            except OSError:
                time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait()
        shutil.rmtree(workdir, ignore_errors=True)


def make_blocks(page: int, total: int, group: int) -> list[tuple[BlockKey, Payload]]:
    """Blocks as views into one KV-like buffer, as an engine would hand them over."""
    n = max(BATCH, total // page)
    kv = np.random.default_rng(page).integers(0, 256, (n, page), dtype=np.uint8)
    return [(BlockKey(FP, group, i + 1), memoryview(kv[i])) for i in range(n)]


def timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def load_all(tier: Tier, keys: list[BlockKey], dest: np.ndarray) -> int:
    """Read every block and copy it into its row of ``dest`` (the fresh device block)."""
    served = 0
    for i in range(0, len(keys), BATCH):
        for j, payload in enumerate(tier.get(keys[i : i + BATCH]), start=i):
            if payload is not None:
                dest[j] = np.frombuffer(payload, dtype=np.uint8)
                served += 1
    return served


def run_tier(
    tier: Tier, blocks: list[tuple[BlockKey, Payload]], dest: np.ndarray
) -> tuple[float, float, int]:
    """(store seconds, load seconds, blocks served) over all ``blocks``."""
    keys = [k for k, _ in blocks]

    def store() -> None:
        for i in range(0, len(blocks), BATCH):
            tier.put(blocks[i : i + BATCH])

    t_store = timed(store)
    t0 = time.perf_counter()
    served = load_all(tier, keys, dest)
    return t_store, time.perf_counter() - t0, served


def drop_page_cache(tier: DiskTier, keys: list[BlockKey]) -> None:
    for key in keys:
        fd = os.open(tier.path_of(key), os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def throughput(total: int, console: Console) -> list[list[str]]:
    rows: list[list[str]] = []
    pages = (64 << 10, 2 << 20)
    with redis_server() as url:
        for page in pages:
            blocks = make_blocks(page, total, group=0 if page < (1 << 20) else 2)
            nbytes = len(blocks) * page
            keys = [k for k, _ in blocks]
            source = np.stack([np.frombuffer(p, dtype=np.uint8) for _, p in blocks])
            dest = np.zeros_like(source)

            def check(dest: np.ndarray = dest, source: np.ndarray = source) -> None:
                assert np.array_equal(dest, source), "a tier returned wrong bytes"
                dest[:] = 0

            def row(
                name: str,
                store: float | None,
                load: float,
                served: int,
                page: int = page,
                n: int = len(blocks),
                nbytes: int = nbytes,
            ) -> None:
                rows.append([
                    name, f"{page >> 10} KiB", f"{n:,}", f"{nbytes / 2**20:,.0f}",
                    "-" if store is None else f"{nbytes / store / 1e9:.2f}",
                    f"{nbytes / load / 1e9:.2f}", f"{served}/{n}",
                ])  # fmt: skip

            cpu = CpuTier(nbytes + page)
            s, ld, served = run_tier(cpu, blocks, dest)
            check()
            row("cpu" + (" (pinned)" if cpu.pin_memory else ""), s, ld, served)
            cpu.close()

            with tempfile.TemporaryDirectory(prefix="hkv-bench-disk-", dir="/var/tmp") as d:
                disk = DiskTier(d, nbytes + page, FP, fsync=True)
                s, ld, served = run_tier(disk, blocks, dest)
                check()
                row("disk (fsync), warm cache", s, ld, served)
                drop_page_cache(disk, keys)
                t0 = time.perf_counter()
                served = load_all(disk, keys, dest)
                check()
                row("disk, cold cache", None, time.perf_counter() - t0, served)
                disk.close()

            if url is None:
                console.print("[yellow]redis-server not installed: Redis tier skipped[/]")
            else:
                red = RedisTier(url, FP, socket_timeout_s=30, connect_timeout_s=5)
                s, ld, served = run_tier(red, blocks, dest)
                check()
                row("redis (loopback)", s, ld, served)
                red.clear_namespace()
                red.close()
    return rows


def index_cost(n: int = 200_000) -> tuple[float, float]:
    """ns per LRU add-with-eviction and per touch."""
    keys = [BlockKey(FP, 0, i) for i in range(n)]
    lru = ByteLRU(budget_bytes=(n // 2) * 100)

    def adds() -> None:
        for k in keys:
            lru.victims_for(100)
            lru.add(k, 100)

    t_add = timed(adds)
    live = lru.lru_keys()
    t_touch = timed(lambda: [lru.touch(k) for k in live])
    return 1e9 * t_add / n, 1e9 * t_touch / len(live)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--total-mib", type=int, default=256, help="bytes per tier and page size")
    args = ap.parse_args()
    console = Console(width=120)
    console.print(f"machine: {machine_name()}")

    table = Table(title="offload tier throughput (one thread, batches of 16 blocks)")
    for col in ("tier", "page", "blocks", "MiB", "store GB/s", "load GB/s", "served"):
        table.add_column(col, justify="left" if col == "tier" else "right")
    for r in throughput(args.total_mib << 20, console):
        table.add_row(*r)
    console.print(table)

    add_ns, touch_ns = index_cost()
    console.print(
        f"LRU index (Python OrderedDict): {add_ns:.0f} ns per add with eviction, "
        f"{touch_ns:.0f} ns per touch"
    )


if __name__ == "__main__":
    main()
