"""Zamba2: Mamba-2 in every layer; "hybrid" layers also run a shared attention block.

Layer kinds: ``layers_block_type`` (alias ``layer_types``) of "linear_attention" (legacy
"mamba") and "hybrid", else ``hybrid_layer_ids``, else transformers' 54-layer default.

The attention weights are shared but each invocation keeps its own KV cache. The
attention works on ``2 * hidden_size`` features (hidden state + original embeddings),
so its head size is ``attention_head_dim`` (default ``2 * hidden / heads``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hybridkv.errors import ModelConfigError
from hybridkv.models.parsers.common import (
    Parsed,
    ParseOptions,
    full_attention,
    layer_count,
    mamba2_state,
    model_dtype,
    need_int,
    opt_int,
    parsed,
    read_layer_kinds,
    state_kwargs,
)

MODEL_TYPES = ("zamba2",)


#: Zamba2Config's layers_block_type when the config gives none (54 layers).
_DEFAULT_KINDS = (
    ["linear_attention"]
    + (["linear_attention"] * 5 + ["hybrid"]) * 7
    + ["linear_attention"] * 4
    + ["hybrid"]
    + ["linear_attention"] * 3
    + ["hybrid"]
    + ["linear_attention"] * 2
)


def _kinds(config: Mapping[str, Any], model_type: str) -> list[str]:
    kinds = read_layer_kinds(config, model_type)
    if kinds is not None:
        return kinds
    n = layer_count(config, model_type, None)
    ids = config.get("hybrid_layer_ids")
    if isinstance(ids, list):
        return ["hybrid" if i in ids else "linear_attention" for i in range(n)]
    if n == len(_DEFAULT_KINDS):
        return list(_DEFAULT_KINDS)
    raise ModelConfigError(
        f"{model_type}: needs layers_block_type or hybrid_layer_ids for {n} layers "
        f"(transformers' default pattern has {len(_DEFAULT_KINDS)})"
    )


def parse(config: Mapping[str, Any], opts: ParseOptions, model_type: str) -> Parsed:
    kinds = _kinds(config, model_type)
    layer_count(config, model_type, kinds)  # a stated count must agree with the list
    dtype = model_dtype(config)
    hidden = need_int(config, "hidden_size", model_type)
    heads = need_int(config, "num_attention_heads", model_type)
    kv_heads = opt_int(config, "num_key_value_heads", model_type, heads)
    head_size = opt_int(config, "attention_head_dim", model_type, 2 * hidden // heads)
    attn = full_attention(kv_heads, head_size, dtype, opts)
    expand = opt_int(config, "mamba_expand", model_type, 2)
    d_head = need_int(config, "mamba_headdim", model_type)
    state = mamba2_state(
        num_heads=opt_int(config, "n_mamba_heads", model_type, expand * hidden // d_head),
        head_dim=d_head,
        n_groups=opt_int(config, "mamba_ngroups", model_type, 1),
        d_state=need_int(config, "mamba_d_state", model_type),
        d_conv=need_int(config, "mamba_d_conv", model_type),
        intermediate=expand * hidden,
        **state_kwargs(config, dtype, opts),
    )
    specs: list[Any] = []
    names: list[str] = []
    for i, kind in enumerate(kinds):
        if kind == "hybrid":
            specs.append(attn)
            names.append(f"layers.{i}.shared_attn")
        elif kind != "linear_attention":
            raise ModelConfigError(f"{model_type}: unknown layer type {kind!r} at layer {i}")
        specs.append(state)
        names.append(f"layers.{i}.mamba")
    return parsed(config, specs, names)
