"""Compile every kernel for a GPU exactly as the launchers configure it there.

Run as a script in a process WITHOUT ``TRITON_INTERPRET``: the launchers are called
with small CPU tensors, the kernel launch is intercepted (no GPU needed) and the
captured arguments and compile-time constants are compiled ahead of time for
``sm_<arch>`` with Triton's bundled ``ptxas``. This checks what the interpreter
cannot: that the GPU tile choices (``tl.dot`` shapes >= 16, native bf16/fp16 dots)
lower to PTX. Prints one line per launch: ``OK <kernel> ...`` or ``FAIL <kernel> ...``.
"""

from __future__ import annotations

import os
import sys
from typing import Any

assert os.environ.get("TRITON_INTERPRET", "0") != "1", "run without the interpreter"

import hybridkv.ops as ops  # noqa: E402
import torch  # noqa: E402
import triton  # noqa: E402
from hybridkv.ops import attention, gated_delta, kv_cache, mamba2  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402
from triton.runtime.jit import JITFunction  # noqa: E402

captured: list[tuple[Any, tuple[Any, ...], dict[str, Any]]] = []


def _capture(self: Any, *args: Any, grid: Any, warmup: bool, **kwargs: Any) -> None:
    captured.append((self, args, kwargs))


JITFunction.run = _capture  # type: ignore[method-assign]
for mod in (attention, gated_delta, kv_cache, mamba2):
    mod.check_device = lambda *a, **k: None  # type: ignore[attr-defined]

TYPES = {
    torch.float32: "fp32",
    torch.float16: "fp16",
    torch.bfloat16: "bf16",
    torch.int32: "i32",
    torch.int64: "i64",
}


def _signature(fn: Any, args: tuple[Any, ...], consts: dict[str, Any]) -> dict[str, str]:
    sig: dict[str, str] = {}
    for name, value in zip(fn.arg_names, [*args, *(None,) * len(fn.arg_names)], strict=False):
        if name in consts:
            sig[name] = "constexpr"
        elif isinstance(value, torch.Tensor):
            sig[name] = "*" + TYPES[value.dtype]
        elif isinstance(value, float):
            sig[name] = "fp32"
        else:
            sig[name] = "i32"
    return sig


def _launch_all() -> None:
    t = 5
    for dtype, hs, group, qlen, kw in [
        (torch.bfloat16, 128, 4, 1, {}),
        (torch.bfloat16, 64, 2, 5, {}),
        (torch.float16, 256, 1, 3, {"sliding_window": 8}),
        (torch.float32, 128, 8, 1, {"chunk_size": 32}),
    ]:
        q = torch.zeros(qlen * 2, 2 * group, hs, dtype=dtype)
        kc = torch.zeros(9, 16, 2, hs, dtype=dtype)
        table = torch.tensor([[1, 2], [3, 4]], dtype=torch.int32)
        qsl = torch.tensor([0, qlen, 2 * qlen], dtype=torch.int32)
        ops.paged_attention(q, kc, kc, table, torch.tensor([20, 9], dtype=torch.int32), qsl, **kw)
    kv = torch.zeros(t, 2, 128, dtype=torch.bfloat16)
    ops.write_kv(
        kv,
        kv,
        torch.zeros(4, 16, 2, 128, dtype=torch.bfloat16),
        torch.zeros(4, 16, 2, 128, dtype=torch.bfloat16),
        torch.arange(t),
    )
    slots = torch.tensor([1, 2])
    qsl = torch.tensor([0, 2, t], dtype=torch.int32)
    for dtype in (torch.bfloat16, torch.float32):
        x = torch.zeros(t, 320, dtype=dtype)
        st = torch.zeros(4, 3, 320, dtype=dtype)
        w = torch.zeros(320, 4, dtype=dtype)
        ops.causal_conv1d_prefill(x, st, w, w[:, 0].contiguous(), qsl, slots)
        ops.causal_conv1d_update(x[:2], st, w, None, slots)
        xs = torch.zeros(t, 8, 64, dtype=dtype)
        dt = torch.zeros(t, 8, dtype=dtype)
        bc = torch.zeros(t, 1, 128, dtype=dtype)
        a = torch.zeros(8)
        state = torch.zeros(4, 8, 64, 128)
        ops.ssd_prefill(state, xs, dt, a, bc, bc, a, a, qsl, slots)
        ops.selective_state_update(state, xs[:2], dt[:2], a, bc[:2], bc[:2], a, a, slots)
        qk = torch.zeros(t, 2, 128, dtype=dtype)
        v = torch.zeros(t, 4, 128, dtype=dtype)
        g = torch.zeros(t, 4, dtype=dtype)
        ops.gated_delta_rule(torch.zeros(4, 4, 128, 128), qk, qk, v, g, g, a[:4], a[:4], qsl, slots)
    # Mid-step checkpoints (mamba_cache_mode "all").
    ck = {
        "checkpoint_slots": torch.tensor([[3], [-1]]),
        "checkpoint_first": torch.tensor([1, 1]),
        "checkpoint_every": 16,
    }
    x = torch.zeros(t, 320, dtype=torch.bfloat16)
    w = torch.zeros(320, 4, dtype=torch.bfloat16)
    ops.causal_conv1d_prefill(
        x, torch.zeros(4, 3, 320, dtype=torch.bfloat16), w, None, qsl, slots, **ck
    )
    xs = torch.zeros(t, 8, 64, dtype=torch.bfloat16)
    dt = torch.zeros(t, 8, dtype=torch.bfloat16)
    bc = torch.zeros(t, 1, 128, dtype=torch.bfloat16)
    a = torch.zeros(8)
    ops.ssd_prefill(torch.zeros(4, 8, 64, 128), xs, dt, a, bc, bc, a, a, qsl, slots, **ck)
    qk = torch.zeros(t, 2, 128, dtype=torch.bfloat16)
    v = torch.zeros(t, 4, 128, dtype=torch.bfloat16)
    g = torch.zeros(t, 4, dtype=torch.bfloat16)
    ops.gated_delta_rule(
        torch.zeros(4, 4, 128, 128), qk, qk, v, g, g, a[:4], a[:4], qsl, slots, **ck
    )


def main(arch: int) -> int:
    _launch_all()
    failures = 0
    for fn, args, consts in captured:
        name = fn.fn.__name__
        try:
            src = ASTSource(fn, _signature(fn, args, consts), consts)
            triton.compile(src, target=GPUTarget("cuda", arch, 32))
            print(f"OK {name} {sorted(consts.items())}")
        except Exception as e:  # report every failing launch, not just the first
            failures += 1
            print(f"FAIL {name} {sorted(consts.items())}: {type(e).__name__}: {e}")
    print(f"{len(captured)} launches, {failures} failed")
    return 1 if failures or not captured else 0


if __name__ == "__main__":
    sys.exit(main(int(sys.argv[1]) if len(sys.argv) > 1 else 90))
