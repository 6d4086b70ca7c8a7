"""The physical limit of prefix caching on a trace: what an infinite cache would serve.

``ideal_hit_rate(trace)`` is the share of prompt tokens an infinite cache hits at
16-token granularity, under the manager's own hit rule: a request hits the longest run
of whole leading blocks some earlier request wrote, at most ``prompt - 1`` tokens (the
last prompt token is always computed, to sample from). A request writes every whole
block of what it computed: its prompt and its output but the last sampled token, so a
later turn whose prompt feeds the output back hits it.

"Earlier" is arrival order with zero service time: a request arriving at the trace's
time, a closed-loop turn its think delay after its parent *arrived* (an infinite,
instant server finishes every request on arrival), ties in trace order, so a turn always
follows its parent. Blocks are keyed by the low 64 bits of the manager's chained block
hash (:func:`hybridkv.cache.prefix_hash.hash_token_blocks`), one Rust call per request, in one
Python set.
"""

from __future__ import annotations

import numpy as np

from hybridkv.cache.prefix_hash import hash_token_blocks
from hybridkv.errors import InvalidArgumentError
from hybridkv.serving.traces import I64, Trace

IDEAL_BLOCK_SIZE = 16


def ideal_order(trace: Trace) -> I64:
    """Request indices in zero-service-time arrival order (module docstring)."""
    t = trace.arrival.astype(np.float64).copy()
    for i in np.flatnonzero(trace.parent >= 0).tolist():  # parents come first
        t[i] += t[int(trace.parent[i])]
    order: I64 = np.lexsort((np.arange(trace.num_requests), t)).astype(np.int64)
    return order


def ideal_hit_tokens(trace: Trace, block_size: int = IDEAL_BLOCK_SIZE) -> tuple[int, int]:
    """``(hit tokens, prompt tokens)`` of an infinite cache over ``trace``."""
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
        raise InvalidArgumentError(f"block_size must be a positive int, got {block_size!r}")
    seen: set[int] = set()
    hits = 0
    prompt_lens = trace.prompt_lens
    out_lens = trace.output_lens
    for i in ideal_order(trace).tolist():
        plen = int(prompt_lens[i])
        lo, hi = int(trace.prompt_offsets[i]), int(trace.prompt_offsets[i + 1])
        segs = np.append(trace.prompt_segs[lo:hi], trace.output_seg[i])
        # Prompt + output, less the last sampled token (never run through the model).
        toks = trace.segments_tokens(segs)[: plen + int(out_lens[i]) - 1]
        keys = hash_token_blocks(toks, block_size)[:, 0].tolist()
        n = 0
        for k in keys[: (plen - 1) // block_size]:
            if k not in seen:
                break
            n += 1
        hits += n * block_size
        seen.update(keys)
    return hits, int(prompt_lens.sum())


def ideal_hit_rate(trace: Trace, block_size: int = IDEAL_BLOCK_SIZE) -> float:
    """Share of prompt tokens an infinite cache serves (module docstring)."""
    hits, total = ideal_hit_tokens(trace, block_size)
    return hits / total if total else 0.0


__all__ = ["IDEAL_BLOCK_SIZE", "ideal_hit_rate", "ideal_hit_tokens", "ideal_order"]
