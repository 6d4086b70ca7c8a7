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

Cross-restart hit rate: the bundled agentic trace is served by the simulator on a
hybrid model (``qwen3-next-80b-a3b``, 16 GiB of KV, static layout) with
``cpu:8GiB,disk:DIR:100GiB`` (and again with ``cpu:8GiB,redis://...``); then a fresh
manager and connector (a restarted server: empty device cache and RAM tier, same disk
directory or Redis server) serve it again. "Re-served prefix
tokens" are, per request, the longest prefix a hit can cover: its prompt less the last
token, rounded down to the hit granularity (the state checkpoint interval). The rate is
the restarted server's hits (device plus offload) over those tokens.

Run: ``python benches/bench_offload.py [--total-mib N] [--skip-restart]``.
"""

from __future__ import annotations

import argparse
import math
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
from typing import Any

import numpy as np
from hybridkv.cost_model import CostModel
from hybridkv.offload import (
    BlockKey,
    ByteLRU,
    CpuTier,
    DiskTier,
    OffloadConfig,
    RedisTier,
    model_fingerprint,
    parse_offload_spec,
)
from hybridkv.offload.sim import SimOffload
from hybridkv.offload.tier import Payload, Tier
from rich.console import Console
from rich.table import Table

FP = model_fingerprint({"bench": "offload"}, weights="test")
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
                    f"{nbytes / load / 1e9:.2f}" if load == load else "-", f"{served}/{n}",
                ])  # fmt: skip

            cpu = CpuTier(nbytes + page)
            s, ld, served = run_tier(cpu, blocks, dest)
            check()
            row("cpu" + (" (pinned)" if cpu.pin_memory else ""), s, ld, served)
            cpu.close()
            # Steady state: a full tier evicting as it stores (freed memory is reused,
            # where filling a fresh tier pays a page fault per new page of RAM).
            half = len(blocks) // 2
            full = CpuTier(half * page)
            for i in range(0, half, BATCH):
                full.put(blocks[i : i + BATCH])
            t0 = time.perf_counter()
            for i in range(half, len(blocks), BATCH):
                full.put(blocks[i : i + BATCH])
            s = (time.perf_counter() - t0) * len(blocks) / (len(blocks) - half)
            row("cpu, full (evicting)", s, float("nan"), len(full.lru_keys()))
            full.close()

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


class RecordingOffload(SimOffload):
    """SimOffload that records every request's first-admission hit."""

    def __init__(self, config: OffloadConfig) -> None:
        super().__init__(config, weights="bench-weights")
        self.hits: dict[int, int] = {}

    def on_step(self, manager: Any, output: Any) -> None:
        super().on_step(manager, output)
        for rid, hit in zip(output.new_req_ids.tolist(), output.new_hit_tokens.tolist(),
                            strict=True):  # fmt: skip
            self.hits[int(rid)] = int(hit)


def restart_hit_rate(console: Console) -> None:
    from hybridkv.simulate import SimConfig, make_plans, resolve_trace, simulate_plan

    cfg = SimConfig(model="qwen3-next-80b-a3b", memory_bytes=16 << 30, trace="agentic")
    trace = resolve_trace(cfg.trace)
    plan = make_plans(cfg, trace)["static"]
    assert not isinstance(plan, str)
    cost = CostModel(plan, gpu=cfg.gpu)
    lens = trace.prompt_lens.astype(np.int64)
    table = Table(title=f"cross-restart hits: {cfg.model}, trace {trace.name}, static layout")
    for col in ("tiers", "run", "prompt tok", "re-servable tok", "hit tok", "external tok",
                "re-served", "wall s"):  # fmt: skip
        table.add_column(col, justify="left" if col in ("tiers", "run") else "right")
    gran = sim_granularity(plan)
    reservable = int(((lens - 1) // gran * gran).sum())
    with (
        tempfile.TemporaryDirectory(prefix="hkv-bench-restart-", dir="/var/tmp") as d,
        redis_server() as url,
    ):
        setups = [("cpu:8GiB,disk:DIR:100GiB", f"cpu:8GiB,disk:{d}:100GiB")]
        if url is not None:
            setups.append(("cpu:8GiB,redis", f"cpu:8GiB,{url}"))
        for label, spec in setups:
            for run in ("first server", "restarted server"):
                sim = RecordingOffload(parse_offload_spec(spec))
                t0 = time.perf_counter()
                res = simulate_plan(plan, trace, layout="static", cost=cost, offload=sim,
                                    manager_factory=sim.manager_factory)  # fmt: skip
                wall = time.perf_counter() - t0
                rep = sim.close()[-1]
                hit = sum(sim.hits.values())
                table.add_row(
                    label, run, f"{int(lens.sum()):,}", f"{reservable:,}",
                    f"{hit:,}", f"{res.report['external_hit_tokens']:,}",
                    f"{hit / reservable:.2%}", f"{wall:.1f}",
                )  # fmt: skip
                if rep["load_mismatches"]:
                    raise SystemExit(f"{rep['load_mismatches']} loaded pages were wrong")
    console.print(table)


def sim_granularity(plan: Any) -> int:
    """Positions a hit can end on: every group's block boundary."""
    return math.lcm(*(int(g.block_size) for g in plan.groups if g.kind != "cross_attention"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--total-mib", type=int, default=256, help="bytes per tier and page size")
    ap.add_argument("--skip-restart", action="store_true", help="throughput only")
    ap.add_argument("--skip-throughput", action="store_true", help="restart hit rate only")
    args = ap.parse_args()
    console = Console(width=120)
    console.print(f"machine: {machine_name()}")

    if not args.skip_throughput:
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
    if not args.skip_restart:
        restart_hit_rate(console)


if __name__ == "__main__":
    main()
