"""IBM Granite 4.0 hybrid (``granitemoehybrid``) and Bamba: Mamba-2 layers + attention.

Layer kinds come from ``layer_types`` ("linear_attention" = Mamba-2 / "full_attention";
legacy "mamba" / "attention"). Without it, GraniteMoeHybridConfig makes every layer
Mamba-2; Bamba puts attention at ``attn_layer_indices``.
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
    mamba2_from_config,
    model_dtype,
    need_int,
    parsed,
    read_layer_kinds,
    specs_by_kind,
)
from hybridkv.models.specs import FullAttentionSpec

MODEL_TYPES = ("granitemoehybrid", "bamba")


def _default_kinds(config: Mapping[str, Any], model_type: str, n: int) -> list[str]:
    if model_type == "bamba":
        # BambaConfig.attn_layer_indices defaults to None: no attention layer.
        ids = config.get("attn_layer_indices") or []
        if not isinstance(ids, list) or not all(isinstance(i, int) for i in ids):
            raise ModelConfigError(f"{model_type}: attn_layer_indices must be a list of ints")
        return ["full_attention" if i in ids else "linear_attention" for i in range(n)]
    # GraniteMoeHybridConfig.__post_init__: layer_types = ["linear_attention"] * n.
    return ["linear_attention"] * n


def parse(config: Mapping[str, Any], opts: ParseOptions, model_type: str) -> Parsed:
    kinds = read_layer_kinds(config, model_type)
    n = layer_count(config, model_type, kinds)
    if kinds is None:
        kinds = _default_kinds(config, model_type, n)
    dtype = model_dtype(config)
    hidden = need_int(config, "hidden_size", model_type)
    table: dict[str, Any] = {}
    # Keys of a kind are only required when some layer is of that kind.
    if "full_attention" in kinds:
        table["full_attention"] = FullAttentionSpec(
            **config_attention_kwargs(config, model_type, dtype, opts)
        )
    if "linear_attention" in kinds:
        table["linear_attention"] = mamba2_from_config(config, model_type, dtype, opts)
    return parsed(config, specs_by_kind(kinds, table, model_type), hidden_size=hidden)
