"""The state checkpoint policy through the public API (``checkpoint_policy``)."""

from __future__ import annotations

import numpy as np
import pytest
from hybridkv.errors import InvalidArgumentError
from hybridkv.manager import KVCacheManager, ManagerConfig, ManagerGroup


def _plan() -> ManagerConfig:
    return ManagerConfig(
        groups=(
            ManagerGroup(kind="full_attention", block_size=4, num_blocks=64),
            ManagerGroup(kind="state", block_size=4, num_blocks=16),
        ),
        mamba_cache_mode="align",
    )


def _turn(m: KVCacheManager, toks: list[int]) -> None:
    m.add_requests([1], [np.asarray(toks[:9], dtype=np.int32)])
    m.get_computed_tokens([1])
    for n in (4, 4, 1):
        assert m.allocate_slots([1], [n]).tolist() == [True]
    for i in range(9, 16):
        m.append_tokens([1], [np.asarray(toks[i : i + 1], dtype=np.int32)])
        assert m.allocate_slots([1], [1]).tolist() == [True]
    m.free([1])


def _hit(m: KVCacheManager, rid: int, toks: list[int]) -> int:
    m.add_requests([rid], [np.asarray(toks, dtype=np.int32)])
    h = int(m.get_computed_tokens([rid])[0])
    m.free([rid])
    return h


@pytest.mark.parametrize("policy", ["reuse", "lru"])
def test_interior_checkpoints_go_turn_and_prompt_ends_stay(policy: str) -> None:
    toks = list(range(1, 21))
    m = KVCacheManager(_plan(), checkpoint_policy=policy)
    assert m.checkpoint_policy == policy
    _turn(m, toks)
    assert _hit(m, 2, [*toks[:16], 77]) == 16  # turn end
    assert _hit(m, 3, [*toks[:8], 55]) == 8  # prompt end
    assert _hit(m, 4, [*toks[:13], 66]) == (8 if policy == "reuse" else 12)  # interior
    assert m.stats().interior_checkpoints_dropped == (2 if policy == "reuse" else 0)


def test_default_policy_and_bad_values() -> None:
    assert KVCacheManager(_plan()).checkpoint_policy == "reuse"
    with pytest.raises(InvalidArgumentError, match="checkpoint_policy"):
        KVCacheManager(_plan(), checkpoint_policy="mru")
