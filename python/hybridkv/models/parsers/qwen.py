"""Qwen3-Next and Qwen3.5 (dense and MoE): gated-delta-net layers + full attention.

Layer kinds come from ``layer_types`` ("linear_attention" / "full_attention") or, when
absent, every ``full_attention_interval``-th layer is full attention.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hybridkv.errors import ModelConfigError
from hybridkv.models.parsers.common import (
    Parsed,
    ParseOptions,
    full_attention,
    gdn_state,
    head_dim,
    layer_list,
    model_dtype,
    need_int,
    opt_int,
    ssm_dtype,
    text_config,
)

MODEL_TYPES = ("qwen3_next", "qwen3_5", "qwen3_5_text", "qwen3_5_moe", "qwen3_5_moe_text")


def parse(config: Mapping[str, Any], opts: ParseOptions, model_type: str) -> Parsed:
    cfg = text_config(config)
    n = need_int(cfg, "num_hidden_layers", model_type)
    kinds = layer_list(cfg, "layer_types", n, model_type)
    if kinds is None:
        interval = opt_int(cfg, "full_attention_interval", model_type, 4)
        kinds = [
            "full_attention" if (i + 1) % interval == 0 else "linear_attention" for i in range(n)
        ]
    dtype = model_dtype(cfg, config)
    attn = full_attention(
        need_int(cfg, "num_key_value_heads", model_type), head_dim(cfg, model_type), dtype, opts
    )
    state = gdn_state(
        num_k_heads=need_int(cfg, "linear_num_key_heads", model_type),
        num_v_heads=need_int(cfg, "linear_num_value_heads", model_type),
        head_k_dim=need_int(cfg, "linear_key_head_dim", model_type),
        head_v_dim=need_int(cfg, "linear_value_head_dim", model_type),
        conv_kernel=need_int(cfg, "linear_conv_kernel_dim", model_type),
        conv_dtype=dtype,
        ssm_dtype=ssm_dtype(cfg, dtype),
        tp=opts.tp,
    )
    specs: list[Any] = []
    for i, kind in enumerate(kinds):
        if kind == "full_attention":
            specs.append(attn)
        elif kind == "linear_attention":
            specs.append(state)
        else:
            raise ModelConfigError(f"{model_type}: unknown layer type {kind!r} at layer {i}")
    return Parsed(
        layer_specs=tuple(specs),
        layer_names=tuple(f"layers.{i}" for i in range(n)),
        hidden_size=cfg.get("hidden_size"),
        vocab_size=cfg.get("vocab_size"),
        num_attention_heads=cfg.get("num_attention_heads"),
    )
