"""IBM Granite 4.0 hybrid (``granitemoehybrid``): ``layer_types`` of "mamba" / "attention"."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hybridkv.errors import ModelConfigError
from hybridkv.models.parsers.common import (
    Parsed,
    ParseOptions,
    full_attention,
    head_dim,
    layer_list,
    mamba2_state,
    model_dtype,
    need_int,
    opt_int,
    ssm_dtype,
)

MODEL_TYPES = ("granitemoehybrid",)


def parse(config: Mapping[str, Any], opts: ParseOptions, model_type: str) -> Parsed:
    n = need_int(config, "num_hidden_layers", model_type)
    kinds = layer_list(config, "layer_types", n, model_type) or ["attention"] * n
    dtype = model_dtype(config)
    hidden = need_int(config, "hidden_size", model_type)
    attn = full_attention(
        need_int(config, "num_key_value_heads", model_type),
        head_dim(config, model_type),
        dtype,
        opts,
    )
    state = None
    if "mamba" in kinds:
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
        )
    specs: list[Any] = []
    for i, kind in enumerate(kinds):
        if kind == "attention":
            specs.append(attn)
        elif kind == "mamba" and state is not None:
            specs.append(state)
        else:
            raise ModelConfigError(f"{model_type}: unknown layer type {kind!r} at layer {i}")
    return Parsed(
        layer_specs=tuple(specs),
        layer_names=tuple(f"layers.{i}" for i in range(n)),
        hidden_size=hidden,
        vocab_size=config.get("vocab_size"),
        num_attention_heads=config.get("num_attention_heads"),
    )
