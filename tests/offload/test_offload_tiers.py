"""CPU and disk tiers, the tier stack and the store worker (Redis has its own file)."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from hybridkv.errors import InvalidArgumentError, OffloadConfigError
from hybridkv.offload import (
    BlockKey,
    CpuTier,
    DiskTier,
    StoreWorker,
    TierStack,
    model_fingerprint,
    parse_offload_spec,
)
from hybridkv.offload.block_format import HEADER_BYTES
from hybridkv.offload.tier import Payload
from offload_helpers import PAGES
from offload_helpers import items as _items

FP = model_fingerprint({"name": "tiers-test"}, weights="test")
OTHER_FP = model_fingerprint({"name": "another-model"}, weights="test")


def items(group: int, hashes: Sequence[int], fp: bytes = FP) -> list[tuple[BlockKey, Payload]]:
    return _items(group, hashes, fp)


# ------------------------------------------------------------------------------ CPU tier


def test_cpu_capacity_is_budget_over_page_bytes_not_over_groups() -> None:
    page0 = PAGES[0]
    budget = 10 * page0 + page0 // 2
    tier = CpuTier(budget)
    # Blocks of three groups have passed through; the budget is still not split.
    tier.put(items(1, [1]) + items(2, [1]))
    tier.put(items(0, range(100, 130)))
    assert len([k for k in tier.lru_keys() if k.group == 0]) == budget // page0 == 10
    assert tier.used_bytes == 10 * page0 <= budget
    # A group with another page size gets budget // its own page bytes.
    tier.put(items(1, range(200, 260)))
    assert len(tier) == budget // PAGES[1]
    assert tier.used_bytes <= budget


def test_cpu_lru_keeps_recently_used() -> None:
    page = PAGES[2]
    tier = CpuTier(3 * page)
    tier.put(items(2, [1, 2, 3]))
    assert tier.get([BlockKey(FP, 2, 1)])[0] is not None  # 1 becomes most recent
    tier.put(items(2, [4]))  # evicts 2, the least recently used
    assert tier.contains([BlockKey(FP, 2, h) for h in (1, 2, 3, 4)]) == [True, False, True, True]
    assert tier.stats.evicted == 1


def test_cpu_rejects_oversized_and_keeps_first_bytes_of_a_key() -> None:
    tier = CpuTier(100)
    key = BlockKey(FP, 0, 5)
    tier.put([(key, b"x" * 101)])
    assert len(tier) == 0 and tier.stats.rejected == 1
    tier.put([(key, b"a" * 10)])
    tier.put([(key, b"b" * 10)])  # same key: only touched
    got = tier.get([key])[0]
    assert got is not None and bytes(got) == b"a" * 10
    with pytest.raises(InvalidArgumentError):
        CpuTier(0)


def test_cpu_copies_mutable_payloads_and_returns_read_only_views() -> None:
    tier = CpuTier(1 << 20)
    buf = bytearray(b"hello")
    key = BlockKey(FP, 0, 1)
    tier.put([(key, buf)])
    buf[0] = ord("j")
    got = tier.get([key])[0]
    assert got is not None and bytes(got) == b"hello" and got.readonly


def test_cpu_accepts_numpy_pages() -> None:
    tier = CpuTier(1 << 20)
    page = np.arange(48, dtype=np.float32).reshape(3, 16)
    key = BlockKey(FP, 2, 9)
    tier.put([(key, memoryview(page))])
    got = tier.get([key])[0]
    assert got is not None
    np.testing.assert_array_equal(np.frombuffer(got, dtype=np.float32).reshape(3, 16), page)


# ------------------------------------------------------------------------------ disk tier


def test_disk_roundtrip_restart_and_namespaces(tmp_path: Path) -> None:
    tier = DiskTier(tmp_path, 1 << 22, FP)
    blocks = items(0, [1, 2]) + items(1, [1 << 100]) + items(2, [7])
    tier.put(blocks)
    keys = [k for k, _ in blocks]
    assert [bytes(p) if p is not None else None for p in tier.get(keys)] == [
        bytes(p) for _, p in blocks
    ]
    reopened = DiskTier(tmp_path, 1 << 22, FP)
    assert reopened.scanned_blocks == 4 and set(reopened.lru_keys()) == set(keys)
    assert [bytes(p) if p is not None else None for p in reopened.get(keys)] == [
        bytes(p) for _, p in blocks
    ]
    # Another model in the same directory sees none of it, and keeps its own.
    other = DiskTier(tmp_path, 1 << 22, OTHER_FP)
    assert len(other) == 0
    assert other.get([BlockKey(OTHER_FP, k.group, k.block_hash) for k in keys]) == [None] * 4
    assert len(DiskTier(tmp_path, 1 << 22, FP)) == 4


def test_disk_budget_lru_and_smaller_budget_on_restart(tmp_path: Path) -> None:
    page = PAGES[2]
    tier = DiskTier(tmp_path, 4 * page, FP, fsync=False)
    for h in range(6):
        tier.put(items(2, [h]))
        time.sleep(0.02)  # distinct modification times (file timestamps are jiffy-coarse)
    assert [k.block_hash for k in tier.lru_keys()] == [2, 3, 4, 5]
    assert tier.get([BlockKey(FP, 2, 2)])[0] is not None  # 2 becomes the newest
    files = sorted(p.name for p in tier.namespace.rglob("*.blk"))
    assert len(files) == 4
    smaller = DiskTier(tmp_path, 2 * page, FP)
    assert sorted(k.block_hash for k in smaller.lru_keys()) == [2, 5]
    assert len(list(smaller.namespace.rglob("*.blk"))) == 2


def test_disk_corrupt_truncated_foreign_files_are_misses_and_removed(tmp_path: Path) -> None:
    tier = DiskTier(tmp_path, 1 << 22, FP)
    blocks = items(0, range(1, 7))
    tier.put(blocks)
    keys = [k for k, _ in blocks]
    paths = [tier.path_of(k) for k in keys]
    # 1: a flipped payload byte; 2: a flipped header byte; 3: truncated mid-payload;
    # 4: another key's (valid) file renamed into place; 5: an old format version.
    data = bytearray(paths[0].read_bytes())
    data[HEADER_BYTES + 100] ^= 1
    paths[0].write_bytes(data)
    data = bytearray(paths[1].read_bytes())
    data[30] ^= 0x80
    paths[1].write_bytes(data)
    with open(paths[2], "r+b") as f:
        f.truncate(HEADER_BYTES + 10)
    os.replace(paths[4], paths[3])
    data = bytearray(paths[5].read_bytes())
    data[4] = 0
    paths[5].write_bytes(data)
    reopened = DiskTier(tmp_path, 1 << 22, FP)
    got = reopened.get(keys)
    assert got == [None] * 6
    assert reopened.stats.corrupt_removed == 5  # key 4's file had moved: plain miss
    assert not any(p.exists() for p in paths)
    assert len(reopened) == 0 and reopened.used_bytes == 0


def test_disk_scan_removes_dead_writers_temp_files_and_leaves_junk_alone(tmp_path: Path) -> None:
    # Only regular files with the tier's own names are ever removed: files it did not
    # write (a stray name, a block name in the wrong shard) stay, unindexed and counted.
    tier = DiskTier(tmp_path, 1 << 22, FP)
    tier.put(items(0, [1]))
    shard = tier.path_of(BlockKey(FP, 0, 1)).parent
    (shard / "junk.blk").write_bytes(b"x")
    (shard / ("ab" * 16 + ".blk")).write_bytes(b"in the wrong shard")
    (tier.namespace / "tmp" / "999999999-deadbeef.tmp").write_bytes(b"half a block")
    (tier.namespace / "tmp" / f"{os.getppid()}-ab12.tmp").write_bytes(b"someone else's")
    reopened = DiskTier(tmp_path, 1 << 22, FP)
    assert len(reopened) == 1 and reopened.removed_on_scan == 0
    assert reopened.ignored_on_scan == 2
    assert (shard / "junk.blk").exists() and (shard / ("ab" * 16 + ".blk")).exists()
    left = sorted(p.name for p in (tier.namespace / "tmp").iterdir())
    assert left == [f"{os.getppid()}-ab12.tmp"]


def test_disk_tier_refuses_unusable_directory(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_bytes(b"")
    with pytest.raises(OffloadConfigError):
        DiskTier(blocker, 1024, FP)


# ------------------------------------------------------------------------------ stack


def test_multi_group_offload_reload_byte_exact(tmp_path: Path) -> None:
    """Groups at block sizes 16 and 528 plus a state group, through CPU and disk."""
    cfg = parse_offload_spec(f"cpu:1MiB,disk:{tmp_path}:64MiB")
    stack = TierStack.from_config(cfg, FP)
    blocks = items(0, range(40)) + items(1, range(40)) + items(2, range(40))
    stack.put(blocks)
    keys = [k for k, _ in blocks]
    got = stack.get(keys)
    assert all(
        g is not None and bytes(g) == bytes(p) for g, (_, p) in zip(got, blocks, strict=True)
    )
    assert stack.tiers[0].used_bytes <= 1 << 20
    # A new process: RAM is empty, the disk serves every block byte-exact.
    stack.close()
    restarted = TierStack.from_config(cfg, FP)
    assert restarted.locate(keys) == [1] * len(keys)
    got = restarted.get(keys)
    assert all(
        g is not None and bytes(g) == bytes(p) for g, (_, p) in zip(got, blocks, strict=True)
    )
    assert restarted.served == [0, len(keys)]
    # Write-through promoted what fits back into RAM.
    assert len(restarted.tiers[0]) > 0


def test_write_back_moves_evicted_blocks_down(tmp_path: Path) -> None:
    page = PAGES[0]
    cpu = CpuTier(3 * page)
    disk = DiskTier(tmp_path, 100 * page, FP, fsync=False)
    stack = TierStack([cpu, disk], write_policy="write-back")
    blocks = items(0, range(8))
    stack.put(blocks)
    assert len(cpu) == 3 and len(disk) == 5  # only the evicted ones went down
    assert stack.locate([k for k, _ in blocks]) == [1] * 5 + [0] * 3
    got = stack.get([k for k, _ in blocks])
    assert [bytes(g) if g is not None else None for g in got] == [bytes(p) for _, p in blocks]
    assert len(cpu) == 3  # write-back never promotes on the load path


def test_write_through_stores_everywhere_and_tiers_evict_independently(tmp_path: Path) -> None:
    page = PAGES[0]
    cpu = CpuTier(2 * page)
    disk = DiskTier(tmp_path, 5 * page, FP, fsync=False)
    stack = TierStack([cpu, disk])
    blocks = items(0, range(6))
    stack.put(blocks)
    assert len(cpu) == 2 and len(disk) == 5
    assert stack.locate([k for k, _ in blocks]) == [-1, 1, 1, 1, 0, 0]
    assert stack.get([blocks[0][0]]) == [None] and stack.misses == 1
    assert stack.stats()["tiers"][1]["blocks"] == 5


def test_stack_rejects_bad_configuration() -> None:
    with pytest.raises(OffloadConfigError):
        TierStack([])
    with pytest.raises(OffloadConfigError):
        TierStack([CpuTier(10)], write_policy="sometimes")  # type: ignore[arg-type]


# ------------------------------------------------------------------------------ worker


def test_worker_stores_off_thread_and_flushes(tmp_path: Path) -> None:
    stack = TierStack([CpuTier(1 << 22), DiskTier(tmp_path, 1 << 24, FP, fsync=False)])
    seen_threads: set[str] = set()
    put = stack.put

    def spy(batch: Sequence[tuple[BlockKey, Payload]]) -> None:
        seen_threads.add(threading.current_thread().name)
        put(batch)

    stack.put = spy  # type: ignore[method-assign]
    worker = StoreWorker(stack)
    blocks = items(0, range(20))
    for i in range(0, 20, 5):
        assert worker.submit(blocks[i : i + 5])
    assert worker.flush(timeout=30)
    assert seen_threads == {"hybridkv-offload"}
    assert stack.locate([k for k, _ in blocks]) == [0] * 20
    assert worker.stats()["stored_blocks"] == 20 and worker.pending_bytes == 0
    worker.close()
    with pytest.raises(InvalidArgumentError):
        worker.submit(blocks[:1])


def test_worker_drops_when_full_and_survives_tier_failures() -> None:
    gate = threading.Event()

    class SlowTier(CpuTier):
        def put(self, items, *, want_evicted=False):  # type: ignore[no-untyped-def]
            gate.wait(30)
            if any(k.block_hash == 13 for k, _ in items):
                raise RuntimeError("injected tier bug")
            return super().put(items, want_evicted=want_evicted)

    stack = TierStack([SlowTier(1 << 22)])
    page = PAGES[0]
    worker = StoreWorker(stack, max_pending_bytes=3 * page)
    assert worker.submit(items(0, [1]))
    assert worker.submit(items(0, [2, 3]))
    assert not worker.submit(items(0, [4]))  # queue full: dropped, not blocked
    gate.set()
    assert worker.flush(timeout=30)
    assert worker.submit(items(0, [13]))  # this batch's store raises inside the tier
    assert worker.submit(items(0, [5]))
    assert worker.flush(timeout=30)
    stats = worker.stats()
    assert stats["dropped_blocks"] == 1 and stats["failed_batches"] == 1
    assert stats["stored_blocks"] == 4
    assert stack.locate([BlockKey(FP, 0, h) for h in (1, 2, 3, 4, 5, 13)]) == [0, 0, 0, -1, 0, -1]
    worker.close()
