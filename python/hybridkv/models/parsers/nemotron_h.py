"""Nemotron-H (and Nemotron Nano v2): ``hybrid_override_pattern`` picks each layer.

Pattern characters: ``M`` Mamba-2, ``*`` attention, ``-`` MLP, ``E`` MoE (no cache).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hybridkv.errors import ModelConfigError
from hybridkv.models.parsers.common import (
    Parsed,
    ParseOptions,
    full_attention,
    mamba2_state,
    model_dtype,
    need_int,
    opt_int,
    parsed,
    state_kwargs,
)

MODEL_TYPES = ("nemotron_h",)

#: Pattern characters of layers that hold no cache (MLP, MoE).
_NO_CACHE = "-E"


def parse(config: Mapping[str, Any], opts: ParseOptions, model_type: str) -> Parsed:
    n = need_int(config, "num_hidden_layers", model_type)
    pattern = config.get("hybrid_override_pattern")
    if not isinstance(pattern, str) or len(pattern) != n:
        raise ModelConfigError(
            f"{model_type}: hybrid_override_pattern must be a string of {n} characters, "
            f"got {pattern!r}"
        )
    dtype = model_dtype(config)
    hidden = need_int(config, "hidden_size", model_type)
    heads = need_int(config, "num_attention_heads", model_type)
    head_size = opt_int(
        config,
        "head_dim",
        model_type,
        opt_int(config, "attention_head_dim", model_type, hidden // heads),
    )
    attn = full_attention(
        need_int(config, "num_key_value_heads", model_type), head_size, dtype, opts
    )
    state = mamba2_state(
        num_heads=need_int(config, "mamba_num_heads", model_type),
        head_dim=need_int(config, "mamba_head_dim", model_type),
        n_groups=need_int(config, "n_groups", model_type),
        d_state=need_int(config, "ssm_state_size", model_type),
        d_conv=need_int(config, "conv_kernel", model_type),
        **state_kwargs(config, dtype, opts),
    )
    table = {"M": state, "*": attn}
    for i, ch in enumerate(pattern):
        if ch not in table and ch not in _NO_CACHE:
            raise ModelConfigError(f"{model_type}: unknown pattern character {ch!r} at layer {i}")
    cached = [i for i, ch in enumerate(pattern) if ch in table]
    return parsed(
        config,
        [table[pattern[i]] for i in cached],
        [f"layers.{i}" for i in cached],
        notes=("MLP/MoE-only layers hold no cache and are not listed",),
    )
