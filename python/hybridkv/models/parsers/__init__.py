"""One parser per model family: HF ``config.json`` -> per-layer KV-cache specs."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from hybridkv.models.parsers import (
    deepseek,
    falcon_h1,
    gemma3,
    granite,
    jamba,
    llama,
    nemotron_h,
    qwen,
    whisper,
    zamba2,
)
from hybridkv.models.parsers.common import Parsed, ParseOptions

Parser = Callable[[Mapping[str, Any], ParseOptions, str], Parsed]

PARSERS: dict[str, Parser] = {
    model_type: module.parse
    for module in (
        qwen,
        nemotron_h,
        jamba,
        falcon_h1,
        zamba2,
        granite,
        gemma3,
        llama,
        whisper,
        deepseek,
    )
    for model_type in module.MODEL_TYPES
}

__all__ = ["PARSERS", "ParseOptions", "Parsed", "Parser"]
