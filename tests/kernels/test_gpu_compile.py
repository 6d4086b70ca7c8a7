"""The GPU configuration of every kernel compiles to PTX (no GPU needed, see gpu_compile.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def test_every_launch_compiles_for_hopper() -> None:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    script = Path(__file__).with_name("gpu_compile.py")
    proc = subprocess.run(
        [sys.executable, str(script), "90"], env=env, capture_output=True, text=True, timeout=600
    )
    lines = proc.stdout.splitlines()
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert lines[-1].endswith(", 0 failed")
    kernels = {line.split()[1] for line in lines if line.startswith("OK ")}
    assert kernels == {
        "paged_attention_kernel",
        "write_kv_kernel",
        "conv1d_varlen_kernel",
        "conv1d_state_kernel",
        "conv1d_update_kernel",
        "ssd_chunk_scan_kernel",
        "selective_state_update_kernel",
        "gated_delta_kernel",
    }
