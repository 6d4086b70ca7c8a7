"""Small helpers shared by the kernels."""

# Triton reads a kernel parameter's annotation as a type specialization, so the
# parameters stay unannotated and the jit decorator is untyped.
# mypy: disable-error-code="no-untyped-def,untyped-decorator,misc"

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def round_to_bf16(x):
    """Round fp32 ``x`` to the nearest bf16 value (ties to even), kept in fp32.

    Triton's CPU interpreter converts fp32 to bf16 by truncation, the GPU by
    rounding to nearest even; rounding first makes both give the same bits (the
    later conversion is then exact). NaN and inf are not expected in kernel outputs.
    """
    bits = x.to(tl.uint32, bitcast=True)
    bits = (bits + (((bits >> 16) & 1) + 0x7FFF)) & 0xFFFF0000
    return bits.to(tl.float32, bitcast=True)


@triton.jit
def cast_out(x, dtype: tl.constexpr, INTERPRET: tl.constexpr):
    """Convert an fp32 value to the output dtype, rounding to nearest like the GPU."""
    if INTERPRET and dtype == tl.bfloat16:
        x = round_to_bf16(x)
    return x.to(dtype)


@triton.jit
def softplus(x):
    """``log(1 + exp(x))``, linear above 20 like ``torch.nn.functional.softplus``."""
    return tl.where(x > 20.0, x, tl.log(1.0 + tl.exp(tl.minimum(x, 20.0))))


@triton.jit
def request_tokens(query_start_loc_ptr, req):
    """``(start, length)`` of request ``req``'s rows in the batch's token dimension."""
    start = tl.load(query_start_loc_ptr + req)
    return start, tl.load(query_start_loc_ptr + req + 1) - start


@triton.jit
def load_state(state_ptr, slot, stride_slot, offsets, mask, ROWS: tl.constexpr, COLS: tl.constexpr):
    """The ``[ROWS, COLS]`` tile at ``offsets`` of state slot ``slot``, in fp32; zeros
    when ``slot`` is negative (a sequence with no state yet)."""
    if slot >= 0:
        tile = tl.load(state_ptr + slot * stride_slot + offsets, mask=mask, other=0.0)
        tile = tile.to(tl.float32)
    else:
        tile = tl.zeros([ROWS, COLS], tl.float32)
    return tile


@triton.jit
def store_state(state_ptr, slot, stride_slot, offsets, mask, tile, INTERPRET: tl.constexpr):
    """Store fp32 ``tile`` at ``offsets`` of state slot ``slot`` in the state's dtype;
    nothing when ``slot`` is negative (the state is not kept)."""
    if slot >= 0:
        tl.store(
            state_ptr + slot * stride_slot + offsets,
            cast_out(tile, state_ptr.dtype.element_ty, INTERPRET),
            mask=mask,
        )


@triton.jit
def checkpoint_slot(ckpt_row_ptr, done, length, first, every, cols):
    """Where the state after ``done`` of a request's ``length`` new tokens goes, or -1.

    Checkpoint ``j`` is the state after ``first + j * every`` new tokens, kept only
    strictly inside the step (the final state has its own destination) and for
    ``j < cols``; ``ckpt_row_ptr`` points at the request's row of checkpoint slots.
    """
    j = (done - first) // every
    hit = (done >= first) & (done < length) & ((done - first) % every == 0) & (j < cols)
    return tl.load(ckpt_row_ptr + j, mask=hit, other=-1).to(tl.int64)
