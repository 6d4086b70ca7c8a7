"""A tiny random-weight hybrid LM with a dense path and a paged, cached path: the
end-to-end proof that Scheduler + KVCacheManager + kernels compute what a cache-free
forward computes.

Six layers (default order: full attention, sliding window, Mamba-2, sliding window,
gated delta net, full attention; any mix of those and chunked-local attention can be
configured), vocabulary 256, hidden size 64. Every layer is a pre-norm residual block
``x + mixer(rms(x))`` followed by a gated MLP. Two modules, one name for both:

- :mod:`hybridkv.testing.tiny_lm`: :class:`TinyConfig`, :class:`TinyHybridLM` (weights,
  KV-cache specs, and :meth:`TinyHybridLM.dense_logits`, the dense path with no cache,
  written independently of :mod:`hybridkv.ops` so it can referee them).
- :mod:`hybridkv.testing.tiny_runner`: :class:`CachedRunner` (one scheduler step over
  hybridkv's paged caches through the Triton kernels) and :func:`serve`, which drives
  :class:`~hybridkv.serving.scheduler.Scheduler` + :class:`~hybridkv.KVCacheManager` +
  :class:`CachedRunner` to greedy completion.
"""

from __future__ import annotations

from hybridkv.testing.tiny_lm import (
    ATTENTION_KINDS,
    CHUNKED,
    FULL,
    GDN,
    LAYER_KINDS,
    MAMBA2,
    SLIDING,
    TinyConfig,
    TinyHybridLM,
)
from hybridkv.testing.tiny_runner import CachedRunner, ServeResult, StepTrace, serve
from hybridkv.testing.tiny_runner import _StateStep as _StateStep  # tests patch it here

__all__ = [
    "ATTENTION_KINDS",
    "CHUNKED",
    "FULL",
    "GDN",
    "LAYER_KINDS",
    "MAMBA2",
    "SLIDING",
    "CachedRunner",
    "ServeResult",
    "StepTrace",
    "TinyConfig",
    "TinyHybridLM",
    "serve",
]
