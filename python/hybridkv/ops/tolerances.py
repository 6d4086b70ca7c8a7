"""The one table of numeric tolerances kernel outputs are held to (per output dtype).

Kernels and references compute in fp32; what differs is summation order, the chunked
vs token-by-token form of a scan, and the final rounding to the output dtype, so the
bounds are a few units in the last place of that dtype, scaled for accumulations.
"""

from __future__ import annotations

# dtype name -> (atol, rtol), checked as |a - b| <= atol + rtol * |b|
TOLERANCES: dict[str, tuple[float, float]] = {
    "float32": (1e-4, 1e-4),
    "float16": (2e-3, 2e-3),
    "bfloat16": (1.6e-2, 1.6e-2),
}


def tolerance(dtype: object) -> tuple[float, float]:
    """``(atol, rtol)`` for outputs of ``dtype`` (a ``torch.dtype`` or its name)."""
    name = str(dtype).removeprefix("torch.")
    return TOLERANCES[name]
