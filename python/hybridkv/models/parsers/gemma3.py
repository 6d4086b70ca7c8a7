"""Gemma 3: sliding-window layers with a global (full attention) layer every few.

``layer_types`` ("sliding_attention" / "full_attention") when given, else layer ``i``
is global when ``(i + 1) % sliding_window_pattern == 0``.
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
    layer_list,
    model_dtype,
    need_int,
    opt_int,
    text_config,
)
from hybridkv.specs import FullAttentionSpec, SlidingWindowSpec

MODEL_TYPES = ("gemma3", "gemma3_text", "gpt_oss")


def parse(config: Mapping[str, Any], opts: ParseOptions, model_type: str) -> Parsed:
    """Also parses gpt-oss, whose ``layer_types`` alternate sliding and full layers."""
    cfg = text_config(config)
    n = need_int(cfg, "num_hidden_layers", model_type)
    kinds = layer_list(cfg, "layer_types", n, model_type)
    if kinds is None:
        pattern = opt_int(cfg, "sliding_window_pattern", model_type, 6)
        kinds = [
            "full_attention" if (i + 1) % pattern == 0 else "sliding_attention" for i in range(n)
        ]
    dtype = model_dtype(cfg, config)
    kwargs = attention_kwargs(
        need_int(cfg, "num_key_value_heads", model_type), head_dim(cfg, model_type), dtype, opts
    )
    full = FullAttentionSpec(**kwargs)
    sliding = SlidingWindowSpec(window=need_int(cfg, "sliding_window", model_type), **kwargs)
    specs: list[Any] = []
    for i, kind in enumerate(kinds):
        if kind == "full_attention":
            specs.append(full)
        elif kind == "sliding_attention":
            specs.append(sliding)
        else:
            raise ModelConfigError(f"{model_type}: unknown layer type {kind!r} at layer {i}")
    return Parsed(
        layer_specs=tuple(specs),
        layer_names=tuple(f"layers.{i}" for i in range(n)),
        hidden_size=cfg.get("hidden_size"),
        vocab_size=cfg.get("vocab_size"),
        num_attention_heads=cfg.get("num_attention_heads"),
    )
