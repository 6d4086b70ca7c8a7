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
    assert _hit(m, 3, [*toks[:8], 55]) == 8  # prompt end
    assert _hit(m, 4, [*toks[:13], 66]) == (8 if policy == "reuse" else 12)  # interior
    assert m.stats().interior_checkpoints_dropped == (2 if policy == "reuse" else 0)
    assert _hit(m, 2, [*toks[:16], 77]) == 16  # turn end
    # Request 3 branched at the prompt end after the turn had moved past it: a fork
    # point, which a later hit past it keeps.
    assert _hit(m, 5, [*toks[:8], 55]) == 8
    assert m.stats().interior_checkpoints_dropped == (2 if policy == "reuse" else 0)


@pytest.mark.parametrize("policy", ["reuse", "lru"])
def test_a_hit_past_a_prompt_end_nobody_branched_from_drops_it(policy: str) -> None:
    toks = list(range(1, 21))
    m = KVCacheManager(_plan(), checkpoint_policy=policy)
    _turn(m, toks)
    assert _hit(m, 2, [*toks[:16], 77]) == 16
    # Only the turn moved past its prompt end: the hit makes it interior, it goes.
    assert _hit(m, 5, [*toks[:8], 55]) == (0 if policy == "reuse" else 8)
    assert m.stats().interior_checkpoints_dropped == (3 if policy == "reuse" else 0)


def test_a_hit_on_a_checkpoint_another_request_extended_is_a_fork_point() -> None:
    # Request 3 hits the prompt end (8) that the turn moved past and is preempted
    # before its state moves past it: the checkpoint is a branch point already, so a
    # deeper hit on the turn's path (16) keeps it and request 3 re-hits it.
    toks = list(range(1, 21))
    m = KVCacheManager(_plan(), checkpoint_policy="reuse")
    _turn(m, toks)
    m.add_requests([3], [np.asarray([*toks[:8], 55, 56], dtype=np.int32)])
    assert m.get_computed_tokens([3]).tolist() == [8]
    m.preempt([3])
    assert _hit(m, 2, [*toks[:16], 77]) == 16
    assert m.get_computed_tokens([3]).tolist() == [8]


def test_default_policy_and_bad_values() -> None:
    assert KVCacheManager(_plan()).checkpoint_policy == "reuse"
    with pytest.raises(InvalidArgumentError, match="checkpoint_policy"):
        KVCacheManager(_plan(), checkpoint_policy="mru")


def _turn_to(m: KVCacheManager, toks: list[int], end: int) -> None:
    """A 9-token prompt (chunks 4, 4, 1), then one decoded token per step until ``end``
    tokens are computed (the turn's last sampled token is never computed)."""
    m.add_requests([1], [np.asarray(toks[:9], dtype=np.int32)])
    m.get_computed_tokens([1])
    for n in (4, 4, 1):
        assert m.allocate_slots([1], [n]).tolist() == [True]
    for i in range(9, end):
        m.append_tokens([1], [np.asarray(toks[i : i + 1], dtype=np.int32)])
        assert m.allocate_slots([1], [1]).tolist() == [True]
    m.free([1])


@pytest.mark.parametrize("policy", ["reuse", "lru"])
def test_turn_ending_off_a_boundary_keeps_its_last_decode_checkpoint(policy: str) -> None:
    # 14 computed tokens: the decode crossed the boundary at 12 and moved past it; the
    # turn's tail is the checkpoint at 12 (the next turn starts there), not the prompt
    # end at 8.
    toks = list(range(1, 21))
    m = KVCacheManager(_plan(), checkpoint_policy=policy)
    _turn_to(m, toks, 14)
    assert _hit(m, 3, [*toks[:9], 55]) == 8
    assert _hit(m, 2, [*toks[:14], 77]) == 12


@pytest.mark.parametrize("policy", ["reuse", "lru"])
def test_a_deeper_tail_replaces_the_pending_one(policy: str) -> None:
    # 18 computed tokens: boundaries 12 and 16 were crossed; 16 is the tail, 12 became
    # interior when the decode moved past 16 and is dropped under "reuse" (as is the
    # first chunk's checkpoint at 4, replaced as pending tail by 12).
    toks = list(range(1, 21))
    m = KVCacheManager(_plan(), checkpoint_policy=policy)
    _turn_to(m, toks, 18)
    assert _hit(m, 3, [*toks[:13], 66]) == (8 if policy == "reuse" else 12)
    assert _hit(m, 4, [*toks[:9], 55]) == 8
    assert _hit(m, 5, [*toks[:5], 44]) == (0 if policy == "reuse" else 4)
    assert m.stats().interior_checkpoints_dropped == (2 if policy == "reuse" else 0)
    assert _hit(m, 2, [*toks[:18], 77]) == 16


@pytest.mark.parametrize("policy", ["reuse", "lru"])
def test_a_hit_keeps_fork_points_below_it(policy: str) -> None:
    # Two requests extended the prompt-end checkpoint at 8 (the turn, then a second
    # branch from it): a fork point survives a later hit past it.
    toks = list(range(1, 21))
    m = KVCacheManager(_plan(), checkpoint_policy=policy)
    _turn(m, toks)
    branch = [*toks[:8], 90, 91, 92, 93, 94]
    m.add_requests([7], [np.asarray(branch, dtype=np.int32)])
    assert m.get_computed_tokens([7]).tolist() == [8]
    for n in (4, 1):
        assert m.allocate_slots([7], [n]).tolist() == [True]
    m.free([7])
    assert _hit(m, 2, [*toks[:16], 77]) == 16
    assert _hit(m, 3, [*toks[:8], 55]) == 8


def test_a_preempted_request_keeps_its_resume_checkpoint() -> None:
    # Request 3 retries the turn's prompt (same token after the prompt end, so no
    # branch is seen there), computes past the prompt end and is preempted. The next
    # turn's hit at 16 passes the prompt end, but request 3 resumes from it: it stays.
    toks = list(range(1, 21))
    m = KVCacheManager(_plan(), checkpoint_policy="reuse")
    _turn(m, toks)
    m.add_requests([3], [np.asarray([*toks[:9], 55], dtype=np.int32)])
    assert m.get_computed_tokens([3]).tolist() == [8]
    assert m.allocate_slots([3], [2]).tolist() == [True]
    m.preempt([3])
    assert _hit(m, 2, [*toks[:16], 77]) == 16
    assert m.get_computed_tokens([3]).tolist() == [8]
