"""Models as the KV cache sees them: :class:`ModelSpec`, built by hand or from a config."""

from __future__ import annotations

from hybridkv.models.model_spec import ModelSpec

__all__ = ["ModelSpec"]
