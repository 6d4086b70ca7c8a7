"""Physical backing of an elastic plan: one torch byte tensor, every layer a strided view.

An elastic :class:`~hybridkv.planning.planner.MemoryPlan` (``layout="elastic"``) puts every
KV-cache group in one arena (``rust/core/src/arena.rs``): block ``b`` of group ``g`` is
bytes ``[base_g + b * page_g, base_g + (b + 1) * page_g)`` (``base_g``:
``plan.arena.bases[g]``, chosen so the group's pages tile its regions and floor span).
:class:`TorchArena` allocates those bytes once (CPU or CUDA) and hands out, per layer,
tensors of shape ``[(memory - base_g) // page_g, *block_shape]`` whose storage offset is
``base_g`` plus the layer's offset and whose block stride is the group's page (in elements):
plain strided views, the layout paged-attention kernels take (hybridkv's Triton
kernels; FlashAttention/FlashInfer-style ``[num_blocks, block_size, heads, head_dim]``
with an arbitrary block stride). Inside one page the group's layers lie one after
another (``page_g / num_layers`` bytes each), and inside a layer's share its tensors
(K then V, or conv then recurrent state) one after another, each aligned to its
element size. Memory moving between groups needs nothing here: the manager only hands
a group ids whose bytes lie in regions its pool owns, and a block is written before it
is read. Groups sharing a pool (equal pages, ``plan.arena.pool_of``) get views over the
same address space, block ``b`` at the same bytes for each: the pool hands an id to
one group at a time, so their views alias only bytes no other group holds then.

Needs ``torch`` (the ``kernels`` extra).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from hybridkv.errors import InvalidArgumentError


class TorchArena:
    """One tensor of ``plan.arena.memory_bytes`` bytes and the views over it.

    ``fill`` is the byte every cell starts as (``0xFF`` makes every float NaN, so a
    read of memory no step wrote shows up in the results).
    """

    def __init__(self, plan: Any, *, device: Any = "cpu", fill: int = 0xFF) -> None:
        import torch

        arena = getattr(plan, "arena", None)
        if arena is None:
            raise InvalidArgumentError("TorchArena needs an elastic plan (plan.arena is None)")
        if not 0 <= fill <= 255:
            raise InvalidArgumentError(f"fill must be a byte value, got {fill}")
        self.plan = plan
        self.memory_bytes = int(arena.memory_bytes)
        self.bytes = torch.full((self.memory_bytes,), fill, dtype=torch.uint8, device=device)

    def block_view(self, group: int, offset: int, block_shape: Sequence[int], dtype: Any) -> Any:
        """Group ``group``'s tensor at byte ``offset`` of every page: shape
        ``[num_blocks, *block_shape]``, block 0 at the group's base, block stride one
        page, the rest contiguous."""
        import torch

        g = self.plan.groups[group]
        page = int(g.page_size_bytes)
        bases = tuple(getattr(self.plan.arena, "bases", ()) or ())
        base = int(bases[group]) if bases else 0
        item = torch.empty((), dtype=dtype).element_size()
        need = math.prod(block_shape) * item
        if page % item or base % item or offset % item or offset < 0 or offset + need > page:
            raise InvalidArgumentError(
                f"group {group}: a {tuple(block_shape)} {dtype} tensor at offset {offset} "
                f"does not fit an aligned {page}-byte page at base {base}"
            )
        usable = self.memory_bytes // item * item
        typed = self.bytes[:usable].view(dtype)
        num_blocks = (self.memory_bytes - base) // page
        offset += base
        inner: list[int] = []
        step = 1
        for d in reversed(block_shape):
            inner.append(step)
            step *= int(d)
        stride = (page // item, *reversed(inner))
        return torch.as_strided(
            typed, (num_blocks, *(int(d) for d in block_shape)), stride, offset // item
        )

    def layer_views(
        self, group: int, layer: int, parts: Sequence[tuple[Sequence[int], Any]]
    ) -> list[Any]:
        """The tensors of the ``layer``-th layer of ``group`` (``parts``: block shape and
        dtype of each, laid out one after another in that layer's share of a page)."""
        import torch

        g = self.plan.groups[group]
        n = len(g.layers)
        if not 0 <= layer < n:
            raise InvalidArgumentError(f"group {group} has {n} layers, not layer {layer}")
        share = int(g.page_size_bytes) // n
        at = layer * share
        out = []
        for shape, dtype in parts:
            item = torch.empty((), dtype=dtype).element_size()
            at = -(-at // item) * item
            out.append(self.block_view(group, at, shape, dtype))
            at += math.prod(shape) * item
        if at > (layer + 1) * share:
            raise InvalidArgumentError(
                f"group {group} layer {layer}: its tensors need {at - layer * share} bytes, "
                f"more than its {share}-byte share of a page"
            )
        return out


__all__ = ["TorchArena"]
