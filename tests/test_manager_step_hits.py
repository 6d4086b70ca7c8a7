"""A prefix hit on a state checkpoint cached earlier in the same step waits a step.

A state checkpoint an allocation caches is written by that step's forward, in the very
kernel launch that would read it as another request's initial state. So through the
public API: a request looked up after the step's first ``allocate_slots`` and hitting
such a checkpoint does not fit a ``new_step=False`` call (``False``, nothing changes,
its hit kept); it fits the next step. Attention hits cached this step stay usable.
"""

from __future__ import annotations

import numpy as np
import pytest
from hybridkv import KVCacheManager, ManagerConfig, ManagerGroup
from hypothesis import given
from hypothesis import strategies as st
from test_manager import snapshot


def _manager(mode: str, bs: int, with_state: bool = True) -> KVCacheManager:
    groups = [
        ManagerGroup("full_attention", bs, 256),
        ManagerGroup("sliding_window", bs, 128, window=2 * bs + 1),
    ]
    if with_state:
        groups.append(ManagerGroup("state", bs, 128))
    return KVCacheManager(ManagerConfig(tuple(groups), mode), hash_seed=3)


def _prompt(n: int, start: int = 1) -> np.ndarray:
    return np.arange(start, start + n, dtype=np.int32)


@given(
    mode=st.sampled_from(["align", "all"]),
    bs=st.integers(2, 8),
    blocks=st.integers(1, 5),
    offset=st.integers(0, 7),
    tail=st.integers(1, 6),
)
def test_same_step_state_hit_waits_for_the_next_step(
    mode: str, bs: int, blocks: int, offset: int, tail: int
) -> None:
    m = _manager(mode, bs)
    shared = blocks * bs
    # Request 1 computes the shared prefix in one step ending at `shared` (align mode
    # checkpoints there) or beyond it by `offset` (mode all checkpoints every block).
    end = shared + (offset if mode == "all" else 0)
    m.add_requests([1], [_prompt(end + 1)])
    assert m.get_computed_tokens([1]).tolist() == [0]
    assert m.allocate_slots([1], [end]).tolist() == [True]
    # Request 2 shares the prefix and is looked up within the same step.
    b_prompt = np.concatenate([_prompt(shared), _prompt(tail, start=1000)])
    m.add_requests([2], [b_prompt])
    hit = int(m.get_computed_tokens([2])[0])
    assert hit == shared
    before = snapshot(m)
    assert m.allocate_slots([2], [len(b_prompt) - hit], new_step=False).tolist() == [False]
    assert snapshot(m) == before, "a deferred request changed something"
    m.check_invariants()
    # The next step: request 1's forward has written the checkpoint.
    assert m.allocate_slots([2], [len(b_prompt) - hit]).tolist() == [True]
    m.check_invariants()


@pytest.mark.parametrize("mode", ["align", "all"])
def test_state_hits_from_earlier_steps_run_in_a_retry(mode: str) -> None:
    # The checkpoint was cached in the previous step: a same-step retry may read it.
    m = _manager(mode, 4)
    m.add_requests([1, 2], [_prompt(9), np.concatenate([_prompt(8), _prompt(3, 500)])])
    m.get_computed_tokens([1])
    assert m.allocate_slots([1], [8]).tolist() == [True]
    m.add_requests([3], [_prompt(1, 900)])
    m.get_computed_tokens([3])
    assert m.allocate_slots([3], [1]).tolist() == [True]  # the next step begins
    assert m.get_computed_tokens([2]).tolist() == [8]
    assert m.allocate_slots([2], [3], new_step=False).tolist() == [True]
    m.check_invariants()


def test_attention_hits_cached_this_step_run_in_a_retry() -> None:
    # Without a state group nothing is deferred: every layer writes the batch's K/V
    # before attending, so a same-step attention hit reads written blocks.
    m = _manager("align", 4, with_state=False)
    m.add_requests([1, 2], [_prompt(9), np.concatenate([_prompt(8), _prompt(3, 500)])])
    m.get_computed_tokens([1])
    assert m.allocate_slots([1], [8]).tolist() == [True]
    assert m.get_computed_tokens([2]).tolist() == [8]
    assert m.allocate_slots([2], [3], new_step=False).tolist() == [True]
    m.check_invariants()
