"""Dense decoders (Llama, Mistral, Qwen2/3: one full-attention group) and Llama 4.

Mistral with a ``sliding_window`` uses it in every layer. Llama 4 uses chunked local
attention (``attention_chunk_size``) in its RoPE layers and full attention in its
NoPE layers: ``no_rope_layers[i] == 0``, by default every fourth layer.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hybridkv.errors import ModelConfigError
from hybridkv.models.parsers.common import (
    Parsed,
    ParseOptions,
    attention_kwargs,
    head_dim,
    model_dtype,
    need_int,
    opt_int,
    parsed,
    text_config,
)
from hybridkv.specs import ChunkedLocalSpec, FullAttentionSpec, SlidingWindowSpec

MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3", "llama4", "llama4_text")


def parse(config: Mapping[str, Any], opts: ParseOptions, model_type: str) -> Parsed:
    cfg = text_config(config)
    n = need_int(cfg, "num_hidden_layers", model_type)
    heads = need_int(cfg, "num_attention_heads", model_type)
    kv_heads = opt_int(cfg, "num_key_value_heads", model_type, heads)
    kwargs = attention_kwargs(kv_heads, head_dim(cfg, model_type), model_dtype(cfg, config), opts)
    full = FullAttentionSpec(**kwargs)
    specs: list[Any]
    if model_type in ("llama4", "llama4_text") and cfg.get("attention_chunk_size") is not None:
        local = ChunkedLocalSpec(
            chunk_size=need_int(cfg, "attention_chunk_size", model_type), **kwargs
        )
        rope = cfg.get("no_rope_layers")
        if not rope:
            interval = opt_int(cfg, "no_rope_layer_interval", model_type, 4)
            rope = [int((i + 1) % interval != 0) for i in range(n)]
        if not isinstance(rope, list) or len(rope) != n:
            raise ModelConfigError(f"{model_type}: no_rope_layers must list {n} flags")
        specs = [local if flag else full for flag in rope]
    elif model_type == "mistral" and cfg.get("sliding_window") is not None:
        window = need_int(cfg, "sliding_window", model_type)
        specs = [SlidingWindowSpec(window=window, **kwargs)] * n
    else:
        specs = [full] * n
    return parsed(cfg, specs)
