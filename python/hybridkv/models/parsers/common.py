"""Helpers shared by the config parsers: typed reads, TP division, spec builders."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from hybridkv.errors import ModelConfigError
from hybridkv.models.specs import DTYPE_BYTES, FullAttentionSpec, StateSpec


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
    #: The model's layer number of each cache layer; empty: read from the names.
    layer_indices: tuple[int, ...] = ()
    #: The longest sequence the model's learned positions allow; None: unbounded.
    max_model_len: int | None = None


#: Keys under which wrappers (VL, speech, OCR models) nest their language model's config.
TEXT_CONFIG_KEYS = ("text_config", "llm_config", "language_config", "text_model_config")


def text_config(config: Mapping[str, Any]) -> Mapping[str, Any]:
    """The language model's part of a (possibly multimodal) config."""
    for key in TEXT_CONFIG_KEYS:
        inner = config.get(key)
        if isinstance(inner, Mapping):
            return inner
    return config


#: transformers >= 5 renamed layer kinds (``configuration_utils._LEGACY_LAYER_TYPE_REMAP``);
#: both spellings are read, the current one is what parsers see.
LEGACY_LAYER_KINDS = {
    "mamba": "linear_attention",
    "attention": "full_attention",
    "deepseek_sparse_attention": "indexed_attention",
    "qwen_sparse_attention": "indexed_attention",
}

#: Keys that list one kind per layer, in the order they are trusted (``layer_types`` is
#: transformers' name; Zamba2 and Nemotron-H keep ``layers_block_type`` as an alias).
LAYER_KIND_KEYS = ("layer_types", "layers_block_type")


def read_layer_kinds(
    cfg: Mapping[str, Any], model_type: str, keys: Sequence[str] = LAYER_KIND_KEYS
) -> list[str] | None:
    """The first of ``keys`` that lists layer kinds, legacy spellings renamed; ``None``
    when none is given."""
    for key in keys:
        value = cfg.get(key)
        if value is None:
            continue
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ModelConfigError(f"{model_type}: {key} must be a list of strings")
        if not value:
            raise ModelConfigError(f"{model_type}: {key} is empty")
        return [LEGACY_LAYER_KINDS.get(str(v), str(v)) for v in value]
    return None


def layer_count(
    cfg: Mapping[str, Any],
    model_type: str,
    kinds: Sequence[str] | None,
    keys: Sequence[str] = ("num_hidden_layers",),
    source: str = "layer_types",
) -> int:
    """How many layers: ``num_hidden_layers`` (or the first of ``keys`` given), else the
    length of the layer-kind list (transformers >= 5 writes ``num_hidden_layers: null``
    for Nemotron-H, whose ``layers_block_type`` decides). A count that disagrees with
    the list is an error naming both."""
    for key in keys:
        if cfg.get(key) is not None:
            n = need_int(cfg, key, model_type)
            if kinds is not None and len(kinds) != n:
                raise ModelConfigError(
                    f"{model_type}: {source} lists {len(kinds)} layers but {key} is {n}"
                )
            return n
    if kinds is not None:
        return len(kinds)
    raise ModelConfigError(
        f"{model_type} config needs layer_types or a positive int {keys[0]!r}, got neither"
    )


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


def kv_dtype_kwargs(dtype: str, opts: ParseOptions) -> dict[str, Any]:
    """``dtype`` (and ``custom_bytes_per_token``) of an attention or MLA spec.

    The model's ``dtype`` unless ``opts.kv_dtype`` overrides it with a name, or with an
    int: a custom KV dtype of that many bytes per token per layer.
    """
    if isinstance(opts.kv_dtype, int):
        return {"dtype": dtype, "custom_bytes_per_token": opts.kv_dtype}
    return {"dtype": dtype if opts.kv_dtype is None else opts.kv_dtype}


def attention_kwargs(
    num_kv_heads: int,
    head_size: int,
    dtype: str,
    opts: ParseOptions,
    *,
    head_size_v: int | None = None,
) -> dict[str, Any]:
    """Keyword arguments of an attention spec after TP and the KV dtype choice."""
    return {
        "num_kv_heads": tp_split(num_kv_heads, opts.tp, "num_key_value_heads", replicate=True),
        "head_size": head_size,
        "head_size_v": head_size_v,
        **kv_dtype_kwargs(dtype, opts),
    }


def config_attention_kwargs(
    cfg: Mapping[str, Any], model_type: str, dtype: str, opts: ParseOptions
) -> dict[str, Any]:
    """:func:`attention_kwargs` from the usual keys: ``num_key_value_heads`` (transformers'
    default when null: ``num_attention_heads``) and ``head_dim`` (or ``hidden_size /
    num_attention_heads``)."""
    kv_heads = opt_int(
        cfg, "num_key_value_heads", model_type, need_int(cfg, "num_attention_heads", model_type)
    )
    return attention_kwargs(kv_heads, head_dim(cfg, model_type), dtype, opts)


def full_attention(
    num_kv_heads: int, head_size: int, dtype: str, opts: ParseOptions
) -> FullAttentionSpec:
    """A full-attention spec for one rank."""
    return FullAttentionSpec(**attention_kwargs(num_kv_heads, head_size, dtype, opts))


def state_kwargs(
    cfg: Mapping[str, Any], dtype: str, opts: ParseOptions, *, ssm_default: str | None = None
) -> dict[str, Any]:
    """``conv_dtype``, ``ssm_dtype`` and ``tp`` of the state builders below.

    The conv state keeps the model's dtype; the recurrent state may differ
    (:func:`ssm_dtype`): ``ssm_default`` is the family's default when the config names
    none (the model's dtype when ``None``, as vLLM's ``mamba_ssm_cache_dtype="auto"``).
    """
    default = dtype if ssm_default is None else ssm_default
    return {"conv_dtype": dtype, "ssm_dtype": ssm_dtype(cfg, default), "tp": opts.tp}


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


def mamba2_from_config(
    cfg: Mapping[str, Any],
    model_type: str,
    dtype: str,
    opts: ParseOptions,
    *,
    intermediate_key: str | None = None,
) -> StateSpec:
    """Mamba-2 state from the ``mamba_n_heads`` / ``mamba_d_head`` / ``mamba_n_groups``
    (default 1) / ``mamba_d_state`` / ``mamba_d_conv`` keys (Falcon-H1, Granite 4.0).

    ``intermediate_key`` names an optional key overriding ``heads * head_dim`` as the
    SSM's inner size (Falcon-H1's ``mamba_d_ssm``).
    """
    heads = need_int(cfg, "mamba_n_heads", model_type)
    if cfg.get("mamba_d_head") == "auto":
        # Granite 4.0 / Bamba: "auto" is mamba_expand * hidden_size // mamba_n_heads.
        expand = opt_int(cfg, "mamba_expand", model_type, 2)
        d_head = expand * need_int(cfg, "hidden_size", model_type) // heads
    else:
        d_head = need_int(cfg, "mamba_d_head", model_type)
    n_groups = opt_int(cfg, "mamba_n_groups", model_type, 1)
    d_state = need_int(cfg, "mamba_d_state", model_type)
    d_conv = need_int(cfg, "mamba_d_conv", model_type)
    inner = heads * d_head
    if intermediate_key is not None:
        inner = opt_int(cfg, intermediate_key, model_type, inner)
    return mamba2_state(
        num_heads=heads,
        head_dim=d_head,
        n_groups=n_groups,
        d_state=d_state,
        d_conv=d_conv,
        intermediate=inner,
        **state_kwargs(cfg, dtype, opts),
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
    """``head_dim`` when given, else ``hidden_size // heads`` (floor division, as
    transformers' attention modules compute it)."""
    if cfg.get("head_dim") is not None:
        return need_int(cfg, "head_dim", model_type)
    hidden = need_int(cfg, "hidden_size", model_type)
    heads = need_int(cfg, heads_key, model_type)
    if hidden < heads:
        raise ModelConfigError(f"{model_type}: hidden_size {hidden} is below {heads} heads")
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


class LayerPeriod(NamedTuple):
    """Layer kinds of a config without ``layer_types``: layer ``i`` is ``every`` when
    ``(i + 1) % cfg[interval_key] == 0`` (``default_interval`` when the key is absent),
    else ``other``."""

    interval_key: str
    default_interval: int
    every: str
    other: str


def periodic_layer_kinds(
    cfg: Mapping[str, Any], model_type: str, n: int, period: LayerPeriod
) -> list[str]:
    """``layer_types`` when given, else the kinds ``period`` describes."""
    kinds = read_layer_kinds(cfg, model_type)
    if kinds is not None:
        if len(kinds) != n:
            raise ModelConfigError(
                f"{model_type}: layer_types has {len(kinds)} entries for {n} layers"
            )
        return kinds
    interval = opt_int(cfg, period.interval_key, model_type, period.default_interval)
    return [period.every if (i + 1) % interval == 0 else period.other for i in range(n)]


def specs_by_kind(kinds: Sequence[str], table: Mapping[str, Any], model_type: str) -> list[Any]:
    """Each layer's spec looked up by its kind name in ``table``; an unknown kind is a
    :class:`ModelConfigError` naming the layer."""
    specs: list[Any] = []
    for i, kind in enumerate(kinds):
        if kind not in table:
            raise ModelConfigError(f"{model_type}: unknown layer type {kind!r} at layer {i}")
        specs.append(table[kind])
    return specs


def parsed(
    cfg: Mapping[str, Any],
    specs: Sequence[Any],
    names: Sequence[str] | None = None,
    *,
    notes: tuple[str, ...] = (),
    hidden_size: int | None = None,
    num_attention_heads: int | None = None,
    max_model_len: int | None = None,
) -> Parsed:
    """A :class:`Parsed` of ``specs`` (named ``layers.{i}`` unless ``names`` is given).

    ``hidden_size``, ``vocab_size`` and ``num_attention_heads`` are read from ``cfg``
    unless given (configs whose keys differ, e.g. Whisper's ``d_model``).
    """
    return Parsed(
        layer_specs=tuple(specs),
        layer_names=(
            tuple(f"layers.{i}" for i in range(len(specs))) if names is None else tuple(names)
        ),
        hidden_size=cfg.get("hidden_size") if hidden_size is None else hidden_size,
        vocab_size=cfg.get("vocab_size"),
        num_attention_heads=(
            cfg.get("num_attention_heads") if num_attention_heads is None else num_attention_heads
        ),
        notes=notes,
        max_model_len=max_model_len,
    )
