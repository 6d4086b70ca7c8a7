"""What the launchers share: argument checks (each raising
:class:`~hybridkv.errors.InvalidArgumentError`), tile-size helpers and the plumbing
of kernel arguments common to several kernels."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from hybridkv.errors import InvalidArgumentError

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
INDEX_DTYPES = (torch.int32, torch.int64)


def interpreted(kernel: object) -> bool:
    """Whether ``kernel`` runs under Triton's CPU interpreter (``TRITON_INTERPRET=1``).

    The choice is made when triton decorates the kernel, so the kernel object is the
    truth, not the environment now.
    """
    return type(kernel).__name__ == "InterpretedFunction"


def require(ok: bool, message: str) -> None:
    """Raise :class:`InvalidArgumentError` with ``message`` unless ``ok``."""
    if not ok:
        raise InvalidArgumentError(message)


def next_pow2(n: int) -> int:
    """The smallest power of two >= ``n`` (and >= 1)."""
    return 1 << max(int(n) - 1, 0).bit_length()


def check_tensor(
    name: str,
    t: object,
    *,
    ndim: int,
    dtypes: Sequence[torch.dtype] = FLOAT_DTYPES,
    contiguous_last: bool = True,
) -> torch.Tensor:
    """Check rank, dtype and a unit-stride last dimension; return ``t`` typed."""
    require(isinstance(t, torch.Tensor), f"{name} must be a torch.Tensor, got {type(t).__name__}")
    assert isinstance(t, torch.Tensor)
    require(t.dim() == ndim, f"{name} must have {ndim} dims, got shape {tuple(t.shape)}")
    require(t.dtype in dtypes, f"{name} has dtype {t.dtype}, expected one of {list(dtypes)}")
    if contiguous_last and t.numel() > 0:
        require(t.stride(-1) == 1, f"{name} needs a contiguous last dimension")
    return t


def check_shape(name: str, t: torch.Tensor, shape: Sequence[int]) -> None:
    """Check that ``t`` has exactly ``shape``."""
    require(
        tuple(t.shape) == tuple(shape),
        f"{name} has shape {tuple(t.shape)}, expected {tuple(shape)}",
    )


def check_device(kernel: object, *tensors: torch.Tensor) -> None:
    """All tensors on one device, and CPU tensors only under the interpreter."""
    devices = {t.device for t in tensors}
    require(len(devices) == 1, f"tensors are on several devices: {sorted(map(str, devices))}")
    device = next(iter(devices))
    if device.type == "cpu":
        require(
            interpreted(kernel),
            "CPU tensors need Triton's interpreter: set TRITON_INTERPRET=1 before "
            "hybridkv.kernels (and triton) are imported",
        )


def check_slots(name: str, slots: torch.Tensor, n: int, num_slots: int) -> None:
    """Per-request slot ids: shape ``(n,)``, each ``< num_slots`` (negative = none)."""
    check_tensor(name, slots, ndim=1, dtypes=INDEX_DTYPES)
    check_shape(name, slots, (n,))
    if n:
        hi = int(slots.max())
        require(hi < num_slots, f"{name} holds slot {hi}, but the pool has {num_slots} slots")


def optional(*tensors: torch.Tensor | None) -> list[torch.Tensor]:
    """The tensors that are given (not ``None``), e.g. to pass to :func:`check_device`."""
    return [t for t in tensors if t is not None]


def check_slot_pair(
    src_slots: torch.Tensor, dst_slots: torch.Tensor | None, n: int, num_slots: int
) -> torch.Tensor:
    """Check the per-request source and destination state slots; return the destination
    slots (``dst_slots``, or ``src_slots`` when it is ``None``: update in place)."""
    dst = src_slots if dst_slots is None else dst_slots
    check_slots("src_slots", src_slots, n, num_slots)
    check_slots("dst_slots", dst, n, num_slots)
    check_slot_conflicts(src_slots, dst[:, None])
    return dst


def check_slot_conflicts(src: torch.Tensor, writes: torch.Tensor) -> None:
    """Refuse a launch in which a slot one request writes is read or written by another.

    ``src`` ``[n]``: each request's source slot; ``writes`` ``[n, m]``: the slots it
    writes (destination, mid-step checkpoints; negative: none). The kernels run the
    requests in parallel programs, so such a slot would be read before or after the
    write by chance. A request may write its own source: each program reads its source
    before writing anything.
    """
    n = src.shape[0]
    if n < 2:
        return
    owner = torch.arange(n, device=src.device)
    slots = torch.cat([src.long(), writes.flatten().long()])
    owners = torch.cat([owner, owner.repeat_interleave(writes.shape[1])])
    is_write = torch.cat(
        [
            torch.zeros(n, dtype=torch.bool, device=src.device),
            torch.ones_like(writes.flatten(), dtype=torch.bool),
        ]
    )
    used = slots >= 0
    slots, owners, is_write = slots[used], owners[used], is_write[used]
    if slots.numel() == 0:
        return
    uniq, inv = torch.unique(slots, return_inverse=True)
    lo = torch.full(uniq.shape, n, dtype=owners.dtype, device=src.device)
    hi = torch.full(uniq.shape, -1, dtype=owners.dtype, device=src.device)
    lo = lo.scatter_reduce(0, inv, owners, "amin")
    hi = hi.scatter_reduce(0, inv, owners, "amax")
    written = torch.zeros(uniq.shape, dtype=torch.bool, device=src.device)
    written = written.scatter_reduce(0, inv, is_write, "amax")
    bad = (lo != hi) & written
    if bool(bad.any()):
        k = int(torch.nonzero(bad)[0, 0])
        slot = int(uniq[k])
        mine = inv == k
        writer = int(owners[mine & is_write][0])
        other = int(owners[mine & (owners != writer)][0])
        raise InvalidArgumentError(
            f"state slot {slot} is written by request {writer} of this launch and also "
            f"read or written by request {other}: a slot a request writes must be no other "
            "request's source, destination or checkpoint"
        )


def query_lengths(query_start_loc: torch.Tensor, num_tokens: int) -> torch.Tensor:
    """Check ``query_start_loc`` (non-decreasing, from 0 to ``num_tokens``); lengths."""
    check_tensor("query_start_loc", query_start_loc, ndim=1, dtypes=INDEX_DTYPES)
    require(query_start_loc.numel() >= 1, "query_start_loc needs at least one entry")
    lens = query_start_loc[1:] - query_start_loc[:-1]
    require(int(query_start_loc[0]) == 0, "query_start_loc must start at 0")
    require(
        int(query_start_loc[-1]) == num_tokens,
        f"query_start_loc ends at {int(query_start_loc[-1])}, but there are {num_tokens} tokens",
    )
    require(bool((lens >= 0).all()), "query_start_loc must be non-decreasing")
    return lens


def check_checkpoints(
    slots: torch.Tensor | None,
    first: torch.Tensor | None,
    every: int | None,
    n: int,
    num_slots: int,
) -> bool:
    """Validate the optional mid-step state checkpoints of a prefill launcher.

    ``slots`` ``[n, m]`` (negative: skip), ``first`` ``[n]`` (>= 1 new tokens before
    checkpoint 0) and ``every`` (tokens between checkpoints) come all together or not at
    all. Returns whether they are given.
    """
    given = [slots is not None, first is not None, every is not None]
    if not any(given):
        return False
    require(all(given), "checkpoint_slots, checkpoint_first and checkpoint_every go together")
    assert slots is not None and first is not None and every is not None
    check_tensor("checkpoint_slots", slots, ndim=2, dtypes=INDEX_DTYPES)
    require(slots.shape[0] == n, f"checkpoint_slots has {slots.shape[0]} rows for {n} requests")
    check_tensor("checkpoint_first", first, ndim=1, dtypes=INDEX_DTYPES)
    check_shape("checkpoint_first", first, (n,))
    require(
        isinstance(every, int) and not isinstance(every, bool) and every >= 1,
        f"checkpoint_every must be a positive int, got {every!r}",
    )
    if n:
        require(int(first.min()) >= 1, "checkpoint_first must be >= 1")
    if slots.numel():
        hi = int(slots.max())
        require(hi < num_slots, f"checkpoint_slots holds slot {hi}, but the pool has {num_slots}")
    return True


def check_prefill_slots(
    query_start_loc: torch.Tensor,
    num_tokens: int,
    src_slots: torch.Tensor,
    dst_slots: torch.Tensor | None,
    num_slots: int,
    checkpoint_slots: torch.Tensor | None,
    checkpoint_first: torch.Tensor | None,
    checkpoint_every: int | None,
) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """The per-request arguments of a prefill launcher over state slots, checked:
    returns the requests' new-token counts (:func:`query_lengths`), their destination
    slots (:func:`check_slot_pair`) and whether checkpoints are given
    (:func:`check_checkpoints`)."""
    lens = query_lengths(query_start_loc, num_tokens)
    n = lens.shape[0]
    dst = check_slot_pair(src_slots, dst_slots, n, num_slots)
    has_ckpt = check_checkpoints(checkpoint_slots, checkpoint_first, checkpoint_every, n, num_slots)
    if has_ckpt and checkpoint_slots is not None and checkpoint_slots.shape[1]:
        assert checkpoint_first is not None and checkpoint_every is not None
        # Only checkpoints strictly inside the step are written.
        cols = torch.arange(checkpoint_slots.shape[1], device=checkpoint_slots.device)
        ends = checkpoint_first[:, None] + cols[None, :] * checkpoint_every
        written = torch.where(ends < lens.to(ends.dtype)[:, None], checkpoint_slots, -1)
        check_slot_conflicts(src_slots, torch.cat([dst.long()[:, None], written.long()], 1))
    return lens, dst, has_ckpt


def checkpoint_kernel_args(
    slots: torch.Tensor | None,
    first: torch.Tensor | None,
    every: int | None,
    placeholder: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, int, int, int]:
    """The checkpoint arguments of a state kernel, checked by :func:`check_checkpoints`:
    ``(slots, first, every, columns, row stride)``. Without checkpoints the pointers are
    ``placeholder`` (never read: the kernel's ``HAS_CKPT`` is off) and the rest inert."""
    if slots is None or first is None or every is None:
        return placeholder, placeholder, 1, 0, 0
    return slots, first, int(every), slots.shape[1], slots.stride(0)


def kv_cache_strides(key_cache: torch.Tensor, value_cache: torch.Tensor) -> tuple[int, ...]:
    """Block, slot and head strides of a paged K cache, then of its V cache (the
    order the KV write and paged attention kernels take them in)."""
    return (*key_cache.stride()[:3], *value_cache.stride()[:3])
