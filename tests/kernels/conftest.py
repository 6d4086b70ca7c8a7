"""Kernel tests run on CPU through Triton's interpreter.

The interpreter is chosen when triton decorates a kernel, so the variable must be set
before ``hybridkv.kernels`` (and triton) are imported: here, at collection time.
"""

from __future__ import annotations

import os

os.environ["TRITON_INTERPRET"] = "1"
