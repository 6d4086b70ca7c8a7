"""Elastic token capacity against the physical limit (issue 11: within one block per
growing group), and the manager holding exactly what the plan says.

The physical limit is memory minus what bounded groups hold (their floors, and the
part of the null area their read null blocks take beyond the growing group's null
page, as in the static layout) over growing bytes per token; a pool of whole blocks
holds at most ``floor(limit / block_size)`` blocks of it, one of which is the growing
group's null block. The null area holds only the null blocks a kernel may
read (attention kinds); a state group's null block, never read or written, reaches past
it, and floors fill whole regions first, so a short top region goes to the growing
group.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from hybridkv.cache.arena_plan import ArenaPlan
from hybridkv.errors import HybridKVError
from hybridkv.manager import KVCacheManager, ManagerGroup
from hybridkv.models import load_model
from hybridkv.planning.planner import plan_memory

#: (model, GiB, blocks short of the whole-block limit beyond one null block per growing
#: group). A state pool's floor is one span of exactly its pages at the top and the grid
#: below is cut in multiples of the growing page from the null area, so incommensurate
#: pages cost nothing: Nemotron (state page 547.6 attention pages) lost 3 blocks at
#: region edges, Kimi-Linear 114 and Zamba2 49 before the spans.
RUNS = [
    ("qwen3-next-80b-a3b", 16, 0),
    ("qwen3-next-80b-a3b", 32, 0),
    ("nemotron-nano-9b-v2", 32, 0),
    ("kimi-linear-48b-a3b", 80, 0),
    ("bamba-9b", 32, 0),
    ("zamba2-2.7b", 32, 0),
    ("ling-3.0-flash", 32, 0),
    ("lfm2-1.2b", 80, 0),
    ("gpt-oss-20b", 8, 0),
    ("gpt-oss-20b", 16, 0),
    ("gpt-oss-20b", 32, 0),
    # Windows and chunks whose pages are larger than the growing page: their null page
    # fills the null area (bounded bytes), their floors take grid regions.
    ("gemma-3-27b-it", 16, 0),
    ("olmo-3-7b", 16, 0),
    ("llama-4-scout-17b-16e", 16, 0),
]


def _plan(name: str, gib: int) -> object:
    return plan_memory(
        load_model(name),
        memory_bytes=gib << 30,
        max_num_seqs=64,
        max_model_len=32768,
        max_num_batched_tokens=8192,
        state_checkpoint_tokens=16,
        layout="elastic",
    )


@pytest.mark.parametrize(("name", "gib", "edges"), RUNS)
def test_capacity_within_one_block_per_growing_group(name: str, gib: int, edges: int) -> None:
    plan = _plan(name, gib)
    bs = plan.block_size  # type: ignore[attr-defined]
    limit = plan.physical_token_limit  # type: ignore[attr-defined]
    grow = [g for g in plan.groups if g.grows]  # type: ignore[attr-defined]
    whole = int(limit // bs) * bs  # the limit in whole blocks
    assert plan.token_capacity <= limit  # type: ignore[attr-defined]
    assert plan.token_capacity == whole - bs * (len(grow) + edges)  # type: ignore[attr-defined]
    # Only attention null blocks sit in the null area.
    arena = plan.arena  # type: ignore[attr-defined]
    attn = [g.page_size_bytes for g in plan.groups if g.kind != "state"]  # type: ignore[attr-defined]
    assert arena.null_bytes == max(attn)


@pytest.mark.parametrize(
    ("name", "gib"),
    [("qwen3-next-80b-a3b", 32), ("gpt-oss-20b", 16), ("kimi-linear-48b-a3b", 80)],
)
def test_manager_holds_what_the_plan_says(name: str, gib: int) -> None:
    plan = _plan(name, gib)
    m = KVCacheManager(plan, enable_prefix_caching=True, hash_seed=0)
    arena = plan.arena  # type: ignore[attr-defined]
    grow = [g.index for g in plan.groups if g.grows]  # type: ignore[attr-defined]
    obtainable = m.obtainable_blocks()
    # A growing group reports its pool's blocks: in a pool shared with bounded groups
    # (equal pages), their floors too.
    pool_of = arena.pool_of or tuple(range(len(arena.floor_blocks)))
    shared = [
        sum(f for h, f in enumerate(arena.floor_blocks) if pool_of[h] == pool_of[g]) for g in grow
    ]
    assert [int(obtainable[g]) for g in grow] == [arena.growing_blocks + s for s in shared]
    info = m.arena_info()
    assert info is not None
    owners = list(info["owners"])  # type: ignore[index]
    for g, k in enumerate(arena.floor_regions):
        assert owners.count(g) == k
    present = m._core.present_blocks()
    for g, f in enumerate(arena.floor_blocks):
        assert present[g] >= f
    # The same layout: per pool its view's base and floor span, the same regions.
    assert info["num_regions"] == arena.num_regions  # type: ignore[index]
    bases = {pool_of[g]: b for g, b in enumerate(arena.bases)}
    assert list(info["bases"]) == [bases[p] for p in range(len(bases))]  # type: ignore[index]
    spans = [tuple(s) if s is not None else None for s in info["floor_spans"]]  # type: ignore[index]
    assert spans == [
        next(((s, e) for q, s, e in arena.floor_spans if q == p), None) for p in range(len(bases))
    ]
    assert owners[info["num_grid_regions"] :] == [q for q, _, _ in arena.floor_spans]  # type: ignore[index]
    assert info["worst_waste_bytes"] == arena.worst_waste_bytes  # type: ignore[index]


@dataclass(frozen=True)
class _Tiny:
    groups: tuple[ManagerGroup, ...]
    mamba_cache_mode: str
    arena: ArenaPlan


def _tiny(null: int, state_first: bool = True) -> _Tiny:
    pages = (40, 10) if state_first else (10, 40)
    kinds = ("state", "full_attention") if state_first else ("full_attention", "state")
    arena = ArenaPlan(
        memory_bytes=1000,
        region_bytes=80,
        null_bytes=null,
        num_regions=-(-1000 // 80) - null // 80,
        page_bytes=pages,
        floor_blocks=(2, 0) if state_first else (0, 2),
        floor_regions=(0, 0),
        growing_blocks=0,
        elastic_bytes=0,
        waste_bytes=0,
        worst_waste_bytes=0,
    )
    return _Tiny(tuple(ManagerGroup(k, 4, 1) for k in kinds), "align", arena)


def test_a_state_null_block_may_reach_past_the_null_area() -> None:
    # The state page (40 B) is larger than the null area (10 B): accepted, and the
    # state group's ids in regions start at 1.
    m = KVCacheManager(_tiny(10), enable_prefix_caching=True, hash_seed=0)
    m.check_invariants()
    assert m.arena_info()["null_bytes"] == 10  # type: ignore[index]


@pytest.mark.parametrize("state_first", [True, False])
def test_an_attention_null_block_must_lie_in_the_null_area(state_first: bool) -> None:
    plan = _tiny(10, state_first)
    bigger = _Tiny(
        plan.groups,
        plan.mamba_cache_mode,
        ArenaPlan(
            **{**plan.arena.__dict__, "page_bytes": tuple(p * 2 for p in plan.arena.page_bytes)}
        ),
    )
    with pytest.raises(HybridKVError, match="null_bytes 10 cannot hold the null block"):
        KVCacheManager(bigger, enable_prefix_caching=True, hash_seed=0)
