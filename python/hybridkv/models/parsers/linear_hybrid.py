"""Linear-attention hybrids: a fixed-size recurrent state in most layers, attention in a few.

- ``kimi_linear``: Kimi Delta Attention (KDA) + MLA. ``layer_types``, else
  ``linear_attn_config`` (``full_attn_layers`` / ``kda_layers``, 1-indexed), else
  KimiLinearConfig's default (full attention at ``i % 4 == 0``, ``i > 0``).
- ``bailing_hybrid``: the same KDA state (``head_dim`` x ``num_attention_heads``,
  ``short_conv_kernel_size``) + MLA; default: full every ``layer_group_size`` (6).
- ``minimax`` (and the remote-code ``minimax_text_01`` / ``minimax_m1``): lightning
  attention (one ``(heads, head_dim, head_dim)`` state) + full attention;
  ``layer_types``, else the legacy ``attn_type_list``, else MiniMaxConfig's alternation
  (even layers full).
- ``olmo_hybrid``: gated delta net + full attention; default: full at ``i % 4 == 3``.

State shapes and dtypes follow vLLM's ``MambaStateShapeCalculator`` /
``MambaStateDtypeCalculator``: KDA conv ``(q, k, v) = 3 * heads * head_dim`` channels x
``kernel - 1`` in the model dtype and a float32 recurrent state; lightning state in the
model dtype.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hybridkv.errors import ModelConfigError
from hybridkv.models.parsers.common import (
    Parsed,
    ParseOptions,
    config_attention_kwargs,
    gdn_state,
    head_dim,
    kv_dtype_kwargs,
    layer_count,
    model_dtype,
    need_int,
    opt_int,
    parsed,
    read_layer_kinds,
    specs_by_kind,
    ssm_dtype,
    state_kwargs,
    tp_split,
)
from hybridkv.models.specs import FullAttentionSpec, MLASpec, StateSpec

#: transformers' MiniMaxConfig, and the remote-code spellings of MiniMax-Text-01 / M1.
MINIMAX_TYPES = ("minimax", "minimax_text_01", "minimax_m1")
MODEL_TYPES = ("kimi_linear", "bailing_hybrid", *MINIMAX_TYPES, "olmo_hybrid")


def kda_state(
    *, num_heads: int, head_dim: int, conv_kernel: int, conv_dtype: str, ssm_dtype: str, tp: int
) -> StateSpec:
    """KDA state of one rank: conv ``(3 * heads * head_dim, kernel - 1)`` + recurrent
    ``(heads, head_dim, head_dim)``."""
    heads = tp_split(num_heads, tp, "linear attention heads", replicate=False)
    return StateSpec(
        shapes=((3 * heads * head_dim, conv_kernel - 1), (heads, head_dim, head_dim)),
        dtypes=(conv_dtype, ssm_dtype),
        family="kda",
    )


def _default_kinds(cfg: Mapping[str, Any], model_type: str, n: int) -> list[str]:
    if model_type == "kimi_linear":
        lac = cfg.get("linear_attn_config") or {}
        full, kda = lac.get("full_attn_layers"), lac.get("kda_layers")
        if isinstance(full, list) and isinstance(kda, list):
            out: list[str | None] = [None] * n
            for layer, kind in [(x, "full_attention") for x in full] + [
                (x, "linear_attention") for x in kda
            ]:
                if not isinstance(layer, int) or not 1 <= layer <= n:
                    raise ModelConfigError(
                        f"{model_type}: linear_attn_config layer {layer!r} is not in 1..{n}"
                    )
                out[layer - 1] = kind
            missing = [i for i, k in enumerate(out) if k is None]
            if missing:
                raise ModelConfigError(
                    f"{model_type}: linear_attn_config names no kind for layers {missing}"
                )
            return [str(k) for k in out]
        # KimiLinearConfig: "full_attention" if i and i % 4 == 0.
        return ["full_attention" if i and i % 4 == 0 else "linear_attention" for i in range(n)]
    if model_type == "bailing_hybrid":
        # BailingHybridConfig.layer_group_size = 6: full attention closes each group.
        every = opt_int(cfg, "layer_group_size", model_type, 6)
        return ["full_attention" if (i + 1) % every == 0 else "linear_attention" for i in range(n)]
    if model_type in MINIMAX_TYPES:
        # The original MiniMax-Text-01 / M1 configs spell the layers as attn_type_list
        # (0 = lightning, 1 = softmax), which transformers' conversion turns into
        # layer_types.
        legacy = cfg.get("attn_type_list")
        if legacy is not None:
            if not isinstance(legacy, list) or len(legacy) != n or set(legacy) - {0, 1}:
                raise ModelConfigError(
                    f"{model_type}: attn_type_list must list {n} values of 0 (lightning) "
                    f"or 1 (softmax attention)"
                )
            return ["full_attention" if x == 1 else "linear_attention" for x in legacy]
        # MiniMaxConfig: "full_attention" if (i + 1) % 2 else "linear_attention".
        return ["full_attention" if (i + 1) % 2 else "linear_attention" for i in range(n)]
    # OlmoHybridConfig: full attention at i % 4 == 3 (the last layer if none).
    kinds = ["full_attention" if i % 4 == 3 else "linear_attention" for i in range(n)]
    if "full_attention" not in kinds:
        kinds[-1] = "full_attention"
    return kinds


def _mla(cfg: Mapping[str, Any], model_type: str, dtype: str, opts: ParseOptions) -> MLASpec:
    return MLASpec(
        kv_lora_rank=need_int(cfg, "kv_lora_rank", model_type),
        qk_rope_head_dim=opt_int(cfg, "qk_rope_head_dim", model_type, 64),
        **kv_dtype_kwargs(dtype, opts),
    )


def _linear_state(
    cfg: Mapping[str, Any], model_type: str, dtype: str, opts: ParseOptions
) -> StateSpec:
    if model_type in ("kimi_linear", "bailing_hybrid"):
        if model_type == "kimi_linear":
            lac = cfg.get("linear_attn_config") or {}
            # KimiLinearConfig: linear_attn_config first, then linear_* (128, 32, 4).
            merged = {
                "linear_head_dim": lac.get("head_dim", cfg.get("linear_head_dim", 128)),
                "linear_num_heads": lac.get("num_heads", cfg.get("linear_num_heads", 32)),
                "linear_conv_kernel_dim": lac.get(
                    "short_conv_kernel_size", cfg.get("linear_conv_kernel_dim", 4)
                ),
            }
            d = need_int(merged, "linear_head_dim", model_type)
            h = need_int(merged, "linear_num_heads", model_type)
            k = need_int(merged, "linear_conv_kernel_dim", model_type)
        else:
            # BailingHybridConfig.__post_init__: linear_head_dim = head_dim (128),
            # linear_num_heads = num_attention_heads, linear_conv_kernel_dim =
            # short_conv_kernel_size (4); it then rewrites head_dim to qk_rope_head_dim,
            # so a config it saved is read through the linear_* keys first.
            d = opt_int(
                cfg, "linear_head_dim", model_type, opt_int(cfg, "head_dim", model_type, 128)
            )
            h = opt_int(
                cfg,
                "linear_num_heads",
                model_type,
                need_int(cfg, "num_attention_heads", model_type),
            )
            k = opt_int(
                cfg,
                "linear_conv_kernel_dim",
                model_type,
                opt_int(cfg, "short_conv_kernel_size", model_type, 4),
            )
        # vLLM's kda_state_dtype: the recurrent state is float32 unless set.
        return kda_state(
            num_heads=h,
            head_dim=d,
            conv_kernel=k,
            conv_dtype=dtype,
            ssm_dtype=ssm_dtype(cfg, "float32"),
            tp=opts.tp,
        )
    if model_type in MINIMAX_TYPES:
        heads = need_int(cfg, "num_attention_heads", model_type)
        size = head_dim(cfg, model_type)
        per_rank = tp_split(heads, opts.tp, "num_attention_heads", replicate=False)
        return StateSpec(
            shapes=((per_rank, size, size),),
            dtypes=(ssm_dtype(cfg, dtype),),
            family="lightning",
        )
    # olmo_hybrid: OlmoHybridConfig defaults the GDN sizes from the attention sizes.
    heads = need_int(cfg, "num_attention_heads", model_type)
    k_heads = opt_int(cfg, "linear_num_key_heads", model_type, heads)
    v_heads = opt_int(cfg, "linear_num_value_heads", model_type, heads)
    k_dim = opt_int(
        cfg,
        "linear_key_head_dim",
        model_type,
        int(0.75 * need_int(cfg, "hidden_size", model_type) / k_heads),
    )
    v_dim = opt_int(cfg, "linear_value_head_dim", model_type, 2 * k_dim)
    return gdn_state(
        num_k_heads=k_heads,
        num_v_heads=v_heads,
        head_k_dim=k_dim,
        head_v_dim=v_dim,
        conv_kernel=opt_int(cfg, "linear_conv_kernel_dim", model_type, 4),
        **state_kwargs(cfg, dtype, opts),
    )


def parse(config: Mapping[str, Any], opts: ParseOptions, model_type: str) -> Parsed:
    kinds = read_layer_kinds(config, model_type)
    n = layer_count(config, model_type, kinds)
    if kinds is None:
        kinds = _default_kinds(config, model_type, n)
    dtype = model_dtype(config)
    table: dict[str, Any] = {}
    if "full_attention" in kinds:
        if model_type in ("kimi_linear", "bailing_hybrid"):
            table["full_attention"] = _mla(config, model_type, dtype, opts)
        else:
            table["full_attention"] = FullAttentionSpec(
                **config_attention_kwargs(config, model_type, dtype, opts)
            )
    if "linear_attention" in kinds:
        table["linear_attention"] = _linear_state(config, model_type, dtype, opts)
    return parsed(config, specs_by_kind(kinds, table, model_type))
