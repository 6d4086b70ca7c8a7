"""vLLM 0.33's runtime layout of the same memory, the baseline hybridkv is compared
with: its layer groups, its inflated block size, ONE shared pool
(:class:`hybridkv.planning.plan.VllmBaseline`), and that layout as a runnable
:class:`MemoryPlan` (``shared_pool=True``), from hybridkv's plan or from the model and
limits alone."""

from __future__ import annotations

from hybridkv.errors import PlanError
from hybridkv.models.model_spec import ModelSpec
from hybridkv.models.specs import (
    ChunkedLocalSpec,
    CrossAttentionSpec,
    KVSpec,
    SlidingWindowSpec,
    StateSpec,
    cdiv,
)
from hybridkv.models.window_bound import window_pool_blocks, window_request_blocks
from hybridkv.planning.grouping import group_layers
from hybridkv.planning.limits import _check_common, _check_int, _Limits, _limits_of
from hybridkv.planning.plan import GroupPlan, MemoryPlan, VllmBaseline

#: Smallest kernel block of vLLM's attention backends (FlashAttention: multiples of 16):
#: the granularity its hybrid block size is raised in.
VLLM_KERNEL_BLOCK_ALIGNMENT = 16


def _vllm_reserve_blocks(spec: KVSpec, block_size: int, limits: _Limits) -> tuple[int, int]:
    """For one vLLM group of a bounded spec: the most blocks one request holds, and the
    most all ``max_num_seqs`` requests hold at once (the tight bound of
    :mod:`hybridkv.models.window_bound` for windows); ``(0, 0)`` for growing specs."""
    s = limits.max_num_seqs
    if isinstance(spec, StateSpec):
        per = 2 if limits.mamba_cache_mode == "align" else 1
        return per, s * per
    if isinstance(spec, SlidingWindowSpec | ChunkedLocalSpec):
        if spec.span >= limits.max_model_len:
            return 0, 0
        per = window_request_blocks(
            spec.kind, spec.span, block_size, limits.max_model_len, limits.max_num_batched_tokens
        )
        pool = window_pool_blocks(
            spec.kind,
            spec.span,
            block_size=block_size,
            max_num_seqs=s,
            max_model_len=limits.max_model_len,
            max_num_batched_tokens=limits.max_num_batched_tokens,
            bounded_sizing="tight",
        )
        return per, pool
    if isinstance(spec, CrossAttentionSpec):
        per = cdiv(spec.max_encoder_len, block_size)
        return per, s * per
    return 0, 0


def vllm_baseline(model: ModelSpec, *, memory_bytes: int, limits: _Limits) -> VllmBaseline:
    """vLLM 0.33's runtime layout of ``memory_bytes`` for ``model`` (see
    :class:`VllmBaseline`; the rules follow ``vllm/platforms/interface.py``
    ``_align_hybrid_block_size`` and ``vllm/v1/core/kv_cache_planning.py``
    ``_get_kv_cache_groups_uniform_page_size`` / ``get_kv_cache_config_from_groups``)."""
    grouped, _ = group_layers(model)
    if not grouped:
        return VllmBaseline(None, None, None, 0, 0, None, reason="model has no cache layers")
    counts = [len(layers) for _, layers in grouped]
    group_size = min(counts)
    if max(counts) < 1.5 * group_size:
        group_size = max(counts)  # vLLM pads the few extra layers instead
    num_groups = sum(cdiv(c, group_size) for c in counts)
    token_specs = [s for s, _ in grouped if not isinstance(s, StateSpec)]
    state_page = max((s.state_bytes for s, _ in grouped if isinstance(s, StateSpec)), default=0)
    bs = limits.block_size
    mml = limits.max_model_len
    if not token_specs:
        page = state_page
        vllm_bs = mml
    else:
        growing = [s for s in token_specs if s.grows_with_sequence]
        # vLLM sizes the block from the model's own (full) attention page per token.
        per_token = (growing or token_specs)[0].bytes_per_token
        vllm_bs = bs
        if state_page:
            align = max(VLLM_KERNEL_BLOCK_ALIGNMENT, bs)
            vllm_bs = align * max(1, cdiv(state_page, align * per_token))
        pages = sorted({vllm_bs * s.bytes_per_token for s in token_specs})
        page = max(pages[-1], state_page)
        odd = [p for p in pages if page % p]
        if odd:
            return VllmBaseline(
                None,
                None,
                None,
                num_groups,
                group_size,
                None,
                reason=f"vLLM cannot unify page sizes {odd} with the largest page {page}",
            )
    num_blocks = memory_bytes // (page * group_size)
    vgroups: list[tuple[str, tuple[int, ...], int]] = []
    reserve = 0
    per_request = 0
    num_growing = 0
    for spec, layers in grouped:
        if isinstance(spec, StateSpec):
            gbs = vllm_bs if limits.mamba_cache_mode != "none" else mml
        else:
            gbs = page // spec.bytes_per_token
        n = cdiv(len(layers), group_size)
        r, held = _vllm_reserve_blocks(spec, gbs, limits)
        for i in range(n):
            vgroups.append((spec.kind, tuple(layers[i::n]), gbs))
            reserve += held
            per_request += r if r else cdiv(mml, gbs)
            num_growing += int(r == 0 and not isinstance(spec, StateSpec))
    usable = max(num_blocks - 1, 0)
    if num_growing:
        capacity = max(usable - reserve, 0) // num_growing * vllm_bs
    else:
        capacity = limits.max_num_seqs * mml
    boot = int(num_blocks / per_request * mml) if per_request else 0
    return VllmBaseline(
        token_capacity=capacity,
        block_size=vllm_bs,
        page_size_bytes=page,
        num_groups=num_groups,
        group_size=group_size,
        num_blocks=num_blocks,
        boot_log_token_capacity=boot,
        equal_split_token_capacity=num_blocks // num_groups * vllm_bs,
        groups=tuple(vgroups),
    )


def vllm_runtime_plan(plan: MemoryPlan) -> MemoryPlan:
    """vLLM 0.33's runtime layout of ``plan``'s memory as a runnable plan: one group per
    vLLM group (its layers, its inflated block size), every group with the shared pool's
    ``num_blocks``, ``shared_pool=True`` (build the manager with it: one id space, one
    LRU queue). ``token_capacity`` is :attr:`VllmBaseline.token_capacity`. Raises
    :class:`PlanError` where vLLM cannot lay the model out, where vLLM's start-up check
    refuses the memory (see :func:`vllm_runtime_plan_for`), or in ``mamba_cache_mode``
    ``all`` (vLLM caches state prefixes only in ``align``)."""
    return _vllm_runtime(
        plan.model,
        plan.vllm_baseline,
        _limits_of(plan),
        memory_bytes=plan.memory_bytes,
        encoder_only=plan.encoder_only_layers,
    )


def vllm_runtime_plan_for(
    model: ModelSpec,
    *,
    memory_bytes: int,
    max_num_seqs: int,
    max_model_len: int,
    max_num_batched_tokens: int,
    block_size: int = 16,
    mamba_cache_mode: str = "align",
) -> MemoryPlan:
    """:func:`vllm_runtime_plan` straight from the model and limits, without hybridkv's
    own plan: vLLM reserves no floors for bounded groups, so it starts where hybridkv's
    planner refuses (``max_num_seqs`` requests' states need not fit: vLLM admits what
    the pool holds and preempts the rest). What it does refuse is vLLM's start-up check
    (``check_enough_kv_cache_memory``): the memory, less one block for the null block,
    must hold one ``max_model_len`` request in every layer at once (full attention
    ``cdiv(max_model_len, block)`` pages per layer, a state layer 2 pages in align mode
    and 1 otherwise, windows their bound)."""
    limits = _check_common(
        model, block_size, max_num_seqs, max_model_len, max_num_batched_tokens, mamba_cache_mode
    )
    _check_int("memory_bytes", memory_bytes)
    vb = vllm_baseline(model, memory_bytes=memory_bytes, limits=limits)
    _, encoder_only = group_layers(model)
    return _vllm_runtime(model, vb, limits, memory_bytes=memory_bytes, encoder_only=encoder_only)


def _vllm_runtime(
    model: ModelSpec,
    vb: VllmBaseline,
    limits: _Limits,
    *,
    memory_bytes: int,
    encoder_only: tuple[int, ...],
) -> MemoryPlan:
    if vb.num_blocks is None or vb.block_size is None or vb.page_size_bytes is None:
        raise PlanError(f"vLLM cannot lay this model out: {vb.reason}")
    if limits.mamba_cache_mode == "all" and any(k == "state" for k, _, _ in vb.groups):
        raise PlanError(
            "vLLM 0.33 keeps Mamba prefix caches only in mamba_cache_mode 'align' (not 'all')"
        )
    specs = model.layer_specs
    mml = limits.max_model_len
    # vLLM's start-up check sums every layer's most for one request (its own padded
    # page) and compares with the memory less one pool block (the null block).
    need_pages = 0
    for _kind, layers, bs in vb.groups:
        per, _ = _vllm_reserve_blocks(specs[layers[0]], bs, limits)
        need_pages += len(layers) * (per or cdiv(mml, bs))
    block_bytes = vb.page_size_bytes * vb.group_size
    need = need_pages * vb.page_size_bytes
    if memory_bytes - block_bytes < need:
        raise PlanError(
            f"vLLM refuses to start: one max_model_len={mml} request needs {need} bytes of "
            f"KV cache in every layer at once ({need_pages} pages of {vb.page_size_bytes} "
            f"bytes), but memory_bytes {memory_bytes} less one {block_bytes}-byte block "
            f"leaves {memory_bytes - block_bytes}; raise --memory to at least "
            f"{need + block_bytes} bytes or lower --max-model-len"
        )
    pool_bytes = vb.num_blocks * vb.page_size_bytes * vb.group_size
    groups = []
    for i, (kind, layers, bs) in enumerate(vb.groups):
        spec = specs[layers[0]]
        grows = kind != "state" and _vllm_reserve_blocks(spec, bs, limits)[0] == 0
        groups.append(
            GroupPlan(
                index=i,
                kind=kind,
                layers=layers,
                spec=spec,
                block_size=bs,
                page_size_bytes=vb.page_size_bytes * vb.group_size,
                num_blocks=vb.num_blocks,
                bytes=pool_bytes,
                slot_address_space=vb.num_blocks * bs,
                grows=grows,
                window=spec.window if isinstance(spec, SlidingWindowSpec) else None,
                chunk_size=spec.chunk_size if isinstance(spec, ChunkedLocalSpec) else None,
                max_encoder_len=(
                    spec.max_encoder_len if isinstance(spec, CrossAttentionSpec) else None
                ),
                max_blocks_per_request=None,
                sizing="shared",
            )
        )
    growing = [g for g in groups if g.grows]
    growing_page = sum(g.page_size_bytes for g in growing)
    return MemoryPlan(
        groups=tuple(groups),
        encoder_only_layers=encoder_only,
        token_capacity=vb.token_capacity or 0,
        max_concurrency=min(
            float(limits.max_num_seqs),
            (vb.token_capacity or 0) // vb.block_size / cdiv(mml, vb.block_size),
        ),
        unused_bytes=memory_bytes - pool_bytes,
        memory_bytes=memory_bytes,
        max_num_seqs=limits.max_num_seqs,
        max_model_len=mml,
        max_num_batched_tokens=limits.max_num_batched_tokens,
        block_size=vb.block_size,
        mamba_cache_mode=limits.mamba_cache_mode,
        bounded_sizing="shared",
        bounded_bytes=0,
        growing_bytes_per_token=growing_page / vb.block_size if growing else 0.0,
        physical_token_limit=None,
        vllm_baseline=vb,
        model=model,
        shared_pool=True,
    )
