"""ideal_hit_rate: an infinite cache at 16-token blocks, on hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest
from hybridkv.errors import InvalidArgumentError
from hybridkv.ideal_hit import ideal_hit_rate, ideal_hit_tokens, ideal_order
from hybridkv.traces import TraceBuilder, load_trace


def _toks(lo: int, n: int) -> np.ndarray:
    return np.arange(lo, lo + n, dtype=np.int32) % 31999 + 1


def test_shared_prefix_whole_blocks_only_and_prompt_minus_one() -> None:
    b = TraceBuilder("t", "", seed=1, vocab_size=32000)
    x = b.literal(_toks(0, 40))
    b.request([x], 5, arrival=0.0)  # writes 40 + 4 tokens: 2 whole blocks
    half = b.literal(_toks(0, 32))
    b.request([half, b.literal(_toks(500, 8))], 3, arrival=1.0)  # 40 tokens, hits 32
    b.request([x], 1, arrival=2.0)  # the same 40 tokens: 39 at most -> 2 blocks = 32
    b.request([half], 1, arrival=3.0)  # 32 tokens: 31 at most -> 1 block = 16
    b.request([b.literal(_toks(0, 10))], 1, arrival=4.0)  # under a block: 0
    b.request([b.literal(_toks(1000, 40))], 1, arrival=5.0)  # new content: 0
    t = b.build()
    hit, total = ideal_hit_tokens(t)
    assert (hit, total) == (32 + 32 + 16, 40 + 40 + 40 + 32 + 10 + 40)
    assert ideal_hit_rate(t) == pytest.approx(80 / 202)
    # At 8-token blocks: 40 -> 32 (4 blocks), 39 -> 32, 31 -> 24, 9 -> 8.
    assert ideal_hit_tokens(t, 8) == (32 + 32 + 24 + 8, 202)


def test_outputs_fed_back_hit_but_not_the_last_sampled_token() -> None:
    b = TraceBuilder("t", "", seed=1, vocab_size=32000)
    p = b.literal(_toks(0, 20))
    i, out = b.request([p], 12, arrival=0.0)
    # The parent computed 20 + 11 tokens (its 12th output token was never fed back):
    # one whole block. The child's 42-token prompt could take 2 blocks; it gets 1.
    b.request([p, out, b.literal(_toks(300, 10))], 4, arrival=0.5, parent=i)
    t = b.build()
    assert ideal_hit_tokens(t) == (16, 20 + 42)
    b2 = TraceBuilder("t", "", seed=1, vocab_size=32000)
    p2 = b2.literal(_toks(0, 20))
    i2, out2 = b2.request([p2], 13, arrival=0.0)  # 20 + 12 = 32 computed: 2 blocks
    b2.request([p2, out2, b2.literal(_toks(300, 10))], 4, arrival=0.5, parent=i2)
    assert ideal_hit_tokens(b2.build()) == (32, 20 + 43)


def test_order_is_arrival_with_zero_service_time() -> None:
    b = TraceBuilder("t", "", seed=1, vocab_size=32000)
    x = b.literal(_toks(0, 64))
    b.request([x], 2, arrival=5.0)
    b.request([x], 2, arrival=1.0)  # arrives first although listed second
    r, _ = b.request([b.literal(_toks(900, 20))], 2, arrival=10.0)
    b.request([b.literal(_toks(900, 40))], 2, arrival=0.5, parent=r)  # at 10.5
    b.request([b.literal(_toks(900, 40))], 2, arrival=10.2)  # before the child
    t = b.build()
    assert ideal_order(t).tolist() == [1, 0, 2, 4, 3]
    # 1: 0; 0: 48 (63 -> 3 blocks); 2: 0; 4: 16 (request 2 wrote 1 block + output);
    # 3: request 4 wrote 41 tokens -> 2 blocks, 39 -> 2 blocks = 32.
    assert ideal_hit_tokens(t) == (48 + 16 + 32, 64 + 64 + 20 + 40 + 40)


def test_bundled_traces_and_bad_block_size() -> None:
    t = load_trace("docqa")
    rate = ideal_hit_rate(t)
    assert 0.5 < rate < 1.0
    assert ideal_hit_rate(t, 512) < rate  # coarser blocks never hit more
    with pytest.raises(InvalidArgumentError):
        ideal_hit_rate(t, 0)
