"""Llama 3.2 Vision (``mllama``): a Llama text model with cross-attention layers.

Self-attention layers keep a growing cache; the ``cross_attention_layers`` (MllamaTextConfig
default ``[3, 8, 13, 18, 23, 28, 33, 38]``) keep only a cross-attention cache over the
vision tokens: ``max_num_tiles`` (4) tiles of ``(image_size / patch_size)**2 + 1``
patches each, padded to a multiple of 8 as transformers' vision model does
(560 / 14: 4 x 1608 = 6432).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hybridkv.errors import ModelConfigError
from hybridkv.models.parsers.common import (
    Parsed,
    ParseOptions,
    config_attention_kwargs,
    model_dtype,
    need_int,
    opt_int,
    parsed,
    text_config,
)
from hybridkv.models.specs import CrossAttentionSpec, FullAttentionSpec, cdiv

MODEL_TYPES = ("mllama",)


def vision_tokens(vision: Mapping[str, Any], model_type: str) -> int:
    """Vision tokens one request's cross attention reads (MllamaVisionConfig defaults:
    image_size 448, patch_size 14, max_num_tiles 4)."""
    image = opt_int(vision, "image_size", model_type, 448)
    patch = opt_int(vision, "patch_size", model_type, 14)
    tiles = opt_int(vision, "max_num_tiles", model_type, 4)
    per_tile = (image // patch) ** 2 + 1
    return tiles * cdiv(per_tile, 8) * 8


def parse(config: Mapping[str, Any], opts: ParseOptions, model_type: str) -> Parsed:
    cfg = text_config(config)
    n = need_int(cfg, "num_hidden_layers", model_type)
    cross = cfg.get("cross_attention_layers")
    if cross is None:
        cross = [3, 8, 13, 18, 23, 28, 33, 38]
    if not isinstance(cross, list) or not all(isinstance(i, int) and 0 <= i < n for i in cross):
        raise ModelConfigError(
            f"{model_type}: cross_attention_layers must list layer indices below {n}"
        )
    vision = config.get("vision_config")
    tokens = vision_tokens(vision if isinstance(vision, Mapping) else {}, model_type)
    kwargs = config_attention_kwargs(cfg, model_type, model_dtype(cfg, config), opts)
    self_attn = FullAttentionSpec(**kwargs)
    cross_attn = CrossAttentionSpec(max_encoder_len=tokens, **kwargs)
    specs = [cross_attn if i in cross else self_attn for i in range(n)]
    names = [
        f"language_model.layers.{i}.{'cross_attn' if i in cross else 'self_attn'}" for i in range(n)
    ]
    return parsed(
        cfg,
        specs,
        names,
        notes=(f"cross-attention layers read {tokens} vision tokens per request",),
    )
