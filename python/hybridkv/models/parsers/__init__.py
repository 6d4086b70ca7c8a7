"""One parser per model family: HF ``config.json`` -> per-layer KV-cache specs.

``PARSERS`` maps each ``model_type`` hybridkv reads to its parser;
:func:`hybridkv.models.parsers.decoder.parse_unknown` reads any other attention-only
decoder (with a note naming what it assumed), and ``REFUSED`` names the families that
must not be read that way, with the reason.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from hybridkv.models.parsers import (
    conv_hybrids,
    decoder,
    encoder_decoder,
    falcon_h1,
    granite,
    jamba,
    linear_hybrid,
    mllama,
    nemotron_h,
    qwen,
    recurrent,
    ssm,
    whisper,
    zamba2,
)
from hybridkv.models.parsers.common import Parsed, ParseOptions

Parser = Callable[[Mapping[str, Any], ParseOptions, str], Parsed]

PARSERS: dict[str, Parser] = {
    model_type: module.parse
    for module in (
        decoder,
        qwen,
        nemotron_h,
        jamba,
        falcon_h1,
        zamba2,
        granite,
        whisper,
        linear_hybrid,
        conv_hybrids,
        ssm,
        encoder_decoder,
        mllama,
        recurrent,
    )
    for model_type in module.MODEL_TYPES
}

#: Families the generic reader must not guess at, each with the reason it refuses.
REFUSED: dict[str, str] = {
    "xlstm": "xLSTM keeps matrix-memory states hybridkv has no spec reader for",
    "rwkv5": "RWKV-5 (remote code) keeps matrix-valued WKV states hybridkv has no spec reader for",
    "rwkv6": "RWKV-6 (remote code) keeps matrix-valued WKV states hybridkv has no spec reader for",
    "rwkv7": "RWKV-7 (remote code) keeps matrix-valued WKV states hybridkv has no spec reader for",
    "reformer": "Reformer's LSH attention buckets are not a paged KV cache",
    "zamba": "Zamba (v1) is not read; Zamba2 is",
    "kolibri1_1": (
        "Kolibri 1.1's indexed-attention layers read other layers' keys and values "
        "(kv_source_layers) and rescore a pooled candidate set; no hybridkv spec expresses "
        "cross-layer KV reuse among indexed layers"
    ),
    "glm5_next": (
        "GLM-5-Next's indexed-attention layers cache, per token, the indexer key, its "
        "kpool-compression gate scores and a validity channel (transformers packs them into "
        "one indexer cache), a layout no engine spec fixes yet; hybridkv does not guess it"
    ),
    "blt": (
        "the Byte Latent Transformer keeps byte-level local encoder/decoder caches beside a "
        "patch-level global cache whose length entropy patching decides at run time; no "
        "hybridkv spec expresses such a cache"
    ),
}

__all__ = ["PARSERS", "REFUSED", "ParseOptions", "Parsed", "Parser"]
