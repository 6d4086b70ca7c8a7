"""A stateful hypothesis machine over the tier stack against a dict-based reference.

The reference remembers every payload ever put under each key. Whatever happens
(evictions under tiny budgets, either write policy, process restarts, Redis going away,
disk files and Redis values corrupted behind the stack's back), ``get`` must return one
of the payloads put under that key, or a miss: never anything else. Budgets hold after
every step, and a block just stored is found at once (the first tier holds it).
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path

from hybridkv.offload import (
    BlockKey,
    CpuTier,
    DiskTier,
    RedisTier,
    TierStack,
    model_fingerprint,
)
from hybridkv.offload.block_format import HEADER_BYTES
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from offload_helpers import RedisServer

CPU_BUDGET = 6_000
DISK_BUDGET = 15_000
REDIS_BUDGET = 25_000
DEAD_URL = "redis://127.0.0.1:1/0"  # nothing listens: every call fails fast

keys_st = st.builds(
    lambda g, h: (g, h), st.integers(0, 2), st.integers(0, 9).map(lambda h: h * (1 << 100) + h)
)
payloads = st.binary(min_size=1, max_size=3_000)


class TierStackMachine(RuleBasedStateMachine):
    redis_url = ""
    counter = 0

    def __init__(self) -> None:
        super().__init__()
        TierStackMachine.counter += 1
        self.fp = model_fingerprint({"machine": TierStackMachine.counter}, weights="test")
        self.dir = Path(tempfile.mkdtemp(prefix="hkv-machine-"))
        self.reference: dict[BlockKey, set[bytes]] = {}
        self.redis_up = True
        self.stack: TierStack | None = None

    def _open(self) -> TierStack:
        url = self.redis_url if self.redis_up else DEAD_URL
        return TierStack(
            [
                CpuTier(CPU_BUDGET),
                DiskTier(self.dir, DISK_BUDGET, self.fp, fsync=False),
                RedisTier(url, self.fp, budget_bytes=REDIS_BUDGET, retry_interval_s=3600),
            ],
            write_policy=self.policy,
        )

    @initialize(policy=st.sampled_from(["write-through", "write-back"]))
    def setup(self, policy: str) -> None:
        self.policy = policy
        self.stack = self._open()

    def key(self, gh: tuple[int, int]) -> BlockKey:
        return BlockKey(self.fp, gh[0], gh[1])

    def check(self, keys: list[BlockKey], got: list[memoryview | None]) -> None:
        for key, value in zip(keys, got, strict=True):
            if value is not None:
                assert bytes(value) in self.reference.get(key, set()), f"{key} served bad bytes"

    @rule(batch=st.lists(st.tuples(keys_st, payloads), min_size=1, max_size=4))
    def put(self, batch: list[tuple[tuple[int, int], bytes]]) -> None:
        assert self.stack is not None
        items = [(self.key(gh), data) for gh, data in batch]
        for key, data in items:
            self.reference.setdefault(key, set()).add(data)
        self.stack.put(items)
        last = items[-1][0]
        got = self.stack.get([last])
        self.check([last], got)
        assert got[0] is not None, "a block just stored must be found"

    @rule(batch=st.lists(keys_st, min_size=1, max_size=6))
    def get(self, batch: list[tuple[int, int]]) -> None:
        assert self.stack is not None
        keys = [self.key(gh) for gh in batch]
        where = self.stack.locate(keys)
        got = self.stack.get(keys)
        self.check(keys, got)
        for w, key in zip(where, keys, strict=True):
            if w >= 0:
                assert key in self.reference

    @rule(redis_up=st.booleans())
    def restart(self, redis_up: bool) -> None:
        """A new process: RAM empty, the disk index rebuilt, Redis maybe unreachable."""
        assert self.stack is not None
        self.stack.close()
        self.redis_up = redis_up
        self.stack = self._open()

    @precondition(lambda self: self.stack is not None)
    @rule(data=st.data(), how=st.sampled_from(["flip", "truncate", "swap", "empty"]))
    def damage_disk_file(self, data: st.DataObject, how: str) -> None:
        files = sorted(self.dir.rglob("*.blk"))
        if not files:
            return
        path = data.draw(st.sampled_from(files))
        raw = bytearray(path.read_bytes())
        if not raw:
            return
        if how == "flip":
            pos = data.draw(st.integers(0, len(raw) - 1))
            raw[pos] ^= 1 << data.draw(st.integers(0, 7))
            path.write_bytes(raw)
        elif how == "truncate":
            path.write_bytes(raw[: data.draw(st.integers(0, len(raw) - 1))])
        elif how == "swap":
            other = data.draw(st.sampled_from(files))
            if other != path:  # another block's intact file under this block's name
                shutil.copyfile(other, path)
        else:
            path.write_bytes(b"")

    @precondition(lambda self: self.redis_up)
    @rule(gh=keys_st, how=st.sampled_from(["flip", "short", "other"]))
    def damage_redis_value(self, gh: tuple[int, int], how: str) -> None:
        assert self.stack is not None
        tier = self.stack.tiers[2]
        assert isinstance(tier, RedisTier)
        client = tier._client
        name = tier.redis_key(self.key(gh))
        raw = client.get(name)
        if raw is None:
            return
        raw = bytearray(raw)
        if how == "flip":
            raw[len(raw) // 2] ^= 0x10
        elif how == "short":
            raw = raw[: HEADER_BYTES // 2]
        else:
            raw[HEADER_BYTES - 40] ^= 0x01  # the group field: a foreign block
        client.set(name, bytes(raw))

    @invariant()
    def budgets_hold(self) -> None:
        if self.stack is None:
            return
        for tier, budget in zip(
            self.stack.tiers, (CPU_BUDGET, DISK_BUDGET, REDIS_BUDGET), strict=True
        ):
            assert tier.used_bytes <= budget
            assert len(tier) == len(tier.lru_keys())

    def teardown(self) -> None:
        if self.stack is not None:
            redis = self.stack.tiers[2]
            if self.redis_up and isinstance(redis, RedisTier):
                redis.clear_namespace()
            self.stack.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def test_tier_stack_against_reference(redis_server: RedisServer) -> None:
    TierStackMachine.redis_url = redis_server.url
    log = logging.getLogger("hybridkv.offload")
    level = log.level
    log.setLevel(logging.ERROR)  # every restart with Redis away warns once, by design
    try:
        run_state_machine_as_test(TierStackMachine)
    finally:
        log.setLevel(level)
