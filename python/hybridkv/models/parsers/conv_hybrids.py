"""Short-convolution and RG-LRU hybrids with attention.

- ``lfm2`` / ``lfm2_moe`` (Liquid LFM2): "conv" layers keep one short-convolution state
  ``(hidden_size, conv_L_cache - 1)`` (vLLM's ``short_conv_state_shape``; Lfm2Config
  ``conv_L_cache`` = 3) in the model dtype; "full_attention" layers grow. Without
  ``layer_types``: Lfm2Config's ``full_attn_idxs`` (default: every layer).
- ``lfm3``: the same short-conv state (Lfm3Config ``conv_L_cache`` = 7) beside full and
  "sliding_attention" layers (``sliding_window`` 256; null: full attention), over
  ``num_key_value_heads`` heads of ``head_dim`` (128). Without ``layer_types``:
  Lfm3Config's pattern, full at ``i % 4 == 2``, sliding at ``i % 4 == 0`` (``i > 0``),
  conv elsewhere.
- ``recurrent_gemma`` (Griffin): ``block_types`` repeats ("recurrent", "recurrent",
  "attention"); recurrent layers keep an RG-LRU state ``(lru_width,)`` in float32 and a
  conv1d state ``(lru_width, conv1d_width - 1)`` in the model dtype (transformers'
  RecurrentGemmaRecurrentBlock); attention layers are local, a sliding window of
  ``attention_window_size`` (2048) over ``num_key_value_heads`` heads of
  ``hidden_size // num_attention_heads``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hybridkv.errors import ModelConfigError
from hybridkv.models.parsers.common import (
    Parsed,
    ParseOptions,
    attention_kwargs,
    config_attention_kwargs,
    layer_count,
    model_dtype,
    need_int,
    opt_int,
    parsed,
    read_layer_kinds,
    specs_by_kind,
    tp_split,
)
from hybridkv.models.specs import FullAttentionSpec, SlidingWindowSpec, StateSpec

MODEL_TYPES = ("lfm2", "lfm2_moe", "lfm3", "recurrent_gemma")


def _lfm2(config: Mapping[str, Any], opts: ParseOptions, model_type: str) -> Parsed:
    kinds = read_layer_kinds(config, model_type)
    n = layer_count(config, model_type, kinds)
    if kinds is None and model_type == "lfm3":
        kinds = [
            "full_attention" if i % 4 == 2 else "sliding_attention" if i % 4 == 0 and i else "conv"
            for i in range(n)
        ]
    if kinds is None:
        full = config.get("full_attn_idxs")
        if full is None:
            full = list(range(n))
        if not isinstance(full, list):
            raise ModelConfigError(f"{model_type}: full_attn_idxs must be a list of ints")
        kinds = ["full_attention" if i in full else "conv" for i in range(n)]
    dtype = model_dtype(config)
    attn_cfg = dict(config)
    if model_type == "lfm3":
        # Lfm3Config: head_dim 128 and sliding_window 256 when the keys are absent.
        attn_cfg.setdefault("head_dim", 128)
        attn_cfg.setdefault("sliding_window", 256)
    table: dict[str, Any] = {}
    if "full_attention" in kinds:
        table["full_attention"] = FullAttentionSpec(
            **config_attention_kwargs(attn_cfg, model_type, dtype, opts)
        )
    if "sliding_attention" in kinds:
        kwargs = config_attention_kwargs(attn_cfg, model_type, dtype, opts)
        # A null sliding_window makes the sliding layers full attention.
        table["sliding_attention"] = (
            FullAttentionSpec(**kwargs)
            if attn_cfg.get("sliding_window") is None
            else SlidingWindowSpec(
                window=need_int(attn_cfg, "sliding_window", model_type), **kwargs
            )
        )
    if "conv" in kinds:
        hidden = need_int(config, "hidden_size", model_type)
        width = opt_int(config, "conv_L_cache", model_type, 7 if model_type == "lfm3" else 3)
        if width < 2:
            raise ModelConfigError(f"{model_type}: conv_L_cache must be >= 2, got {width}")
        channels = tp_split(hidden, opts.tp, "hidden_size", replicate=False)
        table["conv"] = StateSpec(
            shapes=((channels, width - 1),), dtypes=(dtype,), family="short_conv"
        )
    return parsed(config, specs_by_kind(kinds, table, model_type))


def _recurrent_gemma(config: Mapping[str, Any], opts: ParseOptions, model_type: str) -> Parsed:
    n = need_int(config, "num_hidden_layers", model_type)
    # RecurrentGemmaConfig.block_types default; layer i is block_types[i % len].
    blocks = config.get("block_types") or ["recurrent", "recurrent", "attention"]
    if not isinstance(blocks, list) or not all(b in ("recurrent", "attention") for b in blocks):
        raise ModelConfigError(
            f"{model_type}: block_types must list 'recurrent' / 'attention', got {blocks!r}"
        )
    kinds = [blocks[i % len(blocks)] for i in range(n)]
    dtype = model_dtype(config)
    hidden = need_int(config, "hidden_size", model_type)
    heads = need_int(config, "num_attention_heads", model_type)
    kv_heads = opt_int(config, "num_key_value_heads", model_type, heads)
    if hidden % heads:
        raise ModelConfigError(f"{model_type}: hidden_size {hidden} not divisible by {heads} heads")
    table: dict[str, Any] = {
        "attention": SlidingWindowSpec(
            window=opt_int(config, "attention_window_size", model_type, 2048),
            **attention_kwargs(kv_heads, hidden // heads, dtype, opts),
        )
    }
    if "recurrent" in kinds:
        lru = tp_split(
            opt_int(config, "lru_width", model_type, hidden), opts.tp, "lru_width", replicate=False
        )
        width = opt_int(config, "conv1d_width", model_type, 4)
        table["recurrent"] = StateSpec(
            shapes=((lru, width - 1), (lru,)), dtypes=(dtype, "float32"), family="rg_lru"
        )
    return parsed(config, specs_by_kind(kinds, table, model_type))


def parse(config: Mapping[str, Any], opts: ParseOptions, model_type: str) -> Parsed:
    if model_type == "recurrent_gemma":
        return _recurrent_gemma(config, opts, model_type)
    return _lfm2(config, opts, model_type)
