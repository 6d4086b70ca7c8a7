"""Recurrent caches read from transformers' own cache code (no vLLM spec to follow).

- ``rwkv`` (RWKV-4): every layer keeps five ``(hidden_size,)`` vectors per request:
  the attention and feed-forward token-shift states in the model dtype and the WKV
  numerator, denominator and running maximum in float32 (``RwkvModel.forward``
  allocates ``state[i]`` with ``dtype=inputs_embeds.dtype if i <= 1 else
  torch.float32``, all ``hidden_size`` wide). Nothing grows: a pure state model.
- ``zaya`` (ZAYA, compressed convolutional attention): every layer is "hybrid" (or
  "hybrid_sliding"): one layer holds BOTH a state and an attention KV cache
  (transformers' ``LinearAttentionAndFullAttentionLayer``), planned as two cache
  layers, ``layers.{i}.cca`` and ``layers.{i}.self_attn``. The state
  (``ZayaCCAProjection``): the q/k convolution window, ``(num_attention_heads +
  num_key_value_heads) * head_dim`` channels x ``(cca_time0 - 1) + (cca_time1 - 1)``
  positions, and the previous token's delayed value projection,
  ``num_key_value_heads * head_dim // 2`` wide, both in the model dtype. The
  attention keeps ``num_key_value_heads`` heads of ``head_dim`` (128) for K and V;
  "hybrid_sliding" layers slide over ``sliding_window`` (ZayaConfig default None:
  full attention). Without ``layer_types``: ZayaConfig's default, every layer
  "hybrid".
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hybridkv.errors import ModelConfigError
from hybridkv.models.parsers.common import (
    Parsed,
    ParseOptions,
    attention_kwargs,
    layer_count,
    model_dtype,
    need_int,
    opt_int,
    parsed,
    read_layer_kinds,
    tp_split,
)
from hybridkv.models.specs import FullAttentionSpec, SlidingWindowSpec, StateSpec

MODEL_TYPES = ("rwkv", "zaya")

#: ZAYA's layer kinds (ZayaConfig.layer_types).
ZAYA_KINDS = ("hybrid", "hybrid_sliding")


def _rwkv(config: Mapping[str, Any], opts: ParseOptions, model_type: str) -> Parsed:
    n = need_int(config, "num_hidden_layers", model_type)
    hidden = need_int(config, "hidden_size", model_type)
    dtype = model_dtype(config)
    width = tp_split(hidden, opts.tp, "hidden_size", replicate=False)
    state = StateSpec(
        shapes=((width,),) * 5,
        dtypes=(dtype, dtype, "float32", "float32", "float32"),
        family="rwkv",
    )
    return parsed(config, [state] * n, [f"blocks.{i}" for i in range(n)])


def _zaya(config: Mapping[str, Any], opts: ParseOptions, model_type: str) -> Parsed:
    kinds = read_layer_kinds(config, model_type)
    n = layer_count(config, model_type, kinds)
    kinds = ["hybrid"] * n if kinds is None else kinds
    for i, kind in enumerate(kinds):
        if kind not in ZAYA_KINDS:
            raise ModelConfigError(
                f"{model_type}: unknown layer type {kind!r} at layer {i} (ZAYA layers are "
                f"{' / '.join(ZAYA_KINDS)})"
            )
    dtype = model_dtype(config)
    heads = need_int(config, "num_attention_heads", model_type)
    kv_heads = opt_int(config, "num_key_value_heads", model_type, heads)
    size = opt_int(config, "head_dim", model_type, 128)  # ZayaConfig.head_dim = 128
    # ZayaConfig.cca_time0 / cca_time1 = 2: the depthwise and grouped conv kernels.
    window = opt_int(config, "cca_time0", model_type, 2) - 1
    window += opt_int(config, "cca_time1", model_type, 2) - 1
    if window < 1:
        raise ModelConfigError(f"{model_type}: cca_time0 + cca_time1 must exceed 2")
    conv = tp_split((heads + kv_heads) * size, opts.tp, "CCA conv channels", replicate=False)
    delayed = tp_split(kv_heads * size // 2, opts.tp, "delayed value width", replicate=False)
    if not delayed:
        raise ModelConfigError(f"{model_type}: num_key_value_heads * head_dim must be >= 2")
    state = StateSpec(shapes=((conv, window), (delayed,)), dtypes=(dtype, dtype), family="cca")
    kwargs = attention_kwargs(kv_heads, size, dtype, opts)
    full = FullAttentionSpec(**kwargs)
    sliding: FullAttentionSpec | SlidingWindowSpec = full
    if "hybrid_sliding" in kinds and config.get("sliding_window") is not None:
        sliding = SlidingWindowSpec(window=need_int(config, "sliding_window", model_type), **kwargs)
    specs: list[Any] = []
    names: list[str] = []
    for i, kind in enumerate(kinds):
        specs += [state, sliding if kind == "hybrid_sliding" else full]
        names += [f"layers.{i}.cca", f"layers.{i}.self_attn"]
    notes = ("each ZAYA layer holds a CCA state and an attention KV cache: two cache layers",)
    return parsed(config, specs, names, notes=notes)


def parse(config: Mapping[str, Any], opts: ParseOptions, model_type: str) -> Parsed:
    if model_type == "rwkv":
        return _rwkv(config, opts, model_type)
    return _zaya(config, opts, model_type)
