"""Shared pieces of the kernel tests: tolerances, slot assignment, comparisons."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
from hybridkv.ops.tolerances import tolerance
from hypothesis import strategies as st

DTYPES = (torch.float32, torch.float16, torch.bfloat16)
dtypes = st.sampled_from(DTYPES)


def assert_close(actual: torch.Tensor, expected: torch.Tensor, what: str = "") -> None:
    """Hold ``actual`` to the tolerance of its dtype (``hybridkv.ops.tolerances``)."""
    atol, rtol = tolerance(actual.dtype)
    assert actual.dtype == expected.dtype, what
    assert not torch.isnan(actual).any(), f"{what}: NaN in kernel output"
    torch.testing.assert_close(actual, expected, atol=atol, rtol=rtol, msg=lambda m: f"{what}: {m}")


def check_state_op(
    kernel: Callable[[torch.Tensor], torch.Tensor],
    ref: Callable[[torch.Tensor], torch.Tensor],
    state: torch.Tensor,
    what: str,
    *,
    exact_state: bool = False,
) -> None:
    """Run a state-updating op as ``kernel(state)`` and ``ref(state)``, each on its own
    copy of ``state``: the outputs must agree (:func:`assert_close`), and so must the
    updated states (bit for bit when ``exact_state``)."""
    s_k, s_r = state.clone(), state.clone()
    out = kernel(s_k)
    expected = ref(s_r)
    assert_close(out, expected, f"{what} out")
    if exact_state:
        assert torch.equal(s_k, s_r), f"{what} state"
    else:
        assert_close(s_k, s_r, f"{what} state")


class Draw:
    """Seeded random test inputs, all drawn in order from one generator."""

    def __init__(self, seed: int) -> None:
        self.generator = torch.Generator().manual_seed(seed)

    def normal(self, *shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Standard normal values (drawn in fp32), converted to ``dtype``."""
        return torch.randn(*shape, generator=self.generator).to(dtype)

    def uniform(self, *shape: int) -> torch.Tensor:
        """Uniform fp32 values in ``[0, 1)``."""
        return torch.rand(*shape, generator=self.generator)


def token_rows(
    inputs: Mapping[str, torch.Tensor], keys: Sequence[str], num_tokens: int, start: int, stop: int
) -> list[torch.Tensor]:
    """``inputs[k]`` for each of ``keys``, cut to token rows ``start:stop`` where it has
    one row per token (``num_tokens`` rows); per-head parameters pass whole."""
    return [inputs[k][start:stop] if inputs[k].shape[0] == num_tokens else inputs[k] for k in keys]


@st.composite
def slot_pairs(draw: st.DrawFn, n: int, num_slots: int) -> tuple[list[int], list[int]]:
    """Per request a source slot (or -1: fresh) and a destination slot (or -1: drop).

    Destinations may equal their own source but never another request's source, as
    the kernels require; ids come from a shuffled pool so they are non-contiguous.
    """
    perm = draw(st.permutations(list(range(num_slots))))
    src, dst = [], []
    for r in range(n):
        s = perm[r] if draw(st.booleans()) or r == 0 else -1
        choice = draw(st.sampled_from(["same", "other", "drop"]))
        if choice == "same" and s >= 0:
            d = s
        elif choice == "drop":
            d = -1
        else:
            d = perm[n + r]
        src.append(s)
        dst.append(d)
    return src, dst


@st.composite
def checkpoint_args(
    draw: st.DrawFn, src: list[int], dst: list[int], num_slots: int
) -> dict[str, object]:
    """Mid-step checkpoint keyword arguments (or none), one distinct slot per
    (request, checkpoint) that no other request reads or writes.

    A checkpoint slot may be the request's own source, as the manager hands out in mode
    ``all`` when a step starts mid-block and crosses that block's end (the source
    block's entry then gets the state at its end); ``first`` then often lands within
    the conv window (fewer new tokens before it than ``width - 1``).
    """
    if not draw(st.booleans()):
        return {}
    n = len(src)
    free = [s for s in range(num_slots) if s not in set(src) | set(dst)]
    cols = draw(st.integers(1, 3))
    every = draw(st.integers(1, 6))
    picked = draw(st.permutations(free))[: n * cols]
    slots = [
        [picked[r * cols + j] if draw(st.booleans()) else -1 for j in range(cols)] for r in range(n)
    ]
    for r in range(n):
        if src[r] >= 0 and draw(st.booleans()):
            slots[r][draw(st.integers(0, cols - 1))] = src[r]
    first = [draw(st.integers(1, 8)) for _ in range(n)]
    return {
        "checkpoint_slots": torch.tensor(slots, dtype=torch.int64),
        "checkpoint_first": torch.tensor(first, dtype=torch.int64),
        "checkpoint_every": every,
    }


def offsets(lengths: list[int]) -> torch.Tensor:
    """``query_start_loc`` for ragged ``lengths`` (int32)."""
    out = [0]
    for n in lengths:
        out.append(out[-1] + n)
    return torch.tensor(out, dtype=torch.int32)


@dataclass(frozen=True)
class PrefillBatch:
    """A prefill step over state slots: each request's new-token count, and the
    launchers' ``query_start_loc``, source / destination slots and checkpoint keywords."""

    lengths: list[int]
    qsl: torch.Tensor
    src: torch.Tensor
    dst: torch.Tensor
    checkpoints: dict[str, object]

    @property
    def num_tokens(self) -> int:
        """New tokens of all requests together (rows of the token-major inputs)."""
        return sum(self.lengths)


@st.composite
def prefill_batches(draw: st.DrawFn, n: int, max_len: int, num_slots: int) -> PrefillBatch:
    """``n`` requests of 0 to ``max_len`` new tokens (:func:`slot_pairs`,
    :func:`checkpoint_args` over ``num_slots`` slots)."""
    lengths = draw(st.lists(st.integers(0, max_len), min_size=n, max_size=n))
    src, dst = draw(slot_pairs(n, num_slots))
    checkpoints = draw(checkpoint_args(src, dst, num_slots))
    return PrefillBatch(
        lengths, offsets(lengths), torch.tensor(src), torch.tensor(dst), checkpoints
    )


@st.composite
def own_source_batches(draw: st.DrawFn, n: int, max_len: int, num_slots: int) -> PrefillBatch:
    """A prefill step in which every request that has a source slot and at least two
    new tokens writes a mid-step checkpoint into that very slot, as the manager hands
    out in mode ``all`` when a step starts mid-block and crosses that block's end.

    Steps are short (1 to ``max_len`` tokens; pass about the conv width so that many
    have fewer new tokens than ``width - 1``: the final state then still needs the
    source's old inputs, which is where a kernel that stores the checkpoint before
    reading the source goes wrong). Other checkpoint columns get slots no other
    request reads or writes, or none.
    """
    lengths = draw(st.lists(st.integers(1, max_len), min_size=n, max_size=n))
    src, dst = draw(slot_pairs(n, num_slots))
    if not any(s >= 0 and ln >= 2 for s, ln in zip(src, lengths, strict=True)):
        lengths[0] = max(lengths[0], 2)  # request 0 always has a source
    free = [s for s in range(num_slots) if s not in set(src) | set(dst)]
    cols = draw(st.integers(1, 3))
    every = draw(st.integers(1, 4))
    picked = draw(st.permutations(free))[: n * cols]
    slots = [
        [picked[r * cols + j] if draw(st.booleans()) else -1 for j in range(cols)] for r in range(n)
    ]
    first = []
    for r in range(n):
        if src[r] >= 0 and lengths[r] >= 2:
            # Column j, the state after `at` new tokens (strictly inside the step); a
            # column that cannot end there (first >= 1) falls back to column 0.
            j = draw(st.integers(0, cols - 1))
            at = draw(st.integers(1, lengths[r] - 1))
            if at - j * every < 1:
                j = 0
            first.append(at - j * every)
            slots[r][j] = src[r]
        else:
            first.append(draw(st.integers(1, 8)))
    checkpoints: dict[str, object] = {
        "checkpoint_slots": torch.tensor(slots, dtype=torch.int64),
        "checkpoint_first": torch.tensor(first, dtype=torch.int64),
        "checkpoint_every": every,
    }
    return PrefillBatch(
        lengths, offsets(lengths), torch.tensor(src), torch.tensor(dst), checkpoints
    )
