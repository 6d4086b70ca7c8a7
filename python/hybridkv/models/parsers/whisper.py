"""Whisper-style encoder-decoder: encoder layers keep no cache; each decoder layer keeps
a growing self-attention cache and a cross-attention cache over the encoder output
(``max_source_positions`` frames)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hybridkv.errors import ModelConfigError
from hybridkv.models.parsers.common import (
    Parsed,
    ParseOptions,
    attention_kwargs,
    model_dtype,
    need_int,
    opt_int,
    parsed,
)
from hybridkv.models.specs import CrossAttentionSpec, EncoderOnlySpec, FullAttentionSpec

MODEL_TYPES = ("whisper",)


def parse(config: Mapping[str, Any], opts: ParseOptions, model_type: str) -> Parsed:
    enc = need_int(config, "encoder_layers", model_type)
    dec = need_int(config, "decoder_layers", model_type)
    d_model = need_int(config, "d_model", model_type)
    heads = need_int(config, "decoder_attention_heads", model_type)
    if d_model % heads:
        raise ModelConfigError(f"{model_type}: d_model {d_model} not divisible by {heads} heads")
    kwargs = attention_kwargs(heads, d_model // heads, model_dtype(config), opts)
    self_attn = FullAttentionSpec(**kwargs)
    cross = CrossAttentionSpec(
        max_encoder_len=need_int(config, "max_source_positions", model_type), **kwargs
    )
    specs: list[Any] = [EncoderOnlySpec()] * enc + [self_attn, cross] * dec
    names = [f"encoder.layers.{i}" for i in range(enc)] + [
        name
        for i in range(dec)
        for name in (f"decoder.layers.{i}.self_attn", f"decoder.layers.{i}.encoder_attn")
    ]
    # WhisperConfig.max_target_positions = 448: the decoder's learned positions.
    bound = opt_int(config, "max_target_positions", model_type, 448)
    return parsed(
        config,
        specs,
        names,
        hidden_size=d_model,
        num_attention_heads=heads,
        max_model_len=bound,
        notes=(
            f"decoder self-attention is bounded by max_target_positions={bound}; "
            f"plan with max_model_len at most that",
        ),
    )
