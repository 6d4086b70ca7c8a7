"""DeepSeek-V2/V3: multi-head latent attention, one ``kv_lora_rank + qk_rope_head_dim``
latent per token per layer, replicated across TP ranks."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hybridkv.models.parsers.common import Parsed, ParseOptions, model_dtype, need_int
from hybridkv.specs import MLASpec

MODEL_TYPES = ("deepseek_v2", "deepseek_v3")


def parse(config: Mapping[str, Any], opts: ParseOptions, model_type: str) -> Parsed:
    n = need_int(config, "num_hidden_layers", model_type)
    kwargs: dict[str, Any] = {
        "kv_lora_rank": need_int(config, "kv_lora_rank", model_type),
        "qk_rope_head_dim": need_int(config, "qk_rope_head_dim", model_type),
        "dtype": model_dtype(config),
    }
    if isinstance(opts.kv_dtype, int):
        kwargs["custom_bytes_per_token"] = opts.kv_dtype
    elif opts.kv_dtype is not None:
        kwargs["dtype"] = opts.kv_dtype
    spec = MLASpec(**kwargs)
    return Parsed(
        layer_specs=(spec,) * n,
        layer_names=tuple(f"layers.{i}" for i in range(n)),
        hidden_size=config.get("hidden_size"),
        vocab_size=config.get("vocab_size"),
        num_attention_heads=config.get("num_attention_heads"),
    )
