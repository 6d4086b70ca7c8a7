"""Achieved memory bandwidth of hybridkv's decode kernels on a GPU.

- Decode paged attention: batch 64 x 8192-token contexts, 32 query / 8 KV heads of 128,
  bf16, block size 16, block tables of shuffled (non-contiguous) block ids. Bytes
  counted: the K and V pages read (queries and outputs are negligible).
- State updates, batch 64: Mamba-2 ``selective_state_update`` (80 heads x 64 x 128,
  Mamba-2-2.7B-like) and the gated-delta-net decode step (32 value heads, 128 x 128,
  Qwen3-Next-like), fp32 states read and written in place. Bytes counted: the state
  read plus the state written.

Each kernel is first checked against its PyTorch reference on a small case, then timed
with CUDA events (median of ``--iters`` after warm-up). The table gives GB/s and the
fraction of the GPU's datasheet peak (when the device is in the table below) and of a
measured device-to-device copy.

Without a GPU (or without torch/triton) it says so and measures nothing; exit code 0.

Run: ``python benches/bench_kernels.py [--batch 64] [--context 8192] [--iters 50]``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections.abc import Callable
from typing import Any

# Datasheet HBM bandwidth in bytes/s, matched against torch's device name (first hit).
PEAK_BANDWIDTH: tuple[tuple[str, float], ...] = (
    ("H200", 4.8e12),
    ("GH200", 4.0e12),
    ("H100 NVL", 3.9e12),
    ("H100 PCIe", 2.0e12),
    ("H100", 3.35e12),  # SXM5 (HBM3)
    ("A100-SXM4-80GB", 2.039e12),
    ("A100 80GB PCIe", 1.935e12),
    ("A100", 1.555e12),  # 40 GB parts
    ("L40S", 0.864e12),
    ("L4", 0.3e12),
)


def peak_bandwidth(name: str) -> float | None:
    """Datasheet bandwidth (bytes/s) of the GPU named ``name``, when it is listed."""
    for key, bw in PEAK_BANDWIDTH:
        if key in name:
            return bw
    return None


def cuda_time(torch: Any, fn: Callable[[], object], iters: int) -> float:
    """Median seconds per call of ``fn`` over ``iters`` timed calls after warm-up."""
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    times: list[float] = []
    for _ in range(iters):
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1e-3)
    return statistics.median(times)


def check(torch: Any, name: str, got: Any, want: Any) -> None:
    """Exit with an error unless ``got`` matches ``want`` within its dtype's tolerance."""
    from hybridkv.ops.tolerances import tolerance

    atol, rtol = tolerance(got.dtype)
    if not torch.allclose(got.float().cpu(), want.float().cpu(), atol=atol, rtol=rtol):
        err = (got.float().cpu() - want.float().cpu()).abs().max().item()
        raise SystemExit(f"{name}: kernel disagrees with its reference (max error {err:.3g})")


def bench_attention(
    torch: Any, batch: int, context: int, iters: int, dev: str = "cuda"
) -> tuple[float, float]:
    from hybridkv import ops
    from hybridkv.ops import reference

    heads, kv_heads, hs, bs = 32, 8, 128, 16
    dt = torch.bfloat16
    g = torch.Generator(device="cpu").manual_seed(0)

    def case(b: int, ctx: int) -> tuple[Any, ...]:
        per = -(-ctx // bs)
        nb = b * per + 1
        ids = (torch.randperm(nb - 1, generator=g) + 1).to(torch.int32).view(b, per)
        kc = torch.randn(nb, bs, kv_heads, hs, generator=g, dtype=torch.float32).to(dt)
        vc = torch.randn(nb, bs, kv_heads, hs, generator=g, dtype=torch.float32).to(dt)
        q = torch.randn(b, heads, hs, generator=g, dtype=torch.float32).to(dt)
        seq = torch.full((b,), ctx, dtype=torch.int32)
        qsl = torch.arange(b + 1, dtype=torch.int32)
        return q, kc, vc, ids, seq, qsl

    small = case(2, 300)
    got = ops.paged_attention(*(t.to(dev) for t in small))
    check(torch, "paged_attention", got, reference.paged_attention(*small))

    q, kc, vc, table, seq, qsl = (t.to(dev) for t in case(batch, context))
    out = torch.empty_like(q)

    def run() -> object:
        return ops.paged_attention(
            q, kc, vc, table, seq, qsl, out=out, max_query_len=1, check_indices=False
        )

    t = cuda_time(torch, run, iters)
    nbytes = 2 * batch * context * kv_heads * hs * kc.element_size()
    return t, nbytes / t


def check_and_time_state_op(
    torch: Any,
    name: str,
    op: Callable[..., Any],
    ref: Callable[..., Any],
    case: Callable[[int], tuple[Any, ...]],
    batch: int,
    iters: int,
    dev: str,
) -> float:
    """Check ``op`` against ``ref`` on a 3-request ``case`` (outputs and the state, the
    first argument, both updated in place), then time it on a ``batch``-request case."""
    small = case(3)
    dev_args = [t.to(dev, copy=True) for t in small]
    got = op(*dev_args)
    want = ref(*small)
    check(torch, name, got, want)
    check(torch, f"{name} state", dev_args[0], small[0])
    args = [t.to(dev) for t in case(batch)]
    return cuda_time(torch, lambda: op(*args), iters)


def bench_mamba(torch: Any, batch: int, iters: int, dev: str = "cuda") -> tuple[float, float]:
    from hybridkv import ops
    from hybridkv.ops import reference

    heads, p, n = 80, 64, 128
    g = torch.Generator(device="cpu").manual_seed(1)

    def case(b: int) -> tuple[Any, ...]:
        state = torch.randn(b + 1, heads, p, n, generator=g)
        x = torch.randn(b, heads, p, generator=g).bfloat16()
        dt = torch.randn(b, heads, generator=g).bfloat16()
        a = -torch.rand(heads, generator=g) - 0.5
        bm = torch.randn(b, 1, n, generator=g).bfloat16()
        cm = torch.randn(b, 1, n, generator=g).bfloat16()
        d = torch.randn(heads, generator=g)
        slots = torch.arange(1, b + 1)
        return state, x, dt, a, bm, cm, d, d.clone(), slots

    t = check_and_time_state_op(
        torch,
        "selective_state_update",
        ops.selective_state_update,
        reference.selective_state_update,
        case,
        batch,
        iters,
        dev,
    )
    nbytes = 2 * batch * heads * p * n * 4
    return t, nbytes / t


def bench_gdn(torch: Any, batch: int, iters: int, dev: str = "cuda") -> tuple[float, float]:
    from hybridkv import ops
    from hybridkv.ops import reference

    hk, hv, d = 16, 32, 128
    g = torch.Generator(device="cpu").manual_seed(2)

    def case(b: int) -> tuple[Any, ...]:
        state = torch.randn(b + 1, hv, d, d, generator=g) * 0.1
        q = torch.randn(b, hk, d, generator=g).bfloat16()
        k = torch.randn(b, hk, d, generator=g).bfloat16()
        v = torch.randn(b, hv, d, generator=g).bfloat16()
        a = torch.randn(b, hv, generator=g).bfloat16()
        bb = torch.randn(b, hv, generator=g).bfloat16()
        a_log = torch.randn(hv, generator=g) * 0.5
        dt_bias = torch.randn(hv, generator=g)
        return state, q, k, v, a, bb, a_log, dt_bias, torch.arange(1, b + 1)

    def ref(
        state: Any, q: Any, k: Any, v: Any, a: Any, b: Any, a_log: Any, bias: Any, slots: Any
    ) -> Any:
        qsl = torch.arange(q.shape[0] + 1, dtype=torch.int32)  # one token per request
        return reference.gated_delta_rule(state, q, k, v, a, b, a_log, bias, qsl, slots)

    t = check_and_time_state_op(
        torch, "gated_delta_decode", ops.gated_delta_decode, ref, case, batch, iters, dev
    )
    nbytes = 2 * batch * hv * d * d * 4
    return t, nbytes / t


def copy_bandwidth(torch: Any, iters: int) -> float:
    """Measured device-to-device copy bandwidth (bytes read + written per second)."""
    src = torch.empty(1 << 30, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    t = cuda_time(torch, lambda: dst.copy_(src), iters)
    return float(2 * src.numel() / t)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--context", type=int, default=8192)
    ap.add_argument("--iters", type=int, default=50)
    args = ap.parse_args(argv)
    try:
        import torch
        import triton  # noqa: F401
    except ImportError as e:
        print(f"bench_kernels: the 'kernels' extra is not installed ({e}); nothing measured.")
        return 0
    if not torch.cuda.is_available():
        print(
            "bench_kernels: no GPU present (torch.cuda.is_available() is False): nothing "
            "measured. The kernels are tested on CPU through Triton's interpreter "
            "(tests/kernels); bandwidth needs a GPU."
        )
        return 0

    from rich.console import Console
    from rich.table import Table

    name = torch.cuda.get_device_name()
    peak = peak_bandwidth(name)
    copy_bw = copy_bandwidth(torch, args.iters)
    rows = [
        (
            f"decode paged attention (bf16, {args.batch} x {args.context} ctx, 32/8 heads x 128)",
            *bench_attention(torch, args.batch, args.context, args.iters),
        ),
        (
            f"Mamba-2 selective_state_update (fp32 state, {args.batch} x 80 x 64 x 128)",
            *bench_mamba(torch, args.batch, args.iters),
        ),
        (
            f"gated delta net decode (fp32 state, {args.batch} x 32 x 128 x 128)",
            *bench_gdn(torch, args.batch, args.iters),
        ),
    ]
    peak_txt = f"{peak / 1e9:,.0f} GB/s datasheet" if peak else "datasheet peak unknown"
    table = Table(title=f"{name}: {peak_txt}, device copy {copy_bw / 1e9:,.0f} GB/s")
    for col in ("kernel", "time (µs)", "GB/s", "% of peak", "% of copy"):
        table.add_column(col, justify="left" if col == "kernel" else "right")
    for label, t, bw in rows:
        table.add_row(
            label,
            f"{t * 1e6:,.1f}",
            f"{bw / 1e9:,.0f}",
            f"{100 * bw / peak:.0f}%" if peak else "-",
            f"{100 * bw / copy_bw:.0f}%",
        )
    Console().print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
