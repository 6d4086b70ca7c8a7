"""Qwen3-Next and Qwen3.5 (dense and MoE): gated-delta-net layers + full attention.

Layer kinds come from ``layer_types`` ("linear_attention" / "full_attention") or, when
absent, every ``full_attention_interval``-th layer is full attention.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hybridkv.models.parsers.common import (
    LayerPeriod,
    Parsed,
    ParseOptions,
    config_attention_kwargs,
    gdn_state,
    model_dtype,
    need_int,
    parsed,
    periodic_layer_kinds,
    specs_by_kind,
    state_kwargs,
    text_config,
)
from hybridkv.models.specs import FullAttentionSpec

MODEL_TYPES = ("qwen3_next", "qwen3_5", "qwen3_5_text", "qwen3_5_moe", "qwen3_5_moe_text")

_PERIOD = LayerPeriod("full_attention_interval", 4, "full_attention", "linear_attention")


def parse(config: Mapping[str, Any], opts: ParseOptions, model_type: str) -> Parsed:
    cfg = text_config(config)
    n = need_int(cfg, "num_hidden_layers", model_type)
    kinds = periodic_layer_kinds(cfg, model_type, n, _PERIOD)
    dtype = model_dtype(cfg, config)
    attn = FullAttentionSpec(**config_attention_kwargs(cfg, model_type, dtype, opts))
    state = gdn_state(
        num_k_heads=need_int(cfg, "linear_num_key_heads", model_type),
        num_v_heads=need_int(cfg, "linear_num_value_heads", model_type),
        head_k_dim=need_int(cfg, "linear_key_head_dim", model_type),
        head_v_dim=need_int(cfg, "linear_value_head_dim", model_type),
        conv_kernel=need_int(cfg, "linear_conv_kernel_dim", model_type),
        **state_kwargs(cfg, dtype, opts),
    )
    table = {"full_attention": attn, "linear_attention": state}
    return parsed(cfg, specs_by_kind(kinds, table, model_type))
