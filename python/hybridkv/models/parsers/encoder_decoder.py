"""Encoder-decoder models beside Whisper: T5 and the BART family.

Encoder layers keep no cache. Each decoder layer keeps a growing self-attention cache
and a cross-attention cache over the encoder output, bounded by the longest encoder
input: BART-style ``max_position_embeddings`` (learned positions, BartConfig 1024);
T5 has relative positions and no such bound, so its cross attention is sized for
``n_positions`` when the config gives it, else 512 (T5's pre-training input length),
and the plan says so.

- T5 family (``t5``, ``mt5``, ``umt5``, ``longt5``, ``switch_transformers``):
  ``num_layers`` encoder / ``num_decoder_layers`` (default ``num_layers``) decoder
  layers, ``num_heads`` heads of ``d_kv``.
- BART family (``bart``, ``mbart``, ``marian``, ``pegasus``, ``blenderbot``,
  ``blenderbot-small``, ``plbart``, ``m2m_100``, ``mvp``, ``nllb-moe``):
  ``encoder_layers`` / ``decoder_layers``, ``decoder_attention_heads`` heads of
  ``d_model / heads``. LED (LEDConfig) bounds the two sides apart:
  ``max_encoder_position_embeddings`` (16384) and ``max_decoder_position_embeddings``
  (1024).
"""

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

T5_TYPES = ("t5", "mt5", "umt5", "longt5", "switch_transformers")
BART_TYPES = (
    "bart",
    "mbart",
    "marian",
    "pegasus",
    "blenderbot",
    "blenderbot-small",
    "plbart",
    "m2m_100",
    "mvp",
    "nllb-moe",
    "fsmt",
    "pegasus_x",
    "bigbird_pegasus",
    "led",
)
MODEL_TYPES = T5_TYPES + BART_TYPES


def encoder_decoder(
    config: Mapping[str, Any],
    *,
    enc: int,
    dec: int,
    kwargs: dict[str, Any],
    max_encoder_len: int,
    hidden: int,
    heads: int,
    notes: tuple[str, ...],
    max_model_len: int | None = None,
) -> Parsed:
    """Specs and names: ``enc`` encoder layers, then self + cross attention per decoder layer."""
    self_attn = FullAttentionSpec(**kwargs)
    cross = CrossAttentionSpec(max_encoder_len=max_encoder_len, **kwargs)
    specs: list[Any] = [EncoderOnlySpec()] * enc + [self_attn, cross] * dec
    names = [f"encoder.layers.{i}" for i in range(enc)] + [
        name
        for i in range(dec)
        for name in (f"decoder.layers.{i}.self_attn", f"decoder.layers.{i}.encoder_attn")
    ]
    return parsed(
        config,
        specs,
        names,
        hidden_size=hidden,
        num_attention_heads=heads,
        notes=notes,
        max_model_len=max_model_len,
    )


def parse(config: Mapping[str, Any], opts: ParseOptions, model_type: str) -> Parsed:
    dtype = model_dtype(config)
    if model_type in T5_TYPES:
        enc = need_int(config, "num_layers", model_type)
        dec = opt_int(config, "num_decoder_layers", model_type, enc)
        heads = need_int(config, "num_heads", model_type)
        kwargs = attention_kwargs(heads, need_int(config, "d_kv", model_type), dtype, opts)
        if config.get("n_positions") is not None:
            bound = need_int(config, "n_positions", model_type)
            note = f"cross attention sized for n_positions={bound} encoder tokens"
        else:
            bound = 512
            note = (
                "T5 has relative positions and no encoder length limit: cross attention "
                "is sized for 512 encoder tokens (its pre-training input length)"
            )
        return encoder_decoder(
            config,
            enc=enc,
            dec=dec,
            kwargs=kwargs,
            max_encoder_len=bound,
            hidden=need_int(config, "d_model", model_type),
            heads=heads,
            notes=(note,),
        )
    d_model = need_int(config, "d_model", model_type)
    heads = need_int(config, "decoder_attention_heads", model_type)
    if d_model % heads:
        raise ModelConfigError(f"{model_type}: d_model {d_model} not divisible by {heads} heads")
    bound = opt_int(config, "max_position_embeddings", model_type, 1024)
    enc_bound = opt_int(config, "max_encoder_position_embeddings", model_type, bound)
    dec_bound = opt_int(config, "max_decoder_position_embeddings", model_type, bound)
    if enc_bound == dec_bound:
        note = (
            f"encoder input and decoder self-attention are bounded by "
            f"max_position_embeddings={bound}; plan with max_model_len at most that"
        )
    else:
        note = (
            f"encoder input is bounded by {enc_bound} tokens and decoder self-attention by "
            f"{dec_bound}; plan with max_model_len at most {dec_bound}"
        )
    return encoder_decoder(
        config,
        enc=need_int(config, "encoder_layers", model_type),
        dec=need_int(config, "decoder_layers", model_type),
        kwargs=attention_kwargs(heads, d_model // heads, dtype, opts),
        max_encoder_len=enc_bound,
        hidden=d_model,
        heads=heads,
        notes=(note,),
        max_model_len=dec_bound,
    )
