"""Pure state-space models: every layer keeps one fixed-size state, nothing grows.

- ``mamba`` / ``falcon_mamba`` (Mamba v1): conv ``(expand * hidden, conv_kernel - 1)``
  + SSM ``(expand * hidden, state_size)``; MambaConfig / FalconMambaConfig defaults
  ``state_size`` 16, ``expand`` 2, ``conv_kernel`` 4 (``intermediate_size`` wins when
  given, as the model uses it).
- ``mamba2``: Mamba2Config defaults ``num_heads`` 128, ``head_dim`` 64, ``n_groups`` 8,
  ``state_size`` 128, ``expand`` 2, ``conv_kernel`` 4.

The SSM state keeps the model dtype unless ``mamba_ssm_cache_dtype`` names another
(vLLM's "auto").
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hybridkv.models.parsers.common import (
    Parsed,
    ParseOptions,
    mamba1_state,
    mamba2_state,
    model_dtype,
    need_int,
    opt_int,
    parsed,
    state_kwargs,
)

MODEL_TYPES = ("mamba", "falcon_mamba", "mamba2")


def parse(config: Mapping[str, Any], opts: ParseOptions, model_type: str) -> Parsed:
    n = need_int(config, "num_hidden_layers", model_type)
    hidden = need_int(config, "hidden_size", model_type)
    dtype = model_dtype(config)
    expand = opt_int(config, "expand", model_type, 2)
    inner = opt_int(config, "intermediate_size", model_type, expand * hidden)
    kw = state_kwargs(config, dtype, opts)
    if model_type == "mamba2":
        state = mamba2_state(
            num_heads=opt_int(config, "num_heads", model_type, 128),
            head_dim=opt_int(config, "head_dim", model_type, 64),
            n_groups=opt_int(config, "n_groups", model_type, 8),
            d_state=opt_int(config, "state_size", model_type, 128),
            d_conv=opt_int(config, "conv_kernel", model_type, 4),
            intermediate=expand * hidden,
            **kw,
        )
    else:
        state = mamba1_state(
            intermediate=inner,
            d_state=opt_int(config, "state_size", model_type, 16),
            d_conv=opt_int(config, "conv_kernel", model_type, 4),
            **kw,
        )
    return parsed(config, [state] * n, [f"layers.{i}.mixer" for i in range(n)])
