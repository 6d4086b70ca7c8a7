"""The engine limits every planner checks first (block size, ``max_num_seqs``,
``max_model_len``, batched tokens, the Mamba cache mode), each refused with a
:class:`hybridkv.errors.PlanError` naming the bad value, and the refusal that means
"valid, but it does not fit" (:func:`hybridkv.planning.planner.plan_memory` adds advice
to it)."""

from __future__ import annotations

from dataclasses import dataclass

from hybridkv.errors import PlanError
from hybridkv.models.model_spec import ModelSpec
from hybridkv.models.specs import MAMBA_CACHE_MODES
from hybridkv.planning.plan import MemoryPlan

#: The most KV-cache memory a plan takes: byte counts are int64 everywhere below.
MAX_MEMORY_BYTES = (1 << 63) - 1


def _check_int(name: str, value: object, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise PlanError(f"{name} must be an int, got {value!r}")
    if value < minimum:
        raise PlanError(f"{name} must be >= {minimum}, got {value}")
    return value


@dataclass(frozen=True)
class _Limits:
    """The checked engine limits both planners share."""

    block_size: int
    max_num_seqs: int
    max_model_len: int
    max_num_batched_tokens: int
    mamba_cache_mode: str


def _check_common(
    model: object,
    block_size: object,
    max_num_seqs: object,
    max_model_len: object,
    max_num_batched_tokens: object,
    mamba_cache_mode: object,
) -> _Limits:
    if not isinstance(model, ModelSpec):
        raise PlanError(f"model must be a ModelSpec, got {type(model).__name__}")
    sizes = (
        _check_int("block_size", block_size),
        _check_int("max_num_seqs", max_num_seqs),
        _check_int("max_model_len", max_model_len),
        _check_int("max_num_batched_tokens", max_num_batched_tokens),
    )
    if not isinstance(mamba_cache_mode, str) or mamba_cache_mode not in MAMBA_CACHE_MODES:
        raise PlanError(
            f"mamba_cache_mode must be one of {MAMBA_CACHE_MODES}, got {mamba_cache_mode!r}"
        )
    bound = model.max_model_len
    if bound is not None and sizes[2] > bound:
        raise PlanError(
            f"max_model_len {sizes[2]} exceeds the {bound} positions {model.name!r} can run "
            f"(its learned position embeddings); plan with --max-model-len {bound} or less"
        )
    return _Limits(*sizes, mamba_cache_mode=mamba_cache_mode)


class _Unfit(PlanError):
    """The limits are valid but the pools do not fit: :func:`plan_memory` adds advice."""


def _limits_of(plan: MemoryPlan) -> _Limits:
    return _Limits(
        plan.block_size,
        plan.max_num_seqs,
        plan.max_model_len,
        plan.max_num_batched_tokens,
        plan.mamba_cache_mode,
    )
