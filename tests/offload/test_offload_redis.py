"""The Redis tier against a real redis-server: round trips, namespaces, outages."""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from hybridkv.errors import OffloadConfigError
from hybridkv.offload import (
    BlockKey,
    CpuTier,
    RedisTier,
    StoreWorker,
    TierStack,
    model_fingerprint,
    parse_offload_spec,
)
from hybridkv.offload.block_format import encode
from offload_helpers import PAGES, RedisServer


def fp_for(name: str) -> bytes:
    return model_fingerprint({"name": name}, weights="test")


def make_items(fp: bytes, group: int, hashes: range | list[int]) -> list[tuple[BlockKey, bytes]]:
    rng = np.random.default_rng(group)
    return [
        (BlockKey(fp, group, h), rng.integers(0, 256, PAGES[group], dtype=np.uint8).tobytes())
        for h in hashes
    ]


def test_roundtrip_three_groups_and_a_restarted_client(redis_server: RedisServer) -> None:
    fp = fp_for("redis-roundtrip")
    tier = RedisTier(redis_server.url, fp)
    blocks = make_items(fp, 0, range(5)) + make_items(fp, 1, [1 << 120]) + make_items(fp, 2, [3])
    tier.put(blocks)
    keys = [k for k, _ in blocks]
    assert tier.contains(keys) == [True] * 7
    assert [bytes(g) if g is not None else None for g in tier.get(keys)] == [p for _, p in blocks]
    tier.close()
    fresh = RedisTier(redis_server.url, fp)  # a new process: nothing known locally
    assert len(fresh) == 0
    assert [bytes(g) if g is not None else None for g in fresh.get(keys)] == [p for _, p in blocks]
    assert fresh.round_trips == 1  # one pipeline for the whole batch
    other = RedisTier(redis_server.url, fp_for("another-model"))
    assert (
        other.get([BlockKey(other.fingerprint, k.group, k.block_hash) for k in keys]) == [None] * 7
    )
    names = {n.decode() for n in redis_server.client().scan_iter(match="hkv:*")}
    assert {tier.redis_key(k) for k in keys} <= names
    assert all("{" not in n for n in names)  # no hash tags: keys spread over cluster slots
    assert fresh.clear_namespace() == 7
    assert fresh.get(keys) == [None] * 7


def test_corrupt_and_foreign_values_are_deleted_misses(redis_server: RedisServer) -> None:
    fp = fp_for("redis-corrupt")
    tier = RedisTier(redis_server.url, fp)
    blocks = make_items(fp, 0, [1, 2, 3])
    tier.put(blocks)
    client = redis_server.client()
    k1, k2, k3 = (k for k, _ in blocks)
    raw = bytearray(client.get(tier.redis_key(k1)))
    raw[-1] ^= 0xFF
    client.set(tier.redis_key(k1), bytes(raw))
    client.set(tier.redis_key(k2), encode(k3, memoryview(blocks[2][1])))  # another key's value
    got = tier.get([k1, k2, k3])
    assert got[0] is None and got[1] is None and got[2] is not None
    assert tier.stats.corrupt_removed == 2
    assert client.exists(tier.redis_key(k1)) == 0 and client.exists(tier.redis_key(k2)) == 0


def test_budget_trims_this_process_writes(redis_server: RedisServer) -> None:
    fp = fp_for("redis-budget")
    tier = RedisTier(redis_server.url, fp, budget_bytes=3 * PAGES[0])
    tier.put(make_items(fp, 0, range(5)))
    assert [k.block_hash for k in tier.lru_keys()] == [2, 3, 4]
    held = tier.contains([BlockKey(fp, 0, h) for h in range(5)])
    assert held == [False, False, True, True, True]
    tier.clear_namespace()


def test_server_stopped_mid_run_gives_misses_one_warning_and_no_stall(
    own_redis: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    fp = fp_for("redis-outage")
    tier = RedisTier(own_redis.url, fp, retry_interval_s=3600)
    stack = TierStack([CpuTier(2 * PAGES[0]), tier])
    worker = StoreWorker(stack)
    blocks = make_items(fp, 0, range(6))
    worker.submit(blocks[:3])
    assert worker.flush(30)
    assert stack.locate([k for k, _ in blocks[:3]]) == [1, 0, 0]
    own_redis.stop()
    caplog.set_level(logging.WARNING, logger="hybridkv.offload")
    keys = [k for k, _ in blocks]
    assert stack.get(keys[:1]) == [None]  # was only in Redis: now a miss
    trips = tier.round_trips
    for _ in range(20):  # the circuit is open: no further network attempts
        assert stack.locate(keys[3:]) == [-1, -1, -1]
        assert tier.get(keys) == [None] * 6
    worker.submit(blocks[3:])  # stores keep working for the tiers that are up
    assert worker.flush(30)
    assert tier.round_trips == trips
    assert stack.locate(keys[4:]) == [0, 0]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "unavailable" in warnings[0].getMessage()
    assert tier.stats.errors == 1
    worker.close()


def test_server_back_after_retry_interval(own_redis: RedisServer) -> None:
    fp = fp_for("redis-recover")
    tier = RedisTier(own_redis.url, fp, retry_interval_s=0.0)
    blocks = make_items(fp, 2, [1, 2])
    tier.put(blocks)
    own_redis.stop()
    assert tier.get([k for k, _ in blocks]) == [None, None]
    tier.put(make_items(fp, 2, [3]))  # dropped while down
    own_redis.start()  # same port, empty (no persistence)
    tier.put(blocks)
    got = tier.get([k for k, _ in blocks])
    assert [bytes(g) if g is not None else None for g in got] == [p for _, p in blocks]
    assert tier.available


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A TCP port that accepts connections and never answers: a hung server."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    conns: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        sock.settimeout(0.1)
        while not stop.is_set():
            try:
                conns.append(sock.accept()[0])
            except OSError:
                continue

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    yield int(sock.getsockname()[1])
    stop.set()
    t.join()
    for c in conns:
        c.close()
    sock.close()


def test_hung_server_times_out_as_misses(silent_server: int) -> None:
    fp = fp_for("redis-hung")
    tier = RedisTier(
        f"redis://127.0.0.1:{silent_server}/0", fp, socket_timeout_s=0.05, retry_interval_s=3600
    )
    key = BlockKey(fp, 0, 1)
    assert tier.contains([key]) == [False]
    assert tier.get([key]) == [None]
    tier.put([(key, b"abc")])
    assert tier.round_trips == 1 and tier.stats.errors == 1 and not tier.available


def test_bad_url_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(OffloadConfigError):
        RedisTier("http://nowhere", fp_for("x"))
    cfg = parse_offload_spec(f"cpu:1MiB,disk:{tmp_path}:1MiB,redis://127.0.0.1:1")
    stack = TierStack.from_config(cfg, fp_for("x"))  # nothing listens on port 1: misses
    assert stack.locate([BlockKey(fp_for("x"), 0, 1)]) == [-1]
    stack.close()
