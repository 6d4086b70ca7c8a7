"""Block-pool throughput through the Python API at 10^6 blocks.

For each batch size (1, 16, 256 blocks per call) a fresh pool of 10^6 blocks runs one
cycle: allocate, cache_blocks (random 128-bit hashes), free (the blocks stay cached),
lookup (all hits), touch (prefix hits that pull free blocks out of the middle of the
LRU queue), then allocate again from blocks that still carry hashes (alloc+evict). Inputs are built before timing; each op is timed with
``time.perf_counter`` over all its calls, and the best of ``--repeat`` cycles is
reported. "call floor" is ``lookup`` of zero hashes: the cost of crossing into Rust,
which dominates at batch 1.

Run: ``python benches/bench_block_pool.py [--blocks N] [--repeat R]``.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from hybridkv import BlockPool
from rich.console import Console
from rich.table import Table

BATCHES = (1, 16, 256)
# Calls per op at batch 1 (a full pass of 10^6 single-block calls per op would take
# seconds and measure the same per-call cost).
MAX_CALLS = 200_000


@dataclass
class Row:
    op: str
    batch: int
    calls: int
    seconds: float

    @property
    def blocks(self) -> int:
        return self.calls * self.batch

    def cells(self) -> list[str]:
        per_call = self.seconds / self.calls
        per_block_ns = 1e9 * self.seconds / max(self.blocks, 1)
        return [
            self.op,
            str(self.batch),
            f"{self.calls:,}",
            f"{1 / per_call:,.0f}",
            f"{self.blocks / self.seconds:,.0f}" if self.blocks else "-",
            f"{1e9 * per_call:,.0f}",
            f"{per_block_ns:,.1f}" if self.blocks else "-",
        ]


def timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def each(f: Callable[..., object], *args: Sequence[object]) -> Callable[[], None]:
    """A loop calling ``f`` once per element of the argument lists (zipped)."""

    def run() -> None:
        for a in zip(*args, strict=True):
            f(*a)

    return run


def one_cycle(num_blocks: int, batch: int, seed: int) -> dict[str, float]:
    calls = min(num_blocks // batch, MAX_CALLS)
    rng = np.random.default_rng(seed)
    flat = rng.integers(0, 2**63, size=(calls * batch, 2), dtype=np.int64).astype(np.uint64)
    hashes = [flat[i * batch : (i + 1) * batch] for i in range(calls)]
    pool = BlockPool(num_blocks + 1)  # + the null block
    out: dict[str, float] = {}
    ids: list[npt.NDArray[np.int32]] = []

    def allocate() -> None:
        for _ in range(calls):
            ids.append(pool.allocate(batch))

    out["allocate"] = timed(allocate)
    out["cache"] = timed(each(pool.cache_blocks, ids, hashes))
    out["free"] = timed(each(pool.free, ids))
    assert pool.num_cached == calls * batch
    out["lookup hit"] = timed(each(pool.lookup, hashes))
    out["touch hit"] = timed(each(pool.touch, ids))
    assert pool.num_in_use == calls * batch and pool.num_cached == 0
    pool.free(np.concatenate(ids))
    # Re-allocating now pops blocks that still carry hashes: every block is evicted.
    before_free = pool.num_free
    ids.clear()
    out["alloc+evict"] = timed(allocate)
    assert pool.num_free == before_free - calls * batch
    pool.take_events()
    empty = np.zeros((0, 2), np.uint64)
    out["call floor"] = timed(each(pool.lookup, [empty] * calls))
    return out


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--blocks", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args(argv)

    rows: list[Row] = []
    floor: Row | None = None
    t_start = time.perf_counter()
    for batch in BATCHES:
        best: dict[str, float] = {}
        for r in range(args.repeat):
            for op, s in one_cycle(args.blocks, batch, seed=r).items():
                best[op] = min(best.get(op, s), s)
        calls = min(args.blocks // batch, MAX_CALLS)
        for op, s in best.items():
            if op != "call floor":
                rows.append(Row(op, batch, calls, s))
            elif floor is None or s / calls < floor.seconds / floor.calls:
                floor = Row(op, 0, calls, s)

    table = Table(
        title=f"hybridkv BlockPool, {args.blocks:,} blocks, best of {args.repeat} (Python API)"
    )
    for col in ("op", "batch", "calls", "calls/s", "blocks/s", "ns/call", "ns/block"):
        table.add_column(col, justify="left" if col == "op" else "right", no_wrap=True)
    for batch in BATCHES:
        for row in rows:
            if row.batch == batch:
                table.add_row(*row.cells())
        table.add_section()
    if floor is not None:
        table.add_row(*floor.cells())
    console = Console()
    console.print(table)
    console.print(
        "calls/s counts Python calls; at batch 1 the call floor (argument conversion and "
        "the Python<->Rust crossing) is most of the cost, so ns/block there is not the "
        f"core's speed. Total bench time {time.perf_counter() - t_start:.1f} s."
    )


if __name__ == "__main__":
    main()
