"""Store the K and V of new tokens into a paged cache at their slot mapping."""

# Triton reads a kernel parameter's annotation as a type specialization, so the
# parameters stay unannotated and the jit decorator is untyped.
# mypy: disable-error-code="no-untyped-def,untyped-decorator,misc"

from __future__ import annotations

import triton
import triton.language as tl

from hybridkv.kernels.common import cast_out


@triton.jit
def write_kv_kernel(
    key_ptr,
    value_ptr,
    key_cache_ptr,
    value_cache_ptr,
    slot_mapping_ptr,
    block_size,
    stride_kt,
    stride_kh,
    stride_vt,
    stride_vh,
    stride_kcb,
    stride_kcs,
    stride_kch,
    stride_vcb,
    stride_vcs,
    stride_vch,
    NUM_HEADS: tl.constexpr,
    HEAD_SIZE: tl.constexpr,
    HEADS_P2: tl.constexpr,
    HEAD_P2: tl.constexpr,
    INTERPRET: tl.constexpr,
):
    """One program per token: copy its ``[num_kv_heads, head_size]`` K and V rows.

    A negative slot marks a padding token: nothing is written for it.
    """
    tok = tl.program_id(0)
    slot = tl.load(slot_mapping_ptr + tok).to(tl.int64)
    if slot >= 0:
        block = slot // block_size
        offset = slot % block_size
        h = tl.arange(0, HEADS_P2)
        d = tl.arange(0, HEAD_P2)
        mask = (h[:, None] < NUM_HEADS) & (d[None, :] < HEAD_SIZE)
        k = tl.load(key_ptr + tok * stride_kt + h[:, None] * stride_kh + d[None, :], mask=mask)
        v = tl.load(value_ptr + tok * stride_vt + h[:, None] * stride_vh + d[None, :], mask=mask)
        kc = key_cache_ptr + block * stride_kcb + offset * stride_kcs
        vc = value_cache_ptr + block * stride_vcb + offset * stride_vcs
        kdt = key_cache_ptr.dtype.element_ty
        vdt = value_cache_ptr.dtype.element_ty
        tl.store(
            kc + h[:, None] * stride_kch + d[None, :],
            cast_out(k.to(tl.float32), kdt, INTERPRET),
            mask=mask,
        )
        tl.store(
            vc + h[:, None] * stride_vch + d[None, :],
            cast_out(v.to(tl.float32), vdt, INTERPRET),
            mask=mask,
        )
