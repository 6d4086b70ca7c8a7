"""The store worker: runs the tier stack's writes on a background thread.

The scheduler's thread only snapshots a block's bytes and enqueues them; copying into
RAM, writing files and talking to Redis happen here, so a step never waits on disk or
the network. The queue is bounded in bytes: when the tiers fall behind, new stores are
dropped (counted) rather than blocking the step or growing memory without bound, which
costs only future hits, never correctness.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Sequence

from hybridkv.errors import InvalidArgumentError
from hybridkv.offload.keys import BlockKey
from hybridkv.offload.stack import TierStack
from hybridkv.offload.tier import Payload

log = logging.getLogger("hybridkv.offload")


class StoreWorker:
    """One daemon thread draining store batches into a :class:`TierStack`."""

    def __init__(self, stack: TierStack, *, max_pending_bytes: int = 1 << 30) -> None:
        if max_pending_bytes < 1:
            raise InvalidArgumentError("max_pending_bytes must be positive")
        self.stack = stack
        self.max_pending_bytes = max_pending_bytes
        self.pending_bytes = 0
        self.submitted_blocks = 0
        self.stored_blocks = 0
        self.dropped_blocks = 0
        self.failed_batches = 0
        self._jobs: deque[tuple[list[tuple[BlockKey, Payload]], int]] = deque()
        self._cond = threading.Condition()
        self._busy = False
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="hybridkv-offload", daemon=True)
        self._thread.start()

    def submit(self, items: Sequence[tuple[BlockKey, Payload]]) -> bool:
        """Queue blocks for storing; False (and counted as dropped) if the queue is full.

        The payloads must not change afterwards: pass snapshots (``bytes``), not views
        of memory the engine will overwrite.
        """
        batch = list(items)
        if not batch:
            return True
        nbytes = sum(memoryview(p).nbytes for _, p in batch)
        with self._cond:
            if self._closed:
                raise InvalidArgumentError("the store worker is closed")
            if self.pending_bytes + nbytes > self.max_pending_bytes:
                self.dropped_blocks += len(batch)
                return False
            self.pending_bytes += nbytes
            self.submitted_blocks += len(batch)
            self._jobs.append((batch, nbytes))
            self._cond.notify_all()
        return True

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._jobs and not self._closed:
                    self._cond.wait()
                if not self._jobs:
                    return
                batch, nbytes = self._jobs.popleft()
                self._busy = True
            try:
                self.stack.put(batch)
                ok = True
            except Exception:  # a tier bug must not kill the thread or the server
                log.exception("offload store of %d blocks failed", len(batch))
                ok = False
            with self._cond:
                self.pending_bytes -= nbytes
                if ok:
                    self.stored_blocks += len(batch)
                else:
                    self.failed_batches += 1
                self._busy = False
                self._cond.notify_all()

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until everything queued so far is stored; False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._jobs and not self._busy, timeout)

    def close(self, timeout: float | None = None) -> None:
        """Store what is queued, then stop the thread (idempotent)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(timeout)

    def stats(self) -> dict[str, int]:
        with self._cond:
            return {
                "submitted_blocks": self.submitted_blocks,
                "stored_blocks": self.stored_blocks,
                "dropped_blocks": self.dropped_blocks,
                "failed_batches": self.failed_batches,
                "pending_bytes": self.pending_bytes,
            }
