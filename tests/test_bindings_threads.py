"""The bindings under threads and impossible sizes (issue 15 items 2, 3 and 10).

- A numpy array written by one thread (``block_table_into`` holds a write borrow on
  ``out`` with the GIL released) and read by another (hashing it, adding it as a
  prompt) gives the reader an ``InvalidArgumentError``, never a Rust panic
  (``PanicException`` is a ``BaseException`` that ``except Exception`` misses).
- A manager, pool or registry shared by several threads serialises their calls: none
  fails with ``RuntimeError: Already borrowed``, and the state stays consistent.
- ``BlockPool(2**31 - 1)``, ``PoolRegistry([2**31 - 1, ...])`` and the manager refuse
  pools whose bookkeeping cannot be allocated with a clean error, checked in a
  subprocess whose address space is capped, so the refusal does not depend on this
  machine's memory and an abort (SIGABRT) would show as the child's death.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable

import numpy as np
import pytest
from hybridkv import (
    BlockPool,
    KVCacheManager,
    ManagerConfig,
    ManagerGroup,
    PoolRegistry,
    errors,
    hash_token_blocks,
)


def _manager() -> KVCacheManager:
    groups = (
        ManagerGroup("full_attention", 16, 4096),
        ManagerGroup("sliding_window", 16, 4096, 64),
    )
    return KVCacheManager(ManagerConfig(groups))


def _run_threads(workers: list[Callable[[], None]], seconds: float) -> list[BaseException]:
    """Run each worker in a loop on its own thread for about ``seconds``; any
    exception ends that worker and is collected (a panic is a BaseException)."""
    stop = time.monotonic() + seconds
    bad: list[BaseException] = []

    def loop(work: Callable[[], None]) -> None:
        try:
            while time.monotonic() < stop:
                work()
        except BaseException as exc:
            bad.append(exc)

    threads = [threading.Thread(target=loop, args=(w,), daemon=True) for w in workers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(seconds + 30)
        assert not t.is_alive(), "a worker thread hung"
    return bad


# -------------------------------------------------------- item 2: borrow conflicts


def test_reading_an_array_another_thread_writes_is_an_error_not_a_panic() -> None:
    m = _manager()
    ids = np.arange(1, 65, dtype=np.int64)
    m.add_requests(ids, [np.arange(256, dtype=np.int32) for _ in ids])
    assert m.allocate_slots(ids, np.full(64, 256), np.zeros(64, dtype=np.int64)).all()
    # A wide output: filling its zero padding keeps the writer busy with the GIL off.
    out = np.zeros((64, 1 << 16), dtype=np.int32)
    row = out[0]  # a view: it shares the writer's buffer
    conflicts = [0]
    next_id = [10_000]

    def writer() -> None:
        m.block_table_into(0, ids, out)

    def reader() -> None:
        for call in (
            lambda: hash_token_blocks(row, 16),
            lambda: m.add_requests([next_id[0]], [row[:32]]),
        ):
            try:
                call()
            except errors.InvalidArgumentError as exc:
                assert "written elsewhere" in str(exc)
                conflicts[0] += 1
            else:
                next_id[0] += 1

    bad = _run_threads([writer, reader], seconds=2.0)
    assert bad == [], [f"{type(e).__module__}.{type(e).__name__}: {e}" for e in bad]
    m.check_invariants()
    assert conflicts[0] > 0, "the race never happened: the test did not test anything"


# ------------------------------------------------------------ item 10: shared objects


def test_manager_shared_by_threads_never_raises_already_borrowed() -> None:
    m = _manager()
    calls = [0]
    lock = threading.Lock()
    counters = iter(range(1, 1 << 30))

    def worker() -> None:
        with lock:
            base = next(counters) * 8
        rids = np.arange(base, base + 8, dtype=np.int64)
        m.add_requests(rids, [np.arange(40, dtype=np.int32) + int(r) for r in rids])
        m.get_computed_tokens(rids)
        m.allocate_slots(rids, np.full(8, 40), np.zeros(8, dtype=np.int64))
        m.block_table(0, rids)
        m.slot_mapping(1, rids, np.zeros(8, dtype=np.int64))
        assert int(rids[0]) in m
        m.stats()
        m.free(rids)
        with lock:
            calls[0] += 8

    bad = _run_threads([worker] * 4, seconds=1.5)
    assert bad == [], [f"{type(e).__name__}: {e}" for e in bad]
    assert calls[0] > 0 and m.num_requests == 0
    m.check_invariants()


@pytest.mark.parametrize("kind", ["pool", "registry"])
def test_pools_shared_by_threads_are_serialised(kind: str) -> None:
    pool: BlockPool | PoolRegistry = BlockPool(1024) if kind == "pool" else PoolRegistry([1024, 64])
    done = [0]
    lock = threading.Lock()

    def worker() -> None:
        # A list argument is converted by numpy (Python code: the GIL can switch
        # threads) while the call is in progress.
        if isinstance(pool, BlockPool):
            ids = pool.allocate(4)
            pool.touch(list(ids))
            pool.free(list(ids) * 2)
            _ = pool.num_free, pool.snapshot()
        else:
            ids = pool.allocate(0, 4)
            pool.touch(0, list(ids))
            pool.free(0, list(ids) * 2)
            _ = pool.num_free(0), pool.snapshot(0)
        with lock:
            done[0] += 1

    bad = _run_threads([worker] * 4, seconds=1.0)
    assert bad == [], [f"{type(e).__name__}: {e}" for e in bad]
    assert done[0] > 0
    pool.check_invariants()
    assert (pool.num_free if isinstance(pool, BlockPool) else pool.num_free(0)) == 1023


# ---------------------------------------------------- item 3: impossible pool sizes

_CHILD = textwrap.dedent(
    """
    import resource, sys
    resource.setrlimit(resource.RLIMIT_AS, (6 << 30, 6 << 30))
    from hybridkv import BlockPool, KVCacheManager, ManagerConfig, ManagerGroup, PoolRegistry
    from hybridkv.errors import HybridKVError
    big = 2**31 - 1
    for name, make in [
        ("BlockPool", lambda: BlockPool(big)),
        ("PoolRegistry", lambda: PoolRegistry([big, 16])),
        ("PoolRegistry-many", lambda: PoolRegistry([2**27] * 64)),
        ("KVCacheManager", lambda: KVCacheManager(
            ManagerConfig((ManagerGroup("full_attention", 16, big),)))),
    ]:
        try:
            make()
        except HybridKVError as exc:
            print(name, type(exc).__name__, "does not fit" in str(exc))
        else:
            print(name, "built")
    print("alive")
    """
)


def test_impossible_pool_sizes_are_a_clean_error_not_an_abort() -> None:
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD], capture_output=True, text=True, timeout=120, env=env
    )
    assert proc.returncode == 0, f"child died ({proc.returncode}): {proc.stderr[-2000:]}"
    lines = proc.stdout.split("\n")
    for name in ("BlockPool", "PoolRegistry", "PoolRegistry-many", "KVCacheManager"):
        assert f"{name} InvalidArgumentError True" in lines, proc.stdout
    assert "alive" in lines
