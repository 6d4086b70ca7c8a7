"""Host-memory tier: block payloads in this process's RAM under one byte budget.

With CUDA present (torch imported lazily) payloads live in pinned host memory so that
copies to and from the GPU can run asynchronously at full PCIe speed; otherwise they
are plain immutable ``bytes``. Capacity is ``budget // page_bytes`` blocks of a page
size, whatever the number of groups: all groups share one budget and one LRU.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from hybridkv.offload.keys import BlockKey
from hybridkv.offload.tier import ByteLRU, Payload, Tier


def cuda_available() -> bool:
    """True when torch is installed and sees a CUDA device.

    Importing torch takes seconds, so it is imported only when it already is or when an
    NVIDIA device node exists; a CPU-only host never pays for it.
    """
    if "torch" not in sys.modules and not os.path.exists("/dev/nvidiactl"):
        return False
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


class CpuTier(Tier):
    """In-memory LRU tier with a byte budget over payload bytes."""

    kind = "cpu"
    in_memory = True

    def __init__(self, budget_bytes: int, *, pin_memory: bool | None = None) -> None:
        super().__init__(budget_bytes)
        self.pin_memory = cuda_available() if pin_memory is None else bool(pin_memory)
        self._data: dict[BlockKey, Any] = {}

    def _copy_in(self, view: memoryview) -> Any:
        if not self.pin_memory:
            return (
                view.obj
                if isinstance(view.obj, bytes) and view.nbytes == len(view.obj)
                else (view.tobytes())
            )
        import torch

        buf = torch.empty(view.nbytes, dtype=torch.uint8, pin_memory=True)
        buf.numpy()[:] = np.frombuffer(view, dtype=np.uint8)
        return buf

    def _view(self, stored: Any) -> memoryview:
        if isinstance(stored, bytes):
            return memoryview(stored)
        return memoryview(stored.numpy()).toreadonly()

    def contains(self, keys: Sequence[BlockKey]) -> list[bool]:
        keys = self._checked_keys(keys)
        with self._lock:
            self.stats.lookups += len(keys)
            return [k in self._data for k in keys]

    def get(self, keys: Sequence[BlockKey]) -> list[memoryview | None]:
        keys = self._checked_keys(keys)
        out: list[memoryview | None] = []
        with self._lock:
            for key in keys:
                stored = self._data.get(key)
                if stored is None:
                    out.append(None)
                    continue
                out.append(self._record_hit(key, self._view(stored)))
        return out

    def put(
        self, items: Sequence[tuple[BlockKey, Payload]], *, want_evicted: bool = False
    ) -> list[tuple[BlockKey, memoryview]]:
        evicted: list[tuple[BlockKey, memoryview]] = []
        for key, view in self._checked_items(items):
            with self._lock:
                if self._lru.touch(key):
                    continue
                if not self._lru.fits(view.nbytes):
                    self.stats.rejected += 1
                    continue
            stored = self._copy_in(view)  # the copy runs outside the lock
            with self._lock:
                if self._lru.touch(key):
                    continue
                for victim, _ in self._lru.victims_for(view.nbytes):
                    old = self._data.pop(victim)
                    self.stats.evicted += 1
                    if want_evicted:
                        evicted.append((victim, self._view(old)))
                self._lru.add(key, view.nbytes)
                self._data[key] = stored
                self.stats.stored += 1
                self.stats.stored_bytes += view.nbytes
        return evicted

    def discard(self, keys: Iterable[BlockKey]) -> None:
        keys = self._checked_keys(keys)
        with self._lock:
            for key in keys:
                if self._lru.remove(key) is not None:
                    del self._data[key]

    def close(self) -> None:
        with self._lock:
            self._data.clear()
            self._lru = ByteLRU(self._lru.budget_bytes)

    def describe(self) -> str:
        pinned = ", pinned" if self.pin_memory else ""
        return f"cpu({self.budget_bytes} B{pinned})"
