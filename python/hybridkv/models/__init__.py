"""Models as the KV cache sees them: :class:`ModelSpec`, built by hand or from a config.

``load_model(name_or_path, tp=1, kv_dtype=None)`` reads a bundled config by name
(``list_models()``) or any Hugging Face ``config.json``; ``model_from_config`` takes an
already parsed dict.
"""

from __future__ import annotations

from hybridkv.models.model_spec import ModelSpec
from hybridkv.models.registry import (
    list_models,
    load_model,
    model_from_config,
    model_source,
    supported_model_types,
)

__all__ = [
    "ModelSpec",
    "list_models",
    "load_model",
    "model_from_config",
    "model_source",
    "supported_model_types",
]
