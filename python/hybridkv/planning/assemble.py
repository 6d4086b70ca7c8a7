"""Sized groups to plan objects: one :class:`GroupPlan` per group, and the
:class:`MemoryPlan` that totals them (token capacity, concurrency, the physical token
limit) with vLLM's layout of the same memory beside it."""

from __future__ import annotations

from hybridkv.models.model_spec import ModelSpec
from hybridkv.models.specs import ChunkedLocalSpec, CrossAttentionSpec, SlidingWindowSpec, cdiv
from hybridkv.planning.grouping import _Group
from hybridkv.planning.limits import _Limits
from hybridkv.planning.plan import GroupPlan, MemoryPlan
from hybridkv.planning.vllm_layout import vllm_baseline


def _group_plan(
    index: int,
    group: _Group,
    block_size: int,
    num_blocks: int,
    sizing: str,
    *,
    floor_blocks: int = 0,
    bytes_: int | None = None,
) -> GroupPlan:
    spec = group.spec
    return GroupPlan(
        index=index,
        kind=spec.kind,
        layers=group.layers,
        spec=spec,
        block_size=block_size,
        page_size_bytes=group.page_size_bytes,
        num_blocks=num_blocks,
        bytes=num_blocks * group.page_size_bytes if bytes_ is None else bytes_,
        slot_address_space=num_blocks * block_size,
        grows=group.grows,
        window=spec.window if isinstance(spec, SlidingWindowSpec) else None,
        chunk_size=spec.chunk_size if isinstance(spec, ChunkedLocalSpec) else None,
        max_encoder_len=spec.max_encoder_len if isinstance(spec, CrossAttentionSpec) else None,
        max_blocks_per_request=None if group.grows else group.max_blocks_per_request,
        sizing=sizing,
        floor_blocks=floor_blocks,
    )


def _finish(
    model: ModelSpec,
    groups: list[GroupPlan],
    encoder_only: tuple[int, ...],
    limits: _Limits,
    *,
    memory_bytes: int,
    bounded_sizing: str,
    state_cache_slots: int = 0,
    state_checkpoint_tokens: int | None = None,
) -> MemoryPlan:
    block_size = limits.block_size
    max_num_seqs = limits.max_num_seqs
    max_model_len = limits.max_model_len
    growing = [g for g in groups if g.grows]
    bounded_bytes = sum(g.bytes for g in groups if not g.grows)
    growing_page = sum(g.page_size_bytes for g in growing)
    if growing:
        blocks = min(g.num_blocks for g in growing) - 1
        token_capacity = blocks * block_size
        concurrency = min(float(max_num_seqs), blocks / cdiv(max_model_len, block_size))
        per_token = growing_page / block_size
        room = memory_bytes - bounded_bytes - growing_page
        physical: float | None = room / per_token
    else:
        token_capacity = max_num_seqs * max_model_len
        concurrency = float(max_num_seqs)
        per_token = 0.0
        physical = None
    total = sum(g.bytes for g in groups)
    return MemoryPlan(
        groups=tuple(groups),
        encoder_only_layers=encoder_only,
        token_capacity=token_capacity,
        max_concurrency=concurrency,
        unused_bytes=memory_bytes - total,
        memory_bytes=memory_bytes,
        max_num_seqs=max_num_seqs,
        max_model_len=max_model_len,
        max_num_batched_tokens=limits.max_num_batched_tokens,
        block_size=block_size,
        mamba_cache_mode=limits.mamba_cache_mode,
        bounded_sizing=bounded_sizing,
        bounded_bytes=bounded_bytes,
        growing_bytes_per_token=per_token,
        physical_token_limit=physical,
        vllm_baseline=vllm_baseline(model, memory_bytes=memory_bytes, limits=limits),
        model=model,
        state_cache_slots=state_cache_slots,
        state_checkpoint_tokens=state_checkpoint_tokens,
    )
