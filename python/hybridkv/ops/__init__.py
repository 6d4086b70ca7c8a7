"""Launchers for hybridkv's Triton kernels, and their pure-PyTorch references.

Importing this package imports torch and triton (the ``kernels`` extra). Every
launcher checks its arguments and raises :class:`hybridkv.errors.InvalidArgumentError`
on bad input before anything is written. ``hybridkv.ops.reference`` holds a plain
PyTorch version of each op with the same arguments; ``hybridkv.ops.tolerances`` the
tolerances the kernels are tested to.
"""

from __future__ import annotations

from hybridkv.ops.attention import paged_attention
from hybridkv.ops.gated_delta import gated_delta_decode, gated_delta_rule
from hybridkv.ops.kv_cache import write_kv
from hybridkv.ops.mamba2 import (
    causal_conv1d_prefill,
    causal_conv1d_update,
    selective_state_update,
    ssd_prefill,
)

__all__ = [
    "causal_conv1d_prefill",
    "causal_conv1d_update",
    "gated_delta_decode",
    "gated_delta_rule",
    "paged_attention",
    "selective_state_update",
    "ssd_prefill",
    "write_kv",
]
