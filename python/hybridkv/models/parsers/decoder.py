"""Attention-only decoders: full, sliding-window, chunked-local, MLA and sparse MLA layers.

One reader for every decoder whose layers are attention of some kind, read the way
transformers reads them: ``layer_types`` first ("full_attention", "sliding_attention",
"chunked_attention", "indexed_attention"; legacy spellings renamed); without it, the
family's own default pattern, as its ``Config.__post_init__`` computes it (each rule in
:mod:`~hybridkv.models.parsers.decoder_families` names the field it follows). A family
that transformers gives no pattern to is full attention in every layer. MLA
(``kv_lora_rank``) replaces K/V heads by one latent; "indexed_attention" layers
(DeepSeek-V3.2 DSA) also keep an indexer key per token.

Model types transformers knows but hybridkv has no family entry for plan through
:func:`parse_unknown`: the same reader, with a note naming what it assumed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from hybridkv.errors import ModelConfigError
from hybridkv.models.parsers.common import (
    Parsed,
    ParseOptions,
    attention_kwargs,
    gdn_state,
    head_dim,
    kv_dtype_kwargs,
    layer_count,
    model_dtype,
    need_int,
    opt_int,
    parsed,
    read_layer_kinds,
    state_kwargs,
    text_config,
)
from hybridkv.models.parsers.decoder_families import FAMILIES, Family, _all_full, _window
from hybridkv.models.parsers.decoder_families import DefaultKinds as DefaultKinds
from hybridkv.models.specs import (
    ChunkedLocalSpec,
    FullAttentionSpec,
    MLASpec,
    SlidingWindowSpec,
    SparseMLASpec,
    cdiv,
    dtype_bytes,
)

MODEL_TYPES = tuple(FAMILIES)

#: Fields of a gated-delta-net ``linear_attention`` layer (Qwen3NextConfig's names).
GDN_KEYS = (
    "linear_num_key_heads",
    "linear_num_value_heads",
    "linear_key_head_dim",
    "linear_value_head_dim",
    "linear_conv_kernel_dim",
)

#: Layer kinds that hold no cache (MLP-only blocks).
NO_CACHE_KINDS = ("mlp", "moe")

#: Layer kinds this reader turns into specs (others need a family parser).
ATTENTION_KINDS = ("full_attention", "sliding_attention", "chunked_attention", "indexed_attention")


def _indexer_flags(cfg: Mapping[str, Any], n: int, model_type: str) -> list[bool]:
    """Which DSA layers keep their own indexer keys: GlmMoeDsaConfig.indexer_types
    ("full" runs the indexer, "shared" reuses the previous full layer's top-k), else
    ``index_topk_pattern`` ("F"/"S"), else ``index_topk_freq`` (1: every layer) from
    ``index_skip_topk_offset`` (2)."""
    types = cfg.get("indexer_types")
    if types is None:
        pattern = cfg.get("index_topk_pattern")
        if isinstance(pattern, str):
            types = [{"F": "full", "S": "shared"}.get(c, c) for c in pattern]
        elif isinstance(pattern, list):
            types = pattern
    if types is None:
        freq = cfg.get("index_topk_freq", 1)
        freq = max(freq, 1) if isinstance(freq, int) else 1
        offset = cfg.get("index_skip_topk_offset", 2)
        offset = offset if isinstance(offset, int) else 2
        return [max(i - offset + 1, 0) % freq == 0 for i in range(n)]
    if not isinstance(types, list) or len(types) != n or not set(types) <= {"full", "shared"}:
        raise ModelConfigError(
            f"{model_type}: indexer_types must list {n} of 'full' / 'shared', got {types!r}"
        )
    return [t == "full" for t in types]


def _mla_specs(
    cfg: Mapping[str, Any], model_type: str, dtype: str, opts: ParseOptions
) -> tuple[MLASpec, SparseMLASpec | None]:
    """The MLA latent spec, and the DSA spec (latent + indexer key) when the config has
    an ``index_head_dim``."""
    rank = need_int(cfg, "kv_lora_rank", model_type)
    # DeepseekV3Config.qk_rope_head_dim = 64.
    rope = opt_int(cfg, "qk_rope_head_dim", model_type, 64)
    kw = kv_dtype_kwargs(dtype, opts)
    mla = MLASpec(kv_lora_rank=rank, qk_rope_head_dim=rope, **kw)
    if cfg.get("index_head_dim") is None:
        return mla, None
    index_dim = need_int(cfg, "index_head_dim", model_type)
    index_dtype = kw["dtype"]
    # An fp8 indexer key carries one fp32 scale per 128 elements (vLLM's layout).
    scales = 4 * cdiv(index_dim, 128) if dtype_bytes(index_dtype) == 1 else 0
    sparse = SparseMLASpec(
        kv_lora_rank=rank,
        qk_rope_head_dim=rope,
        index_head_dim=index_dim,
        index_dtype=index_dtype,
        index_scale_bytes_per_token=scales,
        **kw,
    )
    return mla, sparse


def build(
    cfg: Mapping[str, Any],
    opts: ParseOptions,
    model_type: str,
    family: Family,
    *,
    outer: Mapping[str, Any] | None = None,
    notes: tuple[str, ...] = (),
) -> Parsed:
    """Specs of an attention-only decoder config ``cfg`` read as ``family``."""
    kinds = read_layer_kinds(cfg, model_type)
    n = layer_count(cfg, model_type, kinds, keys=("num_hidden_layers", "n_layer", "num_layers"))
    window = _window(cfg, family, model_type)
    if kinds is None:
        kinds = family.kinds(cfg, n, window)
    gdn = "linear_attention" in kinds and all(cfg.get(k) is not None for k in GDN_KEYS)
    for i, kind in enumerate(kinds):
        if (
            kind not in ATTENTION_KINDS
            and kind not in NO_CACHE_KINDS
            and not (gdn and kind == "linear_attention")
        ):
            extra = (
                f"; linear_attention is read as a gated delta net only with {', '.join(GDN_KEYS)}"
                if kind == "linear_attention"
                else ""
            )
            if kind in UNSUPPORTED_KINDS:
                raise ModelConfigError(
                    f"{model_type}: layer {i} is {kind!r}: {UNSUPPORTED_KINDS[kind]}"
                )
            raise ModelConfigError(
                f"{model_type}: unknown layer type {kind!r} at layer {i} (an attention-only "
                f"decoder has {', '.join(ATTENTION_KINDS)}{extra})"
            )
    dtype = model_dtype(cfg, *([outer] if outer is not None else []))
    mla: MLASpec | None = None
    sparse: SparseMLASpec | None = None
    if cfg.get("kv_lora_rank") is not None:
        mla, sparse = _mla_specs(cfg, model_type, dtype, opts)
    table: dict[str, Any] = {}
    if mla is not None:
        table["full_attention"] = mla
    qsa = "indexed_attention" in kinds and sparse is None and mla is None
    if "indexed_attention" in kinds and not qsa:
        if sparse is None:
            raise ModelConfigError(
                f"{model_type}: indexed_attention layers need kv_lora_rank and index_head_dim"
            )
        table["indexed_attention"] = sparse
    if qsa and cfg.get("indexer_head_dim") is None:
        raise ModelConfigError(
            f"{model_type}: indexed_attention layers need kv_lora_rank and index_head_dim "
            "(DSA over MLA) or indexer_head_dim (a QSA indexer over GQA attention)"
        )
    attn_kinds = {"full_attention", "sliding_attention", "chunked_attention"} - set(table)
    if qsa:
        attn_kinds.add("indexed_attention")
    if attn_kinds & set(kinds):
        heads = need_int(cfg, "num_attention_heads", model_type)
        # transformers' default when num_key_value_heads is null: num_attention_heads.
        kv_heads = opt_int(cfg, "num_key_value_heads", model_type, heads)
        kwargs = attention_kwargs(kv_heads, head_dim(cfg, model_type), dtype, opts)
        table.setdefault("full_attention", FullAttentionSpec(**kwargs))
        if qsa:
            # Qwen4ExpTextQSAIndexer: beside K and V, every token keeps its raw indexer
            # key, indexer_kv_heads (1) x indexer_head_dim in the model dtype
            # (cache.update_indexer); one page holds both, so the key rides as extra
            # bytes per token.
            index_bytes = (
                opt_int(cfg, "indexer_kv_heads", model_type, 1)
                * need_int(cfg, "indexer_head_dim", model_type)
                * dtype_bytes(dtype)
            )
            table["indexed_attention"] = FullAttentionSpec(
                **kwargs, scale_bytes_per_token=index_bytes
            )
            notes = (*notes, "indexed_attention layers keep K, V and a QSA indexer key per token")
        if "sliding_attention" in kinds:
            if window is None:
                # A sliding layer without a window attends to everything (transformers
                # passes sliding_window=None): plan it as full attention.
                table["sliding_attention"] = table["full_attention"]
                notes = (*notes, "sliding_attention layers have no sliding_window: planned full")
            else:
                table["sliding_attention"] = SlidingWindowSpec(window=window, **kwargs)
        if "chunked_attention" in kinds:
            chunk = cfg.get("attention_chunk_size", family.chunk_default)
            if chunk is None:
                raise ModelConfigError(
                    f"{model_type}: chunked_attention layers need attention_chunk_size"
                )
            table["chunked_attention"] = ChunkedLocalSpec(
                chunk_size=need_int(
                    {"attention_chunk_size": chunk}, "attention_chunk_size", model_type
                ),
                **kwargs,
            )
    if gdn:
        # The Qwen3-Next gated delta net, which every transformers model that spells
        # these linear_* fields uses: conv over q, k, v + a (v_heads, k_dim, v_dim) state.
        table["linear_attention"] = gdn_state(
            num_k_heads=need_int(cfg, "linear_num_key_heads", model_type),
            num_v_heads=need_int(cfg, "linear_num_value_heads", model_type),
            head_k_dim=need_int(cfg, "linear_key_head_dim", model_type),
            head_v_dim=need_int(cfg, "linear_value_head_dim", model_type),
            conv_kernel=need_int(cfg, "linear_conv_kernel_dim", model_type),
            **state_kwargs(cfg, dtype, opts),
        )
        notes = (*notes, "linear_attention layers read as gated delta nets (linear_* fields)")
    specs: list[Any] = [table.get(k) for k in kinds]
    if sparse is not None and "indexed_attention" in kinds and mla is not None:
        full = _indexer_flags(cfg, n, model_type)
        # Layers that reuse the previous layer's top-k keep no indexer keys.
        specs = [
            mla if k == "indexed_attention" and not full[i] else s
            for i, (k, s) in enumerate(zip(kinds, specs, strict=True))
        ]
    # Gemma3nTextConfig.kv_sharing_modes: the last num_kv_shared_layers layers reuse
    # the KV of the last earlier layer of their kind and hold no cache of their own.
    shared = cfg.get("num_kv_shared_layers") or 0
    if not isinstance(shared, int) or isinstance(shared, bool) or shared < 0:
        raise ModelConfigError(f"{model_type}: num_kv_shared_layers must be an int >= 0")
    if shared:
        first = n - shared
        if first == 0:
            # Gemma4UnifiedTextConfig.kv_sharing_modes: every layer "reuse"s (the
            # assistant / drafter models reuse their target model's cache).
            raise ModelConfigError(
                f"{model_type}: num_kv_shared_layers={shared} equals num_hidden_layers: every "
                "layer reuses KV another model computes (a drafter / assistant reading its "
                "target model's cache), so it keeps no cache of its own; plan the target model"
            )
        if first < 1 or set(kinds[first:]) - set(kinds[:first]):
            raise ModelConfigError(
                f"{model_type}: num_kv_shared_layers={shared} leaves no earlier layer of "
                f"each shared kind to reuse ({n} layers)"
            )
        notes = (*notes, f"layers {first}-{n - 1} reuse earlier layers' KV and hold no cache")
        specs = specs[:first]
    cached = [i for i, spec in enumerate(specs) if spec is not None]
    if not cached:
        raise ModelConfigError(f"{model_type}: no layer keeps a KV cache")
    if len(cached) < len(specs):
        notes = (*notes, "layers without attention (MLP-only) hold no cache")
    return parsed(cfg, [specs[i] for i in cached], [f"layers.{i}" for i in cached], notes=notes)


def parse(config: Mapping[str, Any], opts: ParseOptions, model_type: str) -> Parsed:
    cfg = text_config(config)
    notes: tuple[str, ...] = ()
    if cfg is not config:
        notes = (
            f"planned the text model ({cfg.get('model_type', 'text_config')}) of {model_type}",
        )
    return build(cfg, opts, model_type, FAMILIES[model_type], outer=config, notes=notes)


#: Older key names -> the standard ones, as the families' ``attribute_map``s alias them
#: (GPT-2 ``n_layer``; XGLMConfig ``num_layers`` / ``attention_heads`` / ``d_model``;
#: XLMConfig ``n_layers`` / ``n_heads`` / ``emb_dim``; TrOCRConfig ``decoder_layers`` /
#: ``decoder_attention_heads``; Kosmos2TextConfig ``layers`` / ``embed_dim``).
_ALIASES = {
    "num_hidden_layers": ("n_layer", "num_layers", "n_layers", "decoder_layers", "layers"),
    "num_attention_heads": (
        "n_head",
        "num_heads",
        "n_heads",
        "attention_heads",
        "decoder_attention_heads",
    ),
    "hidden_size": ("n_embd", "d_model", "emb_dim", "embed_dim"),
}

#: Layer kinds transformers' caches know that no hybridkv spec describes yet, and why
#: (``cache_utils.DYNAMIC_LAYER_TYPE_MAPPING``).
UNSUPPORTED_KINDS = {
    "hybrid": (
        "a layer holding both a linear-attention state and a full-attention KV cache "
        "(transformers' LinearAttentionAndFullAttentionLayer); hybridkv has no reader for "
        "this family's state shape"
    ),
    "hybrid_sliding": (
        "a layer holding both a linear-attention state and a sliding-window KV cache "
        "(LinearAttentionAndSlidingWindowAttentionLayer); hybridkv has no reader for this "
        "family's state shape"
    ),
    "compressed_sparse_attention": (
        "DeepSeek-V4 compressed attention: a sliding-window KV beside KV compressed "
        "compress_rates-fold per token and indexer keys; hybridkv has no compressed-KV spec kind"
    ),
    "heavily_compressed_attention": (
        "DeepSeek-V4 compressed attention: a sliding-window KV beside KV compressed "
        "compress_rates-fold per token; hybridkv has no compressed-KV spec kind"
    ),
    "reference_sliding_attention": (
        "a sliding window that also keeps every image and prompt token: its cache is "
        "bounded by the prompt, not the window, which no hybridkv spec expresses"
    ),
    "conv": "a short-convolution state whose shape only a family parser (lfm2) knows",
}

#: Families whose learned absolute positions bound the sequence to
#: ``max_position_embeddings``: the flag that chooses them, the value that means
#: learned, and the flag's default (TrOCRConfig.use_learned_position_embeddings = True;
#: XLMConfig.sinusoidal_embeddings = False).
_LEARNED_POSITIONS = {
    "trocr": ("use_learned_position_embeddings", True, True),
    "xlm": ("sinusoidal_embeddings", False, False),
}


def _learned_bound(cfg: Mapping[str, Any], model_type: str) -> int | None:
    rule = _LEARNED_POSITIONS.get(model_type)
    if rule is None or cfg.get("max_position_embeddings") is None:
        return None
    key, learned, default = rule
    if bool(cfg.get(key, default)) is not learned:
        return None
    return need_int(cfg, "max_position_embeddings", model_type)


def _standard_names(cfg: Mapping[str, Any]) -> tuple[Mapping[str, Any], list[str]]:
    """``cfg`` with standard key names filled from their aliases, and what was renamed."""
    out = dict(cfg)
    renamed = []
    for key, aliases in _ALIASES.items():
        if out.get(key) is not None:
            continue
        for alias in aliases:
            if isinstance(out.get(alias), int):
                out[key] = out[alias]
                renamed.append(f"{alias} as {key}")
                break
    if out.get("num_key_value_heads") is None and out.get("multi_query") is True:
        out["num_key_value_heads"] = 1
        renamed.append("multi_query as one KV head")
    return out, renamed


def parse_unknown(config: Mapping[str, Any], opts: ParseOptions, model_type: str) -> Parsed:
    """An unknown ``model_type`` read as a plain attention decoder, saying so."""
    cfg = text_config(config)
    if isinstance(config.get("encoder"), Mapping) and isinstance(config.get("decoder"), Mapping):
        raise ModelConfigError(
            "it is a composite of an encoder config and a decoder config whose cross "
            "attention is bounded by the encoder's input length, which only a family "
            "parser knows (t5, bart families, whisper); plan the checkpoint's own "
            "encoder-decoder config instead"
        )
    if cfg.get("is_encoder_decoder") or config.get("is_encoder_decoder"):
        raise ModelConfigError(
            "it is an encoder-decoder model (is_encoder_decoder): its decoder's cross "
            "attention is bounded by the encoder's input length, which only a family parser "
            "knows; encoder-decoder parsers exist for the t5 and bart families and whisper"
        )
    if cfg.get("vocab_size") is None:
        raise ModelConfigError(
            "it has no vocab_size (nor a text_config with one), so it is not read as a "
            "language model"
        )
    wrapped = cfg is not config
    cfg, renamed = _standard_names(cfg)
    inner = cfg.get("model_type")
    family = FAMILIES.get(inner, Family()) if isinstance(inner, str) else Family()
    assumed = [f"unknown model_type {model_type!r} read as an attention-only decoder"]
    if wrapped:
        assumed.append(f"planned its text model ({inner or 'text_config'})")
    if renamed:
        assumed.append("read " + ", ".join(renamed))
    if read_layer_kinds(cfg, model_type) is None:
        assumed.append(
            "no layer_types: every layer full attention"
            if family.kinds is _all_full
            else f"no layer_types: {inner}'s default layer pattern"
        )
    if cfg.get("num_key_value_heads") is None and cfg.get("kv_lora_rank") is None:
        assumed.append("no num_key_value_heads: one KV head per attention head")
    if cfg.get("head_dim") is None and cfg.get("kv_lora_rank") is None:
        assumed.append("no head_dim: hidden_size / num_attention_heads")
    bound = _learned_bound(cfg, model_type)
    if bound is not None:
        assumed.append(f"learned positions bound sequences to {bound} tokens")
    out = build(cfg, opts, model_type, family, outer=config, notes=tuple(assumed))
    return out if bound is None else dataclasses.replace(out, max_model_len=bound)
