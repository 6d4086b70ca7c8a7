"""Helpers shared by the config parsers: typed reads, TP division, spec builders."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from hybridkv.errors import ModelConfigError
from hybridkv.specs import DTYPE_BYTES, FullAttentionSpec, StateSpec


@dataclass(frozen=True)
class ParseOptions:
    """What :func:`hybridkv.models.load_model` passes to every parser.

    ``kv_dtype``: a dtype name for attention and MLA caches, or an int meaning a custom
    KV dtype of that many bytes per token per layer (per TP rank); ``None`` keeps the
    model's dtype.
    """

    tp: int = 1
    kv_dtype: str | int | None = None


@dataclass(frozen=True)
class Parsed:
    """A parser's result: per-layer specs, their names, and informative metadata."""

    layer_specs: tuple[Any, ...]
    layer_names: tuple[str, ...]
    hidden_size: int | None = None
    vocab_size: int | None = None
    num_attention_heads: int | None = None
    notes: tuple[str, ...] = ()


def text_config(config: Mapping[str, Any]) -> Mapping[str, Any]:
    """The language model's part of a (possibly multimodal) config."""
    inner = config.get("text_config")
    if isinstance(inner, Mapping):
        return inner
    return config


def need_int(cfg: Mapping[str, Any], key: str, model_type: str) -> int:
    """``cfg[key]`` as a positive int, or a :class:`ModelConfigError` naming it."""
    value = cfg.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ModelConfigError(f"{model_type} config needs a positive int {key!r}, got {value!r}")
    return value


def opt_int(cfg: Mapping[str, Any], key: str, model_type: str, default: int) -> int:
    """``cfg[key]`` as a positive int when present (and not null), else ``default``."""
    if cfg.get(key) is None:
        return default
    return need_int(cfg, key, model_type)


def model_dtype(cfg: Mapping[str, Any], *outer: Mapping[str, Any]) -> str:
    """The model's dtype name (``torch_dtype`` / ``dtype``), bf16 when unstated."""
    for source in (cfg, *outer):
        for key in ("torch_dtype", "dtype"):
            value = source.get(key)
            if isinstance(value, str) and value.lower() in DTYPE_BYTES:
                return value.lower()
    return "bfloat16"


def tp_split(total: int, tp: int, what: str, *, replicate: bool) -> int:
    """Heads of ``what`` on one of ``tp`` ranks.

    ``replicate``: when ``tp`` exceeds ``total`` (and is a multiple of it) each rank
    keeps one (KV heads, Mamba groups); otherwise ``total`` must divide evenly.
    """
    if total % tp == 0:
        return total // tp
    if replicate and tp > total and tp % total == 0:
        return 1
    raise ModelConfigError(f"tp={tp} does not divide {what} ({total})")


def attention_kwargs(
    num_kv_heads: int,
    head_size: int,
    dtype: str,
    opts: ParseOptions,
    *,
    head_size_v: int | None = None,
) -> dict[str, Any]:
    """Keyword arguments of an attention spec after TP and the KV dtype choice."""
    kwargs: dict[str, Any] = {
        "num_kv_heads": tp_split(num_kv_heads, opts.tp, "num_key_value_heads", replicate=True),
        "head_size": head_size,
        "head_size_v": head_size_v,
        "dtype": dtype,
    }
    if isinstance(opts.kv_dtype, int):
        kwargs["custom_bytes_per_token"] = opts.kv_dtype
    elif opts.kv_dtype is not None:
        kwargs["dtype"] = opts.kv_dtype
    return kwargs


def full_attention(
    num_kv_heads: int, head_size: int, dtype: str, opts: ParseOptions
) -> FullAttentionSpec:
    """A full-attention spec for one rank."""
    return FullAttentionSpec(**attention_kwargs(num_kv_heads, head_size, dtype, opts))


def mamba2_state(
    *,
    num_heads: int,
    head_dim: int,
    n_groups: int,
    d_state: int,
    d_conv: int,
    conv_dtype: str,
    ssm_dtype: str,
    tp: int,
    intermediate: int | None = None,
) -> StateSpec:
    """Mamba-2 state of one rank: conv ``(d_conv - 1, conv_dim)`` + SSM ``(heads, head_dim, d_state)``.

    ``conv_dim = intermediate + 2 * groups * d_state``; ``intermediate`` defaults to
    ``num_heads * head_dim``. Groups are replicated when ``tp`` exceeds them.
    """
    heads = tp_split(num_heads, tp, "mamba heads", replicate=False)
    groups = tp_split(n_groups, tp, "mamba groups", replicate=True)
    inner = num_heads * head_dim if intermediate is None else intermediate
    inner = tp_split(inner, tp, "mamba intermediate size", replicate=False)
    conv_dim = inner + 2 * groups * d_state
    return StateSpec(
        shapes=((d_conv - 1, conv_dim), (heads, head_dim, d_state)),
        dtypes=(conv_dtype, ssm_dtype),
        family="mamba2",
    )


def mamba1_state(
    *, intermediate: int, d_state: int, d_conv: int, conv_dtype: str, ssm_dtype: str, tp: int
) -> StateSpec:
    """Mamba (v1) state of one rank: conv ``(inner, d_conv - 1)`` + SSM ``(inner, d_state)``."""
    inner = tp_split(intermediate, tp, "mamba intermediate size", replicate=False)
    return StateSpec(
        shapes=((inner, d_conv - 1), (inner, d_state)),
        dtypes=(conv_dtype, ssm_dtype),
        family="mamba",
    )


def gdn_state(
    *,
    num_k_heads: int,
    num_v_heads: int,
    head_k_dim: int,
    head_v_dim: int,
    conv_kernel: int,
    conv_dtype: str,
    ssm_dtype: str,
    tp: int,
) -> StateSpec:
    """Gated delta net state of one rank: conv ``(conv_dim, kernel - 1)`` + recurrent ``(v_heads, k_dim, v_dim)``.

    ``conv_dim = 2 * k_heads * k_dim + v_heads * v_dim`` (q, k and v are convolved).
    """
    k_heads = tp_split(num_k_heads, tp, "linear_num_key_heads", replicate=False)
    v_heads = tp_split(num_v_heads, tp, "linear_num_value_heads", replicate=False)
    conv_dim = 2 * k_heads * head_k_dim + v_heads * head_v_dim
    return StateSpec(
        shapes=((conv_dim, conv_kernel - 1), (v_heads, head_k_dim, head_v_dim)),
        dtypes=(conv_dtype, ssm_dtype),
        family="gdn",
    )


def ssm_dtype(cfg: Mapping[str, Any], default: str) -> str:
    """The recurrent state's dtype: ``mamba_ssm_dtype`` / ``mamba_ssm_cache_dtype`` when given."""
    for key in ("mamba_ssm_dtype", "mamba_ssm_cache_dtype"):
        value = cfg.get(key)
        if isinstance(value, str) and value.lower() in DTYPE_BYTES:
            return value.lower()
    return default


def head_dim(
    cfg: Mapping[str, Any], model_type: str, heads_key: str = "num_attention_heads"
) -> int:
    """``head_dim`` when given, else ``hidden_size // heads``."""
    if cfg.get("head_dim") is not None:
        return need_int(cfg, "head_dim", model_type)
    hidden = need_int(cfg, "hidden_size", model_type)
    heads = need_int(cfg, heads_key, model_type)
    if hidden % heads:
        raise ModelConfigError(f"{model_type}: hidden_size {hidden} not divisible by {heads} heads")
    return hidden // heads


def layer_list(cfg: Mapping[str, Any], key: str, n: int, model_type: str) -> list[str] | None:
    """``cfg[key]`` as a list of ``n`` strings, ``None`` when absent."""
    value = cfg.get(key)
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ModelConfigError(f"{model_type}: {key} must be a list of strings")
    if len(value) != n:
        raise ModelConfigError(f"{model_type}: {key} has {len(value)} entries for {n} layers")
    return value
