"""DeepSeek-V2/V3: multi-head latent attention, one ``kv_lora_rank + qk_rope_head_dim``
latent per token per layer, replicated across TP ranks."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hybridkv.models.parsers.common import (
    Parsed,
    ParseOptions,
    kv_dtype_kwargs,
    model_dtype,
    need_int,
    parsed,
)
from hybridkv.specs import MLASpec

MODEL_TYPES = ("deepseek_v2", "deepseek_v3")


def parse(config: Mapping[str, Any], opts: ParseOptions, model_type: str) -> Parsed:
    n = need_int(config, "num_hidden_layers", model_type)
    spec = MLASpec(
        kv_lora_rank=need_int(config, "kv_lora_rank", model_type),
        qk_rope_head_dim=need_int(config, "qk_rope_head_dim", model_type),
        **kv_dtype_kwargs(model_dtype(config), opts),
    )
    return parsed(config, [spec] * n)
