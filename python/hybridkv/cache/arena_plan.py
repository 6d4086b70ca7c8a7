"""Planning the elastic arena: region size, floors, and what the growing groups get.

This mirrors the layout math of ``rust/core/src/arena.rs`` (where the mechanism and its
trade-offs are documented) so a plan can say, before any manager exists, exactly how
many blocks the growing groups hold and how many bytes no group can use:

- the arena is ``memory`` bytes; group ``g`` sees it from its base ``base_g`` as
  ``(memory - base_g) // page_g`` blocks, block ``b`` being bytes
  ``[base_g + b * page_g, base_g + (b + 1) * page_g)``;
- a null area of ``null_bytes`` holds block 0 of every group whose null block a
  kernel may read (attention kinds: released or padded table entries point at it);
  a state group's block 0, never read or written (a state kernel reads a checkpoint
  and writes a running state, never a null entry), may lie anywhere;
- groups whose pages and block sizes are equal share one pool (:func:`pool_classes`;
  the planner keeps a window whose floor it capped apart): one id space, so regions
  are owned by pools;
- a pool whose groups all have floors and none of whose null blocks is read (a state
  pool) holds its floor in a floor span: one region of exactly its floor pages,
  stacked down from the top in pool order, pinned to it, its base ``span_start mod
  page`` so its pages tile the span; every other pool's base is ``null_bytes mod
  page``;
- between the null area and the spans, the grid: regions of ``region_bytes`` (the
  first and last may be shorter), cut on page edges of the first pool without a span
  (pages from the null area) and of the first span's pool (that span lowered by under
  the gcd of the two pages so common edges exist; the first cut the latest one within
  a region of the null area); a group uses the ids lying wholly inside one region it
  owns;
- any other floor is granted grid regions, pool by pool in pool order, until the pool
  has the sum of its groups' floors: the lowest for a pool with a growing group, else
  the highest whole regions (holding as many of its ids as any grid region), then the
  highest partial ones; the growing pools share every other grid region.

:func:`choose_region_bytes` picks the region size that loses the fewest bytes of
token capacity (null area, grid floors rounded up to regions, region edges), then one
where a state pool's pages cover at least :data:`MIN_SPAN_FIT` of a full grid region,
on a tie the coarsest giving at least :data:`MIN_REGIONS` regions, among multiples of the
growing page (its pages then tile every full grid region), of the largest page and of
every page, no smaller than the largest page and giving at most :data:`MAX_REGIONS`
regions.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from hybridkv.errors import PlanError

#: Most regions an arena is cut into (the manager scans regions when memory moves).
MAX_REGIONS = 4096
#: Region-size candidates tried (multiples of the growing page).
CANDIDATES = 64
#: Among region sizes that give the same capacity, the coarsest giving at least this
#: many regions (see ``choose_region_bytes``).
MIN_REGIONS = 64

#: Among region sizes that give the same capacity, those where a state pool's whole
#: pages cover at least this fraction of a full grid region (``ArenaPlan.span_fit``).
MIN_SPAN_FIT = 0.95

I64 = npt.NDArray[np.int64]


@dataclass(frozen=True)
class ArenaPlan:
    """An elastic arena: its regions, floors and the growing groups' share.

    Regions belong to pools (``pool_of[g]``: group ``g``'s pool; groups at equal pages
    share one). ``floor_regions[p]``: regions granted to pool ``p`` at start (for the
    sum of its groups' floors).
    ``growing_blocks``: blocks every growing group holds at once when the growing
    groups own every region not granted to a floor. ``waste_bytes``: bytes no group can
    use in that state (null area + region edges); ``worst_waste_bytes``: the most any
    ownership can waste (every region owned by the group wasting most of it).
    ``elastic_bytes``: the memory not held for floors (the regions everyone shares).
    """

    memory_bytes: int
    region_bytes: int
    null_bytes: int
    num_regions: int
    page_bytes: tuple[int, ...]
    floor_blocks: tuple[int, ...]
    floor_regions: tuple[int, ...]
    growing_blocks: int
    elastic_bytes: int
    waste_bytes: int
    worst_waste_bytes: int
    #: Per group: its pool (:func:`pool_classes`); empty: one pool per group.
    pool_of: tuple[int, ...] = ()
    #: Per group: byte offset of its block 0 (block ``b`` is ``[base + b * page, ...)``).
    bases: tuple[int, ...] = ()
    #: Floor spans, lowest first: ``(pool, start, end)`` (the last regions, pinned).
    floor_spans: tuple[tuple[int, int, int], ...] = ()
    #: Per span pool, the fraction of the full grid regions' bytes its whole pages
    #: cover (what it gets of a region it takes beyond its floor); the lowest, 1.0
    #: without spans.
    span_fit: float = 1.0

    def to_dict(self) -> dict[str, Any]:
        """The JSON shape (``arena`` in ``hybridkv plan --json``)."""
        return {
            "region_bytes": self.region_bytes,
            "null_bytes": self.null_bytes,
            "num_regions": self.num_regions,
            "pool_of": list(self.pool_of or range(len(self.page_bytes))),
            "bases": list(self.bases or (0,) * len(self.page_bytes)),
            "floor_spans": [list(t) for t in self.floor_spans],
            "span_fit": self.span_fit,
            "floor_regions": list(self.floor_regions),
            "elastic_bytes": self.elastic_bytes,
            "waste_bytes": self.waste_bytes,
            "waste_fraction": self.waste_bytes / self.memory_bytes,
            "worst_waste_bytes": self.worst_waste_bytes,
            "worst_waste_fraction": self.worst_waste_bytes / self.memory_bytes,
        }


def _floors_do_not_fit(
    pool_of: Sequence[int], pool: int, blocks: int, nbytes: int, only: str
) -> PlanError:
    """The error for pool ``pool`` whose floor of ``blocks`` blocks cannot be placed."""
    who = [h for h, q in enumerate(pool_of) if q == pool]
    return PlanError(
        f"floors do not fit: group{'s' * (len(who) > 1)} "
        f"{', '.join(map(str, who))} need{'s' * (len(who) == 1)} {blocks} blocks "
        f"({nbytes} bytes) but only {only}"
    )


def _ids(starts: I64, ends: I64, page: int, base: int = 0) -> I64:
    """Per region: ids of a view of ``page``-byte pages from ``base`` lying wholly in
    it (block 0, the null block, never counts)."""
    lo = np.maximum(-(-(starts - base) // page), 1)
    hi = np.maximum((ends - base) // page, lo)
    out: I64 = hi - lo
    return out


def _common_edge(null: int, a: int, s: int, p: int) -> int:
    """The least ``x >= null`` with ``x = null (mod a)`` and ``x = s (mod p)``, or
    ``null`` when there is none (``arena.rs`` ``common_edge``)."""
    g = math.gcd(a, p)
    d = (s - null) % p
    if d % g:
        return null
    m = p // g
    k = (d // g) * pow(a // g, -1, m) % m if m > 1 else 0
    return null + k * a


def pool_classes(
    pages: Sequence[int],
    block_sizes: Sequence[int],
    kinds: Sequence[str],
    apart: Collection[int] = (),
) -> tuple[int, ...]:
    """Per group: its pool in the arena (``construct.rs`` ``page_classes``). Groups whose
    natural pages are equal (same bytes, same block size) share one pool, as every group
    does in vLLM's layout: one id space, one free queue, one prefix index keyed per
    group; no page is padded, they are equal already. State groups keep a pool each, and
    so do the groups in ``apart`` (the planner's capped windows:
    :mod:`hybridkv.planning.elastic`). Pools are numbered in the order of their first
    group."""
    alone = {int(g) for g in apart}
    out: list[int] = []
    for g, (p, b, k) in enumerate(zip(pages, block_sizes, kinds, strict=True)):
        same = next(
            (
                out[h]
                for h in range(g)
                if k != "state"
                and kinds[h] != "state"
                and g not in alone
                and h not in alone
                and pages[h] == p
                and block_sizes[h] == b
            ),
            None,
        )
        out.append(max(out, default=-1) + 1 if same is None else same)
    return tuple(out)


def layout_arena(
    memory_bytes: int,
    region_bytes: int,
    null_bytes: int,
    pages: Sequence[int],
    floors: Sequence[int],
    growing: Sequence[bool],
    pool_of: Sequence[int] | None = None,
    null_read: Sequence[bool] | None = None,
) -> ArenaPlan:
    """Lay out spans and grid, grant floors as the manager does and count what the
    growing groups get (``arena.rs`` ``Arena::with_roles``, ``construct.rs``).

    ``pages``, ``floors``, ``growing`` and ``null_read`` (default: every group) are per
    group; ``pool_of`` maps groups to pools (default: one each). Regions belong to
    pools: a pool's page is its groups' page, its floor the sum of theirs. A pool
    whose groups all have floors gets a floor span (in pool order, stacked down from
    the top); a pool with a growing group takes its floor regions from the bottom of
    the grid. Raises :class:`PlanError` when the floors don't fit.
    """
    pool_of = tuple(range(len(pages))) if pool_of is None else tuple(pool_of)
    read = tuple(null_read) if null_read is not None else (True,) * len(pages)
    npools = max(pool_of) + 1
    ppage = [0] * npools
    pfloor = [0] * npools
    bottom = [False] * npools
    ngrow = [0] * npools
    pread = [False] * npools
    for g, p in enumerate(pool_of):
        ppage[p] = pages[g]
        pfloor[p] += floors[g]
        bottom[p] = bottom[p] or floors[g] <= 0
        ngrow[p] += bool(growing[g])
        pread[p] = pread[p] or bool(read[g])
    if (
        null_bytes < 1
        or region_bytes < max(pages)
        or memory_bytes <= null_bytes
        or any(r and p > null_bytes for r, p in zip(read, pages, strict=True))
    ):
        raise PlanError(
            f"arena of {memory_bytes} bytes with regions of {region_bytes} and a null area of "
            f"{null_bytes} cannot hold pages of up to {max(pages)} bytes"
        )
    # Floor spans from the top; a pool whose null block is read keeps block 0 in the
    # null area (base <= null - page), lowering its span by under a page if needed.
    # The grid's pages tile from the null area for the first pool without a span (the
    # growing one); the first span is lowered by under gcd(its page, that page) bytes
    # so that some grid boundary lies on a page edge of both (``phase``).
    spanned = [pfloor[g] > 0 and not bottom[g] and not pread[g] for g in range(npools)]
    anchor = next((ppage[g] for g in range(npools) if not spanned[g]), None)
    bases = [null_bytes % p for p in ppage]
    spans: list[tuple[int, int, int]] = []
    top = memory_bytes
    phase = null_bytes
    period: int | None = None
    for g in range(npools):
        f, p = pfloor[g], ppage[g]
        if not spanned[g]:
            continue
        s = top - f * p
        if anchor is not None and not spans and s >= null_bytes:
            s -= (s - null_bytes) % math.gcd(anchor, p)
        if pread[g] and s % p > null_bytes - p:
            s -= s % p - (null_bytes - p)
        if s < null_bytes:
            raise _floors_do_not_fit(
                pool_of,
                g,
                f,
                f * p,
                f"{max(top - null_bytes, 0)} bytes lie between the null area and the other "
                f"floors of {memory_bytes} bytes",
            )
        bases[g] = s % p
        if anchor is not None and not spans:
            phase = _common_edge(null_bytes, anchor, s, p)
            period = math.lcm(anchor, p)
        spans.append((g, s, top))
        top = s
    # The grid: [null, top) cut at phase + i * region_bytes.
    c1 = null_bytes + (phase - null_bytes) % region_bytes
    c1 = c1 + region_bytes if c1 == null_bytes else c1
    # The latest common edge within one region of the null area (edges repeat every
    # ``period`` bytes): the first region as long as it can be.
    if period is not None and period <= region_bytes:
        c1 += (null_bytes + region_bytes - c1) // period * period
    ngrid = 1 + (-(-(top - c1) // region_bytes) if c1 < top else 0)
    gstarts = np.concatenate(
        [
            np.array([null_bytes], dtype=np.int64),
            c1 + np.arange(ngrid - 1, dtype=np.int64) * region_bytes,
        ]
    )
    starts = np.concatenate([gstarts, np.array([s for _, s, _ in spans[::-1]], dtype=np.int64)])
    ends = np.concatenate(
        [
            np.append(gstarts[1:], top),
            np.array([e for _, _, e in spans[::-1]], dtype=np.int64),
        ]
    )
    n = int(starts.size)
    ids = [_ids(starts, ends, ppage[g], bases[g]) for g in range(npools)]
    owner = np.full(n, -1, dtype=np.int64)
    floor_regions = [0] * npools
    for i, (g, _, _) in enumerate(spans[::-1]):
        owner[ngrid + i] = g
        floor_regions[g] = 1
    for g, f in enumerate(pfloor):
        if f <= 0 or floor_regions[g]:
            continue
        if bottom[g]:
            free = np.flatnonzero((owner < 0) & (ids[g] > 0))
        else:
            # Highest first, whole regions (the most ids) before partial ones (the
            # manager's order: rust/core/src/manager/elastic.rs, unowned_region).
            free = np.flatnonzero((owner < 0) & (ids[g] > 0))[::-1]
            whole = ids[g][:ngrid].max(initial=0)
            free = free[np.argsort(ids[g][free] < whole, kind="stable")]
        got = np.cumsum(ids[g][free])
        k = int(np.searchsorted(got, f)) + 1  # regions needed to reach f
        if got.size == 0 or got[-1] < f:
            have = int(got[-1]) if got.size else 0
            raise _floors_do_not_fit(
                pool_of,
                g,
                f,
                f * ppage[g],
                f"{have} fit in what the other floors leave of {memory_bytes} bytes",
            )
        owner[free[:k]] = g
        floor_regions[g] = k
    rest = owner < 0
    grow = [p for p in range(npools) if ngrow[p]]
    if len(grow) == 1:
        g = grow[0]
        # Beside the rest, the slack of the pool's own floor regions (its bounded groups
        # share its blocks), split between its growing groups.
        blocks = (int(ids[g][rest].sum()) + int(ids[g][owner == g].sum()) - pfloor[g]) // ngrow[g]
        owner[rest] = g
    elif grow:
        # Several growing pools split the rest region by region; each growing group
        # needs the same number of blocks, so count bytes usable by all and keep one
        # block of slack.
        span = ends - starts
        usable = span - np.max([span - ids[g] * ppage[g] for g in grow], axis=0)
        per_token_page = sum(ppage[g] * ngrow[g] for g in grow)
        blocks = max(int(usable[rest].sum()) // per_token_page - sum(ngrow), 0)
        worst = int(np.argmax([ppage[g] for g in grow]))
        owner[rest] = grow[worst]
    else:
        blocks = 0
    span = ends - starts
    full = span[:ngrid] == region_bytes
    edge = np.zeros(n, dtype=np.int64)
    for g in range(npools):
        mine = owner == g
        edge[mine] = span[mine] - ids[g][mine] * ppage[g]
    # A region can only be owned by a pool with an id in it (none: all of it is lost).
    worst_edge = np.max(
        [np.where(ids[g] > 0, span - ids[g] * ppage[g], 0) for g in range(npools)], axis=0
    )
    worst_edge = np.where(np.any([ids[g] > 0 for g in range(npools)], axis=0), worst_edge, span)
    worst_edge[ngrid:] = edge[ngrid:]  # a span only ever holds its own pool
    # Held for floors: whole floor regions and spans, but only the floor blocks
    # themselves in a pool with a growing group (its growing groups use the rest).
    floor_bytes = sum(
        pfloor[g] * ppage[g] if ngrow[g] else int(span[(owner == g) & ~rest].sum())
        for g in range(npools)
    )
    return ArenaPlan(
        memory_bytes=memory_bytes,
        region_bytes=region_bytes,
        null_bytes=null_bytes,
        num_regions=n,
        page_bytes=tuple(int(p) for p in pages),
        floor_blocks=tuple(int(f) for f in floors),
        floor_regions=tuple(floor_regions),
        growing_blocks=max(blocks, 0),
        elastic_bytes=memory_bytes - null_bytes - floor_bytes,
        waste_bytes=null_bytes + int(edge.sum()),
        worst_waste_bytes=null_bytes + int(worst_edge.sum()),
        pool_of=pool_of,
        bases=tuple(int(bases[p]) for p in pool_of),
        floor_spans=tuple((g, int(s), int(e)) for g, s, e in spans[::-1]),
        span_fit=min(
            (
                float((ids[g][:ngrid][full] * ppage[g]).sum() / span[:ngrid][full].sum())
                for g, _, _ in spans
                if full.any()
            ),
            default=1.0,
        ),
    )


def choose_region_bytes(
    memory_bytes: int,
    pages: Sequence[int],
    floors: Sequence[int],
    growing: Sequence[bool],
    pool_of: Sequence[int] | None = None,
    null_read: Sequence[bool] | None = None,
) -> ArenaPlan:
    """The arena layout that leaves the growing groups the most blocks (module docs).

    ``null_read[g]``: a kernel may read group ``g``'s null block, so the null area holds
    it (default: every group; a state group's is never read)."""
    grow_pages = [p for p, g in zip(pages, growing, strict=True) if g]
    unit = grow_pages[0] if grow_pages else max(pages)
    biggest = max(pages)
    read = [p for p, r in zip(pages, null_read or [True] * len(pages), strict=True) if r]
    null = max(read) if read else min(pages)
    if memory_bytes <= null:
        raise PlanError(
            f"memory_bytes {memory_bytes} does not exceed the arena's null area ({null} bytes)"
        )
    kmin = max(-(-biggest // unit), -(-memory_bytes // (MAX_REGIONS * unit)), 1)
    # Multiples of the growing page only (its pages tile every grid region, which
    # starts at the null area where its view's pages start): just above the largest
    # page, and about two or three of it. Floors no longer need the grid to fit their
    # pages: each bounded pool's floor is a span of exactly its pages.
    sizes = [k * unit for lo in (kmin, 2 * kmin, 3 * kmin) for k in range(lo, lo + CANDIDATES)]
    # Multiples of the largest page: a window pool's grid floors waste nothing at edges.
    sizes += [j * biggest for j in range(1, 17)]
    # A common multiple of every page wastes nothing at any edge.
    lcm = math.lcm(*pages)
    sizes += [j * lcm for j in range(1, 9) if j * lcm * 8 <= memory_bytes]
    # For each state page: common multiples with the growing page (the grid is phased
    # so both tile its full regions), and a few pages rounded up to the growing page.
    for p in {p for p, r in zip(pages, null_read or [True] * len(pages), strict=True) if not r}:
        both = math.lcm(unit, p)
        sizes += [j * both for j in range(1, 9) if j * both * 8 <= memory_bytes]
        sizes += [-(-m * p // unit) * unit for m in range(1, 33)]
    best: ArenaPlan | None = None
    best_key: tuple[int, bool, int, int] = (0, False, 0, 0)
    err: PlanError | None = None
    for size in sorted(set(sizes)):
        if size < biggest or -(-memory_bytes // size) > MAX_REGIONS:
            continue
        try:
            a = layout_arena(memory_bytes, size, null, pages, floors, growing, pool_of, null_read)
        except PlanError as e:
            err = err or e
            continue
        # On a tie (the same capacity and waste) the coarsest regions that still give
        # MIN_REGIONS, else the most regions: a move evicts a whole region's cached
        # blocks, so very fine regions move (and evict) often, very coarse ones rarely
        # empty (Qwen3-Next 16 GiB, whole bundled traces, regions of 79 / 158 / 632 MB:
        # chat hit 0.706 / 0.800 / 0.804, agentic 0.844 / 0.836 / 0.826).
        # Next, a state pool must get most of a grid region it takes as whole pages
        # (its checkpoints beyond its floor live there): Nemotron-Nano-9B-v2 at 32 GiB,
        # chat, with regions of 1.1 state pages (most holding none) hit 0.374; with
        # MIN_SPAN_FIT 0.9 / 0.95 / 1.0 (regions of 9 / 19 / 32 state pages) 0.779 /
        # 0.785 / 0.774 (0.783 before the spans, regions of 16).
        key = (
            a.growing_blocks * sum(grow_pages) - a.waste_bytes,
            a.span_fit >= MIN_SPAN_FIT,
            min(a.num_regions, MIN_REGIONS),
            size,
        )
        if best is None or key > best_key:
            best, best_key = a, key
    if best is None:
        assert err is not None
        raise err
    return best


__all__ = [
    "MAX_REGIONS",
    "MIN_REGIONS",
    "MIN_SPAN_FIT",
    "ArenaPlan",
    "choose_region_bytes",
    "layout_arena",
    "pool_classes",
]
