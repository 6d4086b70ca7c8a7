"""Falcon-H1: every layer runs attention and Mamba-2 side by side (two caches per layer)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hybridkv.models.parsers.common import (
    Parsed,
    ParseOptions,
    full_attention,
    head_dim,
    mamba2_state,
    model_dtype,
    need_int,
    opt_int,
    ssm_dtype,
)

MODEL_TYPES = ("falcon_h1",)


def parse(config: Mapping[str, Any], opts: ParseOptions, model_type: str) -> Parsed:
    n = need_int(config, "num_hidden_layers", model_type)
    dtype = model_dtype(config)
    hidden = need_int(config, "hidden_size", model_type)
    attn = full_attention(
        need_int(config, "num_key_value_heads", model_type),
        head_dim(config, model_type),
        dtype,
        opts,
    )
    heads = need_int(config, "mamba_n_heads", model_type)
    d_head = need_int(config, "mamba_d_head", model_type)
    state = mamba2_state(
        num_heads=heads,
        head_dim=d_head,
        n_groups=opt_int(config, "mamba_n_groups", model_type, 1),
        d_state=need_int(config, "mamba_d_state", model_type),
        d_conv=need_int(config, "mamba_d_conv", model_type),
        conv_dtype=dtype,
        ssm_dtype=ssm_dtype(config, dtype),
        tp=opts.tp,
        intermediate=opt_int(config, "mamba_d_ssm", model_type, heads * d_head),
    )
    specs: list[Any] = []
    names: list[str] = []
    for i in range(n):
        specs += [attn, state]
        names += [f"layers.{i}.self_attn", f"layers.{i}.mamba"]
    return Parsed(
        layer_specs=tuple(specs),
        layer_names=tuple(names),
        hidden_size=hidden,
        vocab_size=config.get("vocab_size"),
        num_attention_heads=config.get("num_attention_heads"),
    )
