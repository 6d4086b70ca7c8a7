"""Gemma 3: sliding-window layers with a global (full attention) layer every few.

``layer_types`` ("sliding_attention" / "full_attention") when given, else layer ``i``
is global when ``(i + 1) % sliding_window_pattern == 0``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hybridkv.models.parsers.common import (
    LayerPeriod,
    Parsed,
    ParseOptions,
    config_attention_kwargs,
    model_dtype,
    need_int,
    parsed,
    periodic_layer_kinds,
    specs_by_kind,
    text_config,
)
from hybridkv.specs import FullAttentionSpec, SlidingWindowSpec

MODEL_TYPES = ("gemma3", "gemma3_text", "gpt_oss")

_PERIOD = LayerPeriod("sliding_window_pattern", 6, "full_attention", "sliding_attention")


def parse(config: Mapping[str, Any], opts: ParseOptions, model_type: str) -> Parsed:
    """Also parses gpt-oss, whose ``layer_types`` alternate sliding and full layers."""
    cfg = text_config(config)
    n = need_int(cfg, "num_hidden_layers", model_type)
    kinds = periodic_layer_kinds(cfg, model_type, n, _PERIOD)
    kwargs = config_attention_kwargs(cfg, model_type, model_dtype(cfg, config), opts)
    table = {
        "full_attention": FullAttentionSpec(**kwargs),
        "sliding_attention": SlidingWindowSpec(
            window=need_int(cfg, "sliding_window", model_type), **kwargs
        ),
    }
    return parsed(cfg, specs_by_kind(kinds, table, model_type))
