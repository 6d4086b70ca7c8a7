"""Nemotron-H (and Nemotron Nano v2): one kind per layer, Mamba-2 or attention or none.

transformers >= 5 writes ``layers_block_type`` (alias ``layer_types``) of
"linear_attention" (Mamba-2), "full_attention", "mlp", "moe" and leaves
``num_hidden_layers`` null (the list decides); older configs give
``hybrid_override_pattern`` of ``M`` Mamba-2, ``*`` attention, ``-`` MLP, ``E`` MoE.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hybridkv.errors import ModelConfigError
from hybridkv.models.parsers.common import (
    Parsed,
    ParseOptions,
    full_attention,
    layer_count,
    mamba2_state,
    model_dtype,
    need_int,
    opt_int,
    parsed,
    read_layer_kinds,
    state_kwargs,
)

MODEL_TYPES = ("nemotron_h",)

#: ``hybrid_override_pattern`` characters (NemotronHConfig._pattern_to_list).
_PATTERN = {"M": "linear_attention", "*": "full_attention", "-": "mlp", "E": "moe"}
#: Layer kinds that hold no cache.
_NO_CACHE = ("mlp", "moe")


def _kinds(config: Mapping[str, Any], model_type: str) -> tuple[list[str], str]:
    kinds = read_layer_kinds(config, model_type)
    if kinds is not None:
        return kinds, "layers_block_type"
    pattern = config.get("hybrid_override_pattern")
    if not isinstance(pattern, str) or not pattern:
        raise ModelConfigError(
            f"{model_type}: needs layers_block_type (a list of layer kinds) or "
            f"hybrid_override_pattern (a string such as 'M-M*'), got neither"
        )
    out = []
    for i, ch in enumerate(pattern):
        if ch not in _PATTERN:
            raise ModelConfigError(f"{model_type}: unknown pattern character {ch!r} at layer {i}")
        out.append(_PATTERN[ch])
    return out, "hybrid_override_pattern"


def parse(config: Mapping[str, Any], opts: ParseOptions, model_type: str) -> Parsed:
    kinds, source = _kinds(config, model_type)
    # A stated count must agree with the list (transformers >= 5 writes null).
    layer_count(config, model_type, kinds, source=source)
    dtype = model_dtype(config)
    hidden = need_int(config, "hidden_size", model_type)
    heads = need_int(config, "num_attention_heads", model_type)
    head_size = opt_int(
        config,
        "head_dim",
        model_type,
        opt_int(config, "attention_head_dim", model_type, hidden // heads),
    )
    table: dict[str, Any] = {}
    if "full_attention" in kinds:
        table["full_attention"] = full_attention(
            need_int(config, "num_key_value_heads", model_type), head_size, dtype, opts
        )
    if "linear_attention" in kinds:
        # NemotronHConfig.mamba_ssm_cache_dtype defaults to "float32" (vLLM follows it).
        kw = state_kwargs(config, dtype, opts, ssm_default="float32")
        table["linear_attention"] = mamba2_state(
            num_heads=need_int(config, "mamba_num_heads", model_type),
            head_dim=need_int(config, "mamba_head_dim", model_type),
            # NemotronHConfig accepts the legacy mamba_n_groups / mamba_d_conv too.
            n_groups=opt_int(
                config, "n_groups", model_type, opt_int(config, "mamba_n_groups", model_type, 8)
            ),
            d_state=need_int(config, "ssm_state_size", model_type),
            d_conv=opt_int(
                config, "conv_kernel", model_type, opt_int(config, "mamba_d_conv", model_type, 4)
            ),
            **kw,
        )
    for i, kind in enumerate(kinds):
        if kind not in table and kind not in _NO_CACHE:
            raise ModelConfigError(f"{model_type}: unknown layer type {kind!r} at layer {i}")
    cached = [i for i, kind in enumerate(kinds) if kind in table]
    return parsed(
        config,
        [table[kinds[i]] for i in cached],
        [f"layers.{i}" for i in cached],
        notes=("MLP/MoE-only layers hold no cache and are not listed",),
    )
