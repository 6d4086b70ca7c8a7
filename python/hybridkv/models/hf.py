"""Optional: read a config through ``transformers`` (when installed) before planning.

``transformers`` fills every missing key with its own defaults and writes current
spellings; :func:`resolve_config` returns that dict, so ``hybridkv plan --resolve
transformers`` plans what transformers would build. The built-in reader applies the
same defaults itself, so both give the same plan (a test checks every bundled config).
transformers is never a core dependency: without it this raises a clear error.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

from hybridkv.errors import ModelConfigError


def transformers_available() -> bool:
    """Whether ``transformers`` can be imported."""
    try:
        import transformers  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """``config`` as transformers builds and re-saves it (``AutoConfig.for_model``,
    ``to_dict``), or a :class:`ModelConfigError` naming why it cannot."""
    try:
        from transformers import AutoConfig
    except ImportError:
        raise ModelConfigError(
            "resolving a config through transformers needs `pip install 'hybridkv[hf]'` "
            "(transformers >= 5)"
        ) from None
    model_type = config.get("model_type")
    if not isinstance(model_type, str):
        raise ModelConfigError(f"a model config needs a model_type string, got {model_type!r}")
    kwargs = {k: v for k, v in config.items() if k != "model_type"}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            resolved = AutoConfig.for_model(model_type, **kwargs)
    except Exception as exc:  # transformers raises many kinds: report it as ours
        raise ModelConfigError(
            f"transformers cannot build a {model_type!r} config: {type(exc).__name__}: {exc}"
        ) from None
    out: dict[str, Any] = resolved.to_dict()
    return out
