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
