"""IBM Granite 4.0 hybrid (``granitemoehybrid``): ``layer_types`` of "mamba" / "attention"."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hybridkv.models.parsers.common import (
    Parsed,
    ParseOptions,
    config_attention_kwargs,
    layer_list,
    mamba2_from_config,
    model_dtype,
    need_int,
    parsed,
    specs_by_kind,
)
from hybridkv.specs import FullAttentionSpec

MODEL_TYPES = ("granitemoehybrid",)


def parse(config: Mapping[str, Any], opts: ParseOptions, model_type: str) -> Parsed:
    n = need_int(config, "num_hidden_layers", model_type)
    kinds = layer_list(config, "layer_types", n, model_type) or ["attention"] * n
    dtype = model_dtype(config)
    hidden = need_int(config, "hidden_size", model_type)
    table: dict[str, Any] = {
        "attention": FullAttentionSpec(**config_attention_kwargs(config, model_type, dtype, opts))
    }
    # Mamba keys are only required when some layer is a Mamba layer.
    if "mamba" in kinds:
        table["mamba"] = mamba2_from_config(config, model_type, dtype, opts)
    return parsed(config, specs_by_kind(kinds, table, model_type), hidden_size=hidden)
