"""Jamba: Mamba (v1) layers with attention every ``attn_layer_period`` layers.

``layer_types`` / ``layers_block_type`` first ("linear_attention" = Mamba, legacy
"mamba" / "attention"); else layer ``i`` is attention when ``i % period == offset``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hybridkv.errors import ModelConfigError
from hybridkv.models.parsers.common import (
    Parsed,
    ParseOptions,
    config_attention_kwargs,
    layer_count,
    mamba1_state,
    model_dtype,
    need_int,
    opt_int,
    parsed,
    read_layer_kinds,
    specs_by_kind,
    state_kwargs,
)
from hybridkv.models.specs import FullAttentionSpec

MODEL_TYPES = ("jamba",)


def _kinds(config: Mapping[str, Any], model_type: str) -> list[str]:
    kinds = read_layer_kinds(config, model_type)
    n = layer_count(config, model_type, kinds)
    if kinds is not None:
        return kinds
    # JambaConfig defaults: attn_layer_period 8, attn_layer_offset 4.
    period = opt_int(config, "attn_layer_period", model_type, 8)
    offset = config.get("attn_layer_offset", 4)
    if offset is None:
        offset = 4
    if not isinstance(offset, int) or isinstance(offset, bool) or not 0 <= offset < period:
        raise ModelConfigError(
            f"{model_type}: attn_layer_offset must be in [0, {period}), got {offset!r}"
        )
    return ["full_attention" if i % period == offset else "linear_attention" for i in range(n)]


def parse(config: Mapping[str, Any], opts: ParseOptions, model_type: str) -> Parsed:
    kinds = _kinds(config, model_type)
    dtype = model_dtype(config)
    hidden = need_int(config, "hidden_size", model_type)
    table: dict[str, Any] = {}
    if "full_attention" in kinds:
        table["full_attention"] = FullAttentionSpec(
            **config_attention_kwargs(config, model_type, dtype, opts)
        )
    if "linear_attention" in kinds:
        # JambaConfig defaults: mamba_expand 2, mamba_d_state 16, mamba_d_conv 4.
        table["linear_attention"] = mamba1_state(
            intermediate=opt_int(config, "mamba_expand", model_type, 2) * hidden,
            d_state=opt_int(config, "mamba_d_state", model_type, 16),
            d_conv=opt_int(config, "mamba_d_conv", model_type, 4),
            **state_kwargs(config, dtype, opts),
        )
    return parsed(config, specs_by_kind(kinds, table, model_type))
