"""Falcon-H1: every layer runs attention and Mamba-2 side by side (two caches per layer)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hybridkv.models.parsers.common import (
    Parsed,
    ParseOptions,
    config_attention_kwargs,
    mamba2_from_config,
    model_dtype,
    need_int,
    parsed,
)
from hybridkv.models.specs import FullAttentionSpec

MODEL_TYPES = ("falcon_h1",)


def parse(config: Mapping[str, Any], opts: ParseOptions, model_type: str) -> Parsed:
    n = need_int(config, "num_hidden_layers", model_type)
    dtype = model_dtype(config)
    hidden = need_int(config, "hidden_size", model_type)
    attn = FullAttentionSpec(**config_attention_kwargs(config, model_type, dtype, opts))
    state = mamba2_from_config(config, model_type, dtype, opts, intermediate_key="mamba_d_ssm")
    names = [name for i in range(n) for name in (f"layers.{i}.self_attn", f"layers.{i}.mamba")]
    return parsed(config, [attn, state] * n, names, hidden_size=hidden)
