"""From a model's layers to KV-cache groups: layers with identical specs form one
group (encoder-only layers belong to none), each group either grows with the sequence or is
bounded, and a bounded group's pool gets the blocks its bound gives
(:mod:`hybridkv.models.window_bound` for windows, slots for state and cross attention)."""

from __future__ import annotations

from dataclasses import dataclass

from hybridkv.models.model_spec import ModelSpec
from hybridkv.models.specs import (
    ChunkedLocalSpec,
    EncoderOnlySpec,
    KVSpec,
    SlidingWindowSpec,
    StateSpec,
)
from hybridkv.models.window_bound import window_pool_blocks
from hybridkv.planning.limits import _Limits


@dataclass(frozen=True)
class _Group:
    """A group before sizing: its spec, layers, and how it is planned."""

    spec: KVSpec
    layers: tuple[int, ...]
    grows: bool
    page_size_bytes: int
    max_blocks_per_request: int | None


def group_layers(model: ModelSpec) -> tuple[list[tuple[KVSpec, tuple[int, ...]]], tuple[int, ...]]:
    """Layers with identical specs, in order of first appearance; and encoder-only layers."""
    order: dict[KVSpec, list[int]] = {}
    encoder_only: list[int] = []
    for i, spec in enumerate(model.layer_specs):
        if isinstance(spec, EncoderOnlySpec):
            encoder_only.append(i)
        else:
            order.setdefault(spec, []).append(i)
    return [(spec, tuple(layers)) for spec, layers in order.items()], tuple(encoder_only)


def _groups(model: ModelSpec, limits: _Limits) -> tuple[list[_Group], tuple[int, ...]]:
    grouped, encoder_only = group_layers(model)
    b, m = limits.block_size, limits.max_model_len
    out: list[_Group] = []
    for spec, layers in grouped:
        page = len(layers) * spec.page_size_bytes(b)
        per_req: int | None
        if isinstance(spec, StateSpec):
            per_req = spec.max_blocks_per_request(
                b,
                max_model_len=m,
                max_num_batched_tokens=limits.max_num_batched_tokens,
                mamba_cache_mode=limits.mamba_cache_mode,
            )
        elif isinstance(spec, SlidingWindowSpec | ChunkedLocalSpec) and spec.span >= m:
            # A window or chunk that covers max_model_len never slides: it grows like
            # full attention.
            per_req = None
        else:
            per_req = spec.max_blocks_per_request(
                b, max_model_len=m, max_num_batched_tokens=limits.max_num_batched_tokens
            )
        out.append(_Group(spec, layers, per_req is None, page, per_req))
    return out, encoder_only


def _bounded_blocks(group: _Group, limits: _Limits, bounded_sizing: str) -> tuple[int, str]:
    """Blocks (null excluded) of a bounded group's pool, and the sizing used."""
    spec = group.spec
    if isinstance(spec, SlidingWindowSpec | ChunkedLocalSpec):
        n = window_pool_blocks(
            spec.kind,
            spec.span,
            block_size=limits.block_size,
            max_num_seqs=limits.max_num_seqs,
            max_model_len=limits.max_model_len,
            max_num_batched_tokens=limits.max_num_batched_tokens,
            bounded_sizing=bounded_sizing,
        )
        return n, bounded_sizing
    per_req = group.max_blocks_per_request
    assert per_req is not None  # only growing groups have None
    return limits.max_num_seqs * per_req, "slots"


def _describe(group: _Group) -> str:
    return f"{group.spec.kind} group of {len(group.layers)} layers"
