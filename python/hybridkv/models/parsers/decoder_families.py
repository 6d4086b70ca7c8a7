"""The attention-only decoder families :mod:`hybridkv.models.parsers.decoder` reads, and
how transformers fills each one's missing keys: its default layer pattern (as its
``Config.__post_init__`` computes it; each rule below names the config it follows), its
default ``sliding_window`` and the switch that enables it, its default chunk size."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from hybridkv.errors import ModelConfigError
from hybridkv.models.parsers.common import need_int, opt_int

#: A family's default layer kinds: ``(cfg, n, window) -> kinds`` (``window`` is the
#: sliding window after the family's default, ``None`` when there is none).
DefaultKinds = Callable[[Mapping[str, Any], int, "int | None"], list[str]]

_UNSET = object()


def _all_full(cfg: Mapping[str, Any], n: int, window: int | None) -> list[str]:
    return ["full_attention"] * n


def _uniform(cfg: Mapping[str, Any], n: int, window: int | None) -> list[str]:
    """Mistral / Mixtral / Phi-3 / Starcoder2 / Ministral: every layer slides when a
    ``sliding_window`` is set (their attention passes ``config.sliding_window``)."""
    return ["sliding_attention" if window is not None else "full_attention"] * n


def _global_every(key: str | None, default: int) -> DefaultKinds:
    """Layer ``i`` is global when ``(i + 1) % cfg[key] == 0``, else sliding (Gemma 2/3,
    Cohere2, OLMo 3, gpt-oss)."""

    def kinds(cfg: Mapping[str, Any], n: int, window: int | None) -> list[str]:
        every = default if key is None else opt_int(cfg, key, "config", default)
        if window is None:
            return ["full_attention"] * n
        return ["full_attention" if (i + 1) % every == 0 else "sliding_attention" for i in range(n)]

    return kinds


def _qwen2(cfg: Mapping[str, Any], n: int, window: int | None) -> list[str]:
    """Qwen2Config / Qwen3Config: with ``use_sliding_window`` layers from
    ``max_window_layers`` (default 28) on slide."""
    if window is None:
        return ["full_attention"] * n
    first = cfg.get("max_window_layers", 28)
    first = 28 if not isinstance(first, int) else first
    return ["sliding_attention" if i >= first else "full_attention" for i in range(n)]


def _qwen2_moe(cfg: Mapping[str, Any], n: int, window: int | None) -> list[str]:
    """Qwen2MoeConfig: even layers below ``max_window_layers`` slide."""
    if window is None:
        return ["full_attention"] * n
    first = cfg.get("max_window_layers", 28)
    first = 28 if not isinstance(first, int) else first
    return [
        "sliding_attention" if (i + 1) % 2 and i < first else "full_attention" for i in range(n)
    ]


def _exaone4(cfg: Mapping[str, Any], n: int, window: int | None) -> list[str]:
    """Exaone4Config: ``sliding_window_pattern`` (default 4, or a string such as "LLLG")."""
    if window is None:
        return ["full_attention"] * n
    pattern = cfg.get("sliding_window_pattern", 4)
    if isinstance(pattern, str) and pattern and set(pattern) <= {"L", "G"}:
        return [
            "sliding_attention" if pattern[i % len(pattern)] == "L" else "full_attention"
            for i in range(n)
        ]
    every = pattern if isinstance(pattern, int) and pattern > 0 else 4
    return ["sliding_attention" if (i + 1) % every else "full_attention" for i in range(n)]


def _no_rope_flags(cfg: Mapping[str, Any], n: int) -> list[int]:
    """``no_rope_layers`` (1 = the layer uses RoPE), else NoPE every
    ``no_rope_layer_interval`` (default 4) layers (Llama4Config, SmolLM3Config)."""
    flags = cfg.get("no_rope_layers")
    if not flags:
        every = opt_int(cfg, "no_rope_layer_interval", "config", 4)
        return [int((i + 1) % every != 0) for i in range(n)]
    if not isinstance(flags, list) or len(flags) != n:
        raise ModelConfigError(f"no_rope_layers must list {n} flags, got {flags!r}")
    return [int(bool(f)) for f in flags]


def _smollm3(cfg: Mapping[str, Any], n: int, window: int | None) -> list[str]:
    """SmolLM3Config: NoPE layers slide when ``use_sliding_window`` and a window are set."""
    flags = _no_rope_flags(cfg, n)
    use = bool(cfg.get("use_sliding_window", False))
    return [
        "sliding_attention" if use and window is not None and not rope else "full_attention"
        for rope in flags
    ]


def _llama4(cfg: Mapping[str, Any], n: int, window: int | None) -> list[str]:
    """Llama4TextConfig: RoPE layers are chunked when ``attention_chunk_size`` is set."""
    chunk = cfg.get("attention_chunk_size", 8192)  # Llama4TextConfig default
    return [
        "chunked_attention" if rope and chunk is not None else "full_attention"
        for rope in _no_rope_flags(cfg, n)
    ]


def _indexed(cfg: Mapping[str, Any], n: int, window: int | None) -> list[str]:
    """DeepseekV32Config / GlmMoeDsaConfig: every layer is DSA ("indexed_attention")."""
    return ["indexed_attention"] * n


@dataclass(frozen=True)
class Family:
    """How transformers fills a family's missing keys.

    ``kinds``: the default layer pattern; ``window``: ``sliding_window`` when the key
    is absent (its dataclass default); ``window_switch``: a bool key that must be true
    for the window to apply (Qwen's ``use_sliding_window``, default False).
    """

    kinds: DefaultKinds = _all_full
    window: int | None = None
    window_switch: str | None = None
    chunk_default: int | None = None


FAMILIES: dict[str, Family] = {
    # Full attention everywhere (transformers computes no pattern for these).
    **{
        t: Family()
        for t in (
            "llama",
            "glm",
            "glm4",
            "glm4_moe",
            "glm4_moe_lite",
            "minimax_m2",
            "hunyuan_v1_dense",
            "hunyuan_v1_moe",
            "seed_oss",
            "olmo",
            "olmo2",
            "olmoe",
            "granite",
            "granitemoe",
            "granitemoeshared",
            "gemma",
            "cohere",
            "internlm3",
            "ernie4_5",
            "ernie4_5_moe",
            "exaone",
            "helium",
            "nemotron",
            "stablelm",
            "arcee",
            "apertus",
            "dots1",
            "bitnet",
            "deepseek_v2",
            "deepseek_v3",
            "kimi_k2",
            "minicpm3",
            "mistral4",
            "qwen3_vl_text",
            "qwen3_vl_moe_text",
        )
    },
    # MistralConfig.sliding_window = 4096; MixtralConfig / Phi3Config / PhimoeConfig /
    # Starcoder2Config / Ministral3Config: None. All apply it to every layer.
    "mistral": Family(_uniform, window=4096),
    "mixtral": Family(_uniform),
    "phi3": Family(_uniform),
    "phimoe": Family(_uniform),
    "starcoder2": Family(_uniform),
    "ministral3": Family(_uniform),
    # MinistralConfig.layer_types: every layer slides when sliding_window (4096) is set.
    "ministral": Family(_uniform, window=4096),
    # Qwen2Config / Qwen3Config: sliding_window 4096 only with use_sliding_window.
    "qwen2": Family(_qwen2, window=4096, window_switch="use_sliding_window"),
    "qwen3": Family(_qwen2, window=4096, window_switch="use_sliding_window"),
    "qwen2_vl_text": Family(_qwen2, window=4096, window_switch="use_sliding_window"),
    "qwen2_5_vl_text": Family(_qwen2, window=4096, window_switch="use_sliding_window"),
    "qwen2_moe": Family(_qwen2_moe, window=4096, window_switch="use_sliding_window"),
    # Qwen3MoeConfig: the window (4096) applies to every layer with use_sliding_window.
    "qwen3_moe": Family(_uniform, window=4096, window_switch="use_sliding_window"),
    # Gemma2Config: alternating, sliding_window 4096.
    "gemma2": Family(_global_every(None, 2), window=4096),
    # Gemma3TextConfig: global every sliding_window_pattern (6) layers, window 4096.
    "gemma3": Family(_global_every("sliding_window_pattern", 6), window=4096),
    "gemma3_text": Family(_global_every("sliding_window_pattern", 6), window=4096),
    # Gemma3nTextConfig: full every 5th layer, sliding_window 512 (and KV sharing).
    "gemma3n": Family(_global_every(None, 5), window=512),
    "gemma3n_text": Family(_global_every(None, 5), window=512),
    # Cohere2Config: global every sliding_window_pattern (4) layers, window 4096.
    "cohere2": Family(_global_every("sliding_window_pattern", 4), window=4096),
    # Olmo3Config: global every 4th layer, window 4096.
    "olmo3": Family(_global_every(None, 4), window=4096),
    # Exaone4Config: sliding_window_pattern 4, window 4096.
    "exaone4": Family(_exaone4, window=4096),
    # GptOssConfig: alternating sliding / full, sliding_window 128.
    "gpt_oss": Family(_global_every(None, 2), window=128),
    # SmolLM3Config: NoPE layers slide with use_sliding_window; sliding_window None.
    "smollm3": Family(_smollm3),
    # Llama4TextConfig: chunked local RoPE layers, attention_chunk_size 8192.
    "llama4": Family(_llama4, chunk_default=8192),
    "llama4_text": Family(_llama4, chunk_default=8192),
    # DSA: every layer keeps an MLA latent and an indexer key.
    "deepseek_v32": Family(_indexed),
    "glm_moe_dsa": Family(_indexed),
}


def _window(cfg: Mapping[str, Any], family: Family, model_type: str) -> int | None:
    if family.window_switch is not None and not cfg.get(family.window_switch, False):
        return None
    value = cfg.get("sliding_window", _UNSET)
    if value is _UNSET:
        return family.window
    if value is None or value == 0:
        return None
    return need_int(cfg, "sliding_window", model_type)
