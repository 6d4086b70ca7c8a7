"""The manager at the planner's tight sliding-window / chunked-local pool bound.

The pool gets exactly ``window_pool_blocks(...)`` blocks (plus the null block); the
other groups are roomy. ``max_num_seqs`` requests are then scheduled adversarially
(every step spends up to ``max_num_batched_tokens``) and no allocation may ever fail.
A constructed worst-case schedule reaches the bound exactly, so it is tight as well.
"""

from __future__ import annotations

import numpy as np
from hybridkv import KVCacheManager, ManagerConfig, ManagerGroup
from hybridkv.planner import window_pool_blocks
from hypothesis import given
from hypothesis import strategies as st

B = 4  # block size


def build(kind: str, span: int, seqs: int, budget: int, max_len: int) -> tuple[KVCacheManager, int]:
    tight = window_pool_blocks(
        kind,
        span,
        block_size=B,
        max_num_seqs=seqs,
        max_model_len=max_len,
        max_num_batched_tokens=budget,
    )
    window = ManagerGroup(
        kind,
        B,
        tight + 1,
        window=span if kind == "sliding_window" else None,
        chunk_size=span if kind == "chunked_local" else None,
    )
    cfg = ManagerConfig(
        (
            ManagerGroup("full_attention", B, seqs * (max_len // B + 2) + 1),
            window,
            ManagerGroup("state", B, 2 * seqs + 1),
        ),
        "align",
    )
    m = KVCacheManager(cfg, enable_prefix_caching=False)
    rng = np.random.default_rng(0)
    prompts = [rng.integers(0, 1000, max_len, dtype=np.int32) for _ in range(seqs)]
    m.add_requests(np.arange(seqs), prompts)
    m.get_computed_tokens(np.arange(seqs))
    return m, tight


def in_use(m: KVCacheManager) -> int:
    return int(m.stats().num_in_use[1])


@given(
    kind=st.sampled_from(["sliding_window", "chunked_local"]),
    span=st.integers(2, 14),
    seqs=st.integers(1, 5),
    budget=st.integers(1, 24),
    data=st.data(),
)
def test_adversarial_schedules_never_exhaust_the_tight_pool(
    kind: str, span: int, seqs: int, budget: int, data: st.DataObject
) -> None:
    max_len = 48
    m, tight = build(kind, span, seqs, budget, max_len)
    computed = [0] * seqs
    for _ in range(40):
        left = budget
        ids, nums = [], []
        order = data.draw(st.permutations(range(seqs)))
        for r in order:
            room = min(left, max_len - computed[r])
            if room <= 0:
                continue
            n = data.draw(st.integers(0, room))
            if n:
                ids.append(r)
                nums.append(n)
                left -= n
        if not ids:
            break
        ok = m.allocate_slots(ids, nums)
        assert ok.all(), (tight, in_use(m))
        assert in_use(m) <= tight
        for r, n in zip(ids, nums, strict=True):
            computed[r] += n
    m.check_invariants()


def test_worst_case_schedule_reaches_the_bound_exactly() -> None:
    # W = 12, b = 4: A = W + b - 2 = 14, f(0) = 4, first step costs d = 3 tokens.
    # With 6 sequences and 30 tokens: T = 6 * 4 + 6 + 3 = 33.
    seqs, span, budget, max_len = 6, 12, 30, 64
    m, tight = build("sliding_window", span, seqs, budget, max_len)
    assert tight == 33
    c0 = span + B - 2  # worst offset: the window starts one token before a boundary
    computed = [0] * seqs
    while min(computed) < c0:
        left, ids, nums = budget, [], []
        for r in range(seqs):
            n = min(c0 - computed[r], left)
            if n > 0:
                ids.append(r)
                nums.append(n)
                left -= n
        assert m.allocate_slots(ids, nums).all()
        for r, n in zip(ids, nums, strict=True):
            computed[r] += n
    # The adversarial step: every request buys its cheap first extra block (3 tokens),
    # three of them one more block each (4 tokens): 18 + 12 = 30 tokens.
    nums = [3 + (4 if r < 3 else 0) for r in range(seqs)]
    assert sum(nums) == budget
    assert m.allocate_slots(list(range(seqs)), nums).all()
    assert in_use(m) == tight
    m.check_invariants()
