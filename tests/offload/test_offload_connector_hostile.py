"""Hostile arguments to the offload connector and the CPU tier (issue 15 item 11): each
is an InvalidArgumentError naming the problem, and nothing changes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hybridkv.cache.manager import KVCacheManager
from hybridkv.errors import InvalidArgumentError
from hybridkv.offload import BlockKey, CpuTier, model_fingerprint, parse_offload_spec
from hybridkv.offload.connector import OffloadConnector
from hybridkv.offload.pages import HostPages
from offload_helpers import hybrid_plan, model_step

PROMPT = np.random.default_rng(1).integers(1, 1000, 1200).astype(np.int32)


@pytest.fixture
def warm(tmp_path: Path) -> OffloadConnector:
    """A connector whose tier holds request 1's blocks; requests 1 and 2 (same prompt)
    are in the manager, 2 not yet computed."""
    plan = hybrid_plan()
    c = OffloadConnector(
        KVCacheManager(plan, enable_prefix_caching=True),
        parse_offload_spec(f"disk:{tmp_path}:64MiB"),
        HostPages(plan),
        weights="test",
        background=False,
    )
    m = c.manager
    m.add_requests([1], [PROMPT])
    m.get_computed_tokens([1])
    done = 0
    for n in (1056, 44):  # a chunk ending on the state checkpoint at 1056
        assert m.allocate_slots([1], [n])[0]
        model_step(m, c.pages, c.fingerprint, 1, done, done + n)
        done += n
        c.store([1])
    m.free([1])
    m.reset_prefix_cache()
    m.add_requests([2], [PROMPT])
    return c


def _state(c: OffloadConnector) -> tuple[object, ...]:
    return (
        dict(c.stats.as_dict()),
        {k: (v.start, v.hit, v.nbytes) for k, v in c._pending.items()},
        c._held_bytes,
        len(c._offloaded),
        dict(c._stored_upto),
    )


def test_the_fixture_has_an_external_hit(warm: OffloadConnector) -> None:
    dev = warm.manager.get_computed_tokens([2])
    found = warm.lookup_external([2], dev)
    assert int(found.hit_tokens[0]) > int(dev[0])


@pytest.mark.parametrize(
    ("ids", "device"),
    [
        ([2.0], [0]),  # a float id (1.5 used to act on request 1)
        ([1.5], [0]),
        (np.array([2.0]), [0]),
        ([True], [0]),
        (["2"], [0]),
        ([3], [0]),  # not in the manager
        ([2**70], [0]),
        ([2], [-1]),  # a negative device hit
        ([2], [len(PROMPT) + 1]),  # past the prompt
        ([2], [2**62]),
        ([2], [0.5]),  # a float device hit
        ([2], [0, 0]),  # one entry per request
        ([[2]], [0]),
    ],
)
def test_lookup_refuses_and_changes_nothing(
    warm: OffloadConnector, ids: object, device: object
) -> None:
    warm.manager.get_computed_tokens([2])
    before = _state(warm)
    with pytest.raises(InvalidArgumentError):
        warm.lookup_external(ids, device)  # type: ignore[arg-type]
    assert _state(warm) == before


def test_a_held_lookup_survives_a_refused_one(warm: OffloadConnector) -> None:
    dev = warm.manager.get_computed_tokens([2])
    found = warm.lookup_external([2], dev)
    before = _state(warm)
    with pytest.raises(InvalidArgumentError):
        warm.lookup_external([2, 1.5], [0, 0])
    assert _state(warm) == before
    x = int(found.external_tokens[0])
    assert warm.manager.allocate_slots([2], [x + 1])[0]
    assert warm.load_scheduled([2], dev, [x + 1], [x]) > 0


@pytest.mark.parametrize(
    "args",
    [
        ([2.0], [0], [10], [5]),
        ([2], [0.0], [10], [5]),
        ([2], [0], [10.5], [5]),
        ([2], [0], [10], [True]),
        ([2, 2], [0], [10], [5]),
    ],
)
def test_load_scheduled_refuses_floats_and_ragged_rows(
    warm: OffloadConnector, args: tuple[object, ...]
) -> None:
    dev = warm.manager.get_computed_tokens([2])
    warm.lookup_external([2], dev)
    before = _state(warm)
    with pytest.raises(InvalidArgumentError):
        warm.load_scheduled(*args)  # type: ignore[arg-type]
    assert _state(warm) == before


@pytest.mark.parametrize("bad", [[1.5], [True], ["1"]])
def test_store_and_forget_refuse_float_ids(warm: OffloadConnector, bad: list[object]) -> None:
    before = _state(warm)
    with pytest.raises(InvalidArgumentError):
        warm.store(bad)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError):
        warm.forget(bad)  # type: ignore[arg-type]
    assert _state(warm) == before


@pytest.mark.parametrize(
    "bad_item",
    [
        ("not a key", b"x"),
        (("fp", 0, 1), b"x"),
        (None, b"x"),
        "no tuple",
        (BlockKey(b"\0" * 16, -1, 1), b"x"),
        (BlockKey(b"\0" * 16, 0, 2**128), b"x"),
        (BlockKey(b"\0" * 16, 0, 3), 12345),
        (BlockKey(b"\0" * 16, 0, 3), np.zeros((4, 4), dtype=np.float32)[:, ::2]),
    ],
)
def test_cpu_put_is_atomic_for_a_batch(bad_item: object) -> None:
    """A bad item anywhere in the batch: nothing of the batch is stored."""
    fp = b"\0" * 16
    tier = CpuTier(1 << 20)
    tier.put([(BlockKey(fp, 0, 9), b"old")])
    batch = [(BlockKey(fp, 0, 1), b"first"), (BlockKey(fp, 0, 2), b"second"), bad_item]
    with pytest.raises(InvalidArgumentError):
        tier.put(batch)  # type: ignore[arg-type]
    assert tier.lru_keys() == [BlockKey(fp, 0, 9)]
    assert tier.get([BlockKey(fp, 0, 1), BlockKey(fp, 0, 2)]) == [None, None]
    assert tier.used_bytes == 3 and tier.stats.stored == 1


def test_cpu_tier_refuses_another_models_key() -> None:
    tier = CpuTier(1 << 20)
    own = model_fingerprint({"name": "a"})
    tier.fingerprint = own  # type: ignore[attr-defined]
    with pytest.raises(InvalidArgumentError):
        tier.put([(BlockKey(own, 0, 1), b"x"), (BlockKey(model_fingerprint({"n": 2}), 0, 1), b"y")])
    assert len(tier) == 0


def _pages_digest(c: OffloadConnector) -> str:
    import hashlib

    h = hashlib.blake2b()
    for arr in c.pages.arrays:  # type: ignore[attr-defined]
        h.update(np.ascontiguousarray(arr).tobytes())
    return h.hexdigest()


@pytest.mark.parametrize("how", ["behind", "twice", "short"])
def test_a_bad_row_after_a_good_one_writes_nothing(warm: OffloadConnector, how: str) -> None:
    """Found by the connector machine: ``load_scheduled`` wrote a good row's pages and
    dropped its hold before it reached a bad row (another request with no hold, the
    same request twice, fewer new tokens than external ones)."""
    dev = warm.manager.get_computed_tokens([2])
    x = int(warm.lookup_external([2], dev).external_tokens[0])
    assert x > 0 and warm.manager.allocate_slots([2], [x + 1])[0]
    d = int(dev[0])
    bad = {
        "behind": ([2, 77], [d, 0], [x + 1, 600], [x, 528]),
        "twice": ([2, 2], [d, d], [x + 1, x + 1], [x, x]),
        "short": ([2], [d], [x - 1], [x]),
    }[how]
    before, pages = _state(warm), _pages_digest(warm)
    with pytest.raises(InvalidArgumentError):
        warm.load_scheduled(*bad)
    assert _state(warm) == before and _pages_digest(warm) == pages
    assert warm.load_scheduled([2], dev, [x + 1], [x]) > 0  # the hold is still there


def test_an_unaligned_step_never_offloads_a_running_state_as_a_checkpoint() -> None:
    """Found by the connector machine: in align mode a step ending mid-block leaves the
    running state in a table entry; when the next step ran past that block's boundary
    the entry stayed in the table and ``store`` offloaded it as the checkpoint at the
    boundary, so a later request loaded a wrong state (the bytes after 16 tokens as
    the state after 528)."""
    plan = hybrid_plan()
    c = OffloadConnector(
        KVCacheManager(plan, enable_prefix_caching=True),
        parse_offload_spec("cpu:64MiB"),
        HostPages(plan),
        background=False,
    )
    m = c.manager
    m.add_requests([1], [PROMPT])
    m.get_computed_tokens([1])
    done = 0
    for n in (16, 528, 528):  # ends at 16 (mid-block), 544 (past 528), 1072 (past 1056)
        assert m.allocate_slots([1], [n])[0]
        model_step(m, c.pages, c.fingerprint, 1, done, done + n)
        done += n
        c.store([1])
    state = next(g for g, grp in enumerate(plan.groups) if grp.kind == "state")
    assert all(k.group != state for k in c._offloaded)  # no step ended on a boundary
    m.free([1])
    assert m.reset_prefix_cache()
    m.add_requests([2], [PROMPT])
    dev = m.get_computed_tokens([2])
    found = c.lookup_external([2], dev)
    assert found.hit_tokens.tolist() == [0]  # no checkpoint, so no state to start from
    c.close()
