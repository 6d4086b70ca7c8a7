"""Jamba: Mamba (v1) layers with attention every ``attn_layer_period`` layers."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hybridkv.errors import ModelConfigError
from hybridkv.models.parsers.common import (
    Parsed,
    ParseOptions,
    config_attention_kwargs,
    mamba1_state,
    model_dtype,
    need_int,
    opt_int,
    parsed,
    state_kwargs,
)
from hybridkv.specs import FullAttentionSpec

MODEL_TYPES = ("jamba",)


def parse(config: Mapping[str, Any], opts: ParseOptions, model_type: str) -> Parsed:
    n = need_int(config, "num_hidden_layers", model_type)
    period = need_int(config, "attn_layer_period", model_type)
    offset = config.get("attn_layer_offset", 0)
    if not isinstance(offset, int) or isinstance(offset, bool) or not 0 <= offset < period:
        raise ModelConfigError(
            f"{model_type}: attn_layer_offset must be in [0, {period}), got {offset!r}"
        )
    dtype = model_dtype(config)
    hidden = need_int(config, "hidden_size", model_type)
    attn = FullAttentionSpec(**config_attention_kwargs(config, model_type, dtype, opts))
    state = mamba1_state(
        intermediate=opt_int(config, "mamba_expand", model_type, 2) * hidden,
        d_state=need_int(config, "mamba_d_state", model_type),
        d_conv=need_int(config, "mamba_d_conv", model_type),
        **state_kwargs(config, dtype, opts),
    )
    return parsed(config, [attn if i % period == offset else state for i in range(n)])
