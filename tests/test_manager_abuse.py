"""Malformed arguments thrown at every public KVCacheManager method.

A stateful machine keeps a manager busy with ordinary traffic (add, look up, allocate,
append, preempt, free) and between those calls every method with arguments drawn from
a mix of sane values and junk: wrong dtypes and shapes, floats, bools, strings, None,
huge and negative ints, uint64 extremes, empty and ragged arrays, strided and
read-only views, unknown and repeated ids, mismatched lengths. Whatever happens, an
error must be a ``HybridKVError`` (never a bare ``TypeError``/``OverflowError``/
``SystemError`` or a Rust panic), and a call that raises must leave the whole state
(tables, computed and token counts, reference counts, free queues, cached hashes,
stats) exactly as it was.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import numpy as np
from hybridkv import KVCacheManager, ManagerConfig, ManagerGroup, errors
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

VOCAB = 500
CONFIG = ManagerConfig(
    (
        ManagerGroup("full_attention", 4, 40),
        ManagerGroup("sliding_window", 4, 24, window=7),
        ManagerGroup("state", 8, 12),
        ManagerGroup("cross_attention", 4, 12, max_encoder_len=12),
    ),
    "align",
)

EDGE_INTS = [
    0,
    1,
    2,
    -1,
    3,
    2**31 - 1,
    2**31,
    2**32,
    2**63 - 1,
    2**63,
    -(2**63),
    -(2**63) - 1,
    2**64 - 1,
    2**64,
    2**100,
    -(2**100),
]
DTYPES: list[Any] = [
    np.int8,
    np.int16,
    np.int32,
    np.int64,
    np.uint8,
    np.uint32,
    np.uint64,
    np.float32,
    np.float64,
    np.bool_,
    np.complex64,
    object,
    "U3",
]
SHAPES = [(), (0,), (1,), (2,), (3,), (2, 2), (0, 2), (1, 0), (3, 2)]

#: Methods of the raw ``hybridkv._core.KVCacheManager`` and how many arguments each takes.
CORE_ARITY = {
    "add_requests": 10,
    "append_tokens": 3,
    "get_computed_tokens": 1,
    "allocate_slots": 4,
    "free": 1,
    "preempt": 1,
    "block_table": 3,
    "block_table_into": 3,
    "new_block_ids": 2,
    "new_block_ids_all": 1,
    "block_tables": 1,
    "slot_mapping": 3,
    "num_computed_tokens": 1,
    "num_tokens": 1,
    "shared_prefix_boundary": 1,
    "block_hashes": 2,
    "__contains__": 1,
    "ref_counts": 1,
    "free_queue": 1,
    "cached_blocks": 1,
}

small_ints = st.integers(-3, 12)
ints = st.one_of(small_ints, st.sampled_from(EDGE_INTS))


def _cast(vals: list[int], dtype: Any) -> np.ndarray:
    """`vals` in `dtype`, clipped into its range (casting must not itself fail)."""
    if dtype is object:
        return np.array([*vals, 0], dtype=object)[:-1]
    if dtype == "U3":
        return np.array([str(v)[:3] for v in vals], dtype="U3")
    kind = np.dtype(dtype).kind
    if kind in "iu":
        info = np.iinfo(dtype)
        return np.array([min(max(v, int(info.min)), int(info.max)) for v in vals], dtype=dtype)
    if kind == "b":
        return np.array([v % 2 == 1 for v in vals], dtype=dtype)
    return np.array([float(v) for v in vals], dtype=np.float64).astype(dtype)


@st.composite
def arrays(draw: st.DrawFn, pool: list[int]) -> np.ndarray:
    dtype = draw(st.sampled_from(DTYPES))
    shape = draw(st.sampled_from(SHAPES))
    n = int(np.prod(shape))
    vals = draw(st.lists(st.one_of(ints, st.sampled_from(pool)), min_size=n, max_size=n))
    a = _cast(vals, dtype).reshape(shape)
    view = draw(st.sampled_from(["plain", "strided", "readonly"]))
    if view == "strided" and a.ndim == 1:
        a = np.repeat(a, 2)[::2]
    elif view == "readonly":
        a.flags.writeable = False
    return a


junk_scalars = st.one_of(
    ints,
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.none(),
    st.text(max_size=3),
    st.binary(max_size=3),
    st.sampled_from(
        [
            np.uint64(2**64 - 1),
            np.int64(-(2**63)),
            np.float64(1.0),
            np.bool_(True),
            np.int8(-1),
            [],
            {},
            (),
            object(),
            [[1], [1, 2]],
            [1, "a"],
            [1, None],
            [1.5, 2],
            [[1, 2], [3, 4]],
        ]
    ),
)


def args(pool: list[int]) -> st.SearchStrategy[Any]:
    """Any argument: sane id/count lists (from `pool`), arrays of any kind, junk."""
    return st.one_of(
        st.lists(st.sampled_from(pool), max_size=4),
        st.lists(ints, max_size=4),
        arrays(pool),
        junk_scalars,
    )


def token_args(n: int) -> st.SearchStrategy[Any]:
    """Prompt forms: a list of n arrays (sane or not), anything else."""
    good = st.lists(st.integers(0, VOCAB - 1), min_size=1, max_size=12).map(
        lambda t: np.array(t, dtype=np.int32)
    )
    part = st.one_of(good, good, arrays([0, 1, 2, VOCAB, VOCAB - 1]), junk_scalars)
    return st.one_of(
        st.lists(part, min_size=n, max_size=n), st.lists(part, max_size=4), junk_scalars
    )


def per_request_lists(n: int, item: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(
        st.none(),
        st.lists(item, min_size=n, max_size=n),
        st.lists(item, max_size=4),
        junk_scalars,
    )


media_items = st.one_of(
    st.tuples(st.sampled_from(EDGE_INTS), st.sampled_from(EDGE_INTS), st.sampled_from(EDGE_INTS)),
    st.tuples(st.integers(0, 2**128 - 1), st.integers(0, 20), st.integers(0, 8)),
    st.tuples(st.floats(), st.floats(), st.floats()),
    junk_scalars,
)


def full_state(m: KVCacheManager) -> dict[str, Any]:
    """Everything a failed call must leave alone (read through non-mutating calls)."""
    ids = m.request_ids()
    s = m.stats()
    return {
        "ids": ids.tolist(),
        "tables": [m.block_table(g, ids).tolist() for g in range(m.num_groups)],
        "computed": m.num_computed_tokens(ids).tolist(),
        "ntok": m.num_tokens(ids).tolist(),
        "boundary": m.shared_prefix_boundary(ids).tolist(),
        "hashes": [[m.block_hashes(g, int(r)).tolist() for r in ids] for g in range(m.num_groups)],
        "refs": [m.ref_counts(g).tolist() for g in range(m.num_groups)],
        "queues": [m.free_queue(g).tolist() for g in range(m.num_groups)],
        "cached": [[a.tolist() for a in m.cached_blocks(g)] for g in range(m.num_groups)],
        "stats": s,
    }


class ManagerAbuse(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.m = KVCacheManager(CONFIG, vocab_size=VOCAB, enable_kv_events=True)
        self.next_id = 1
        self.calls = 0
        self.errors = 0

    def pool(self) -> list[int]:
        """Ids worth drawing: held ones, an unknown one, and extremes."""
        return [*self.m.request_ids().tolist(), self.next_id + 100, 0, -1]

    def attempt(self, call: Callable[[], object]) -> None:
        before = full_state(self.m)
        self.calls += 1
        try:
            call()
        except BaseException as e:  # a Rust panic is a BaseException
            assert isinstance(e, errors.HybridKVError), f"{type(e).__module__}.{e!r}"
            self.errors += 1
            assert full_state(self.m) == before, f"state changed by a failing call: {e!r}"

    # -- ordinary traffic, so the junk meets varied states ------------------------------

    @rule(data=st.data(), n=st.integers(1, 3))
    def add(self, data: st.DataObject, n: int) -> None:
        ids = list(range(self.next_id, self.next_id + n))
        self.next_id += n
        prompts = data.draw(
            st.lists(st.lists(st.integers(0, 5), min_size=1, max_size=20), min_size=n, max_size=n)
        )
        self.m.add_requests(ids, [np.array(p, dtype=np.int32) for p in prompts])

    @rule(data=st.data())
    def admit_and_step(self, data: st.DataObject) -> None:
        ids = self.m.request_ids()
        if not ids.size:
            return
        rid = int(data.draw(st.sampled_from(ids.tolist())))
        with contextlib.suppress(errors.RequestStateError):  # already running
            self.m.get_computed_tokens([rid])
        left = int(self.m.num_tokens([rid])[0] - self.m.num_computed_tokens([rid])[0])
        self.m.allocate_slots([rid], [data.draw(st.integers(0, max(left, 0)))])

    @rule(data=st.data())
    def finish_or_preempt(self, data: st.DataObject) -> None:
        ids = self.m.request_ids()
        if ids.size:
            rid = int(data.draw(st.sampled_from(ids.tolist())))
            if data.draw(st.booleans()):
                self.m.free([rid])
            else:
                self.m.preempt([rid])

    # -- abuse ----------------------------------------------------------------------------

    @rule(data=st.data())
    def abuse_add_requests(self, data: st.DataObject) -> None:
        p = [*self.pool(), self.next_id + 1]
        ids = data.draw(args(p))
        n = len(ids) if isinstance(ids, list) else data.draw(st.integers(0, 3))
        tokens = data.draw(token_args(n))
        offsets = data.draw(st.one_of(st.none(), args([0, 1, 3, 12])))
        kw = {
            "lora_ids": data.draw(per_request_lists(n, st.one_of(st.none(), ints, junk_scalars))),
            "cache_salts": data.draw(
                per_request_lists(
                    n,
                    st.one_of(st.none(), st.text(max_size=3), st.binary(max_size=3), junk_scalars),
                )
            ),
            "mm_features": data.draw(
                per_request_lists(
                    n, st.one_of(st.none(), st.lists(media_items, max_size=2), junk_scalars)
                )
            ),
            "encoder_lens": data.draw(st.one_of(st.none(), args([0, 4, 12, 13]))),
        }
        self.attempt(lambda: self.m.add_requests(ids, tokens, offsets, **kw))

    @rule(data=st.data())
    def abuse_append_tokens(self, data: st.DataObject) -> None:
        ids = data.draw(args(self.pool()))
        n = len(ids) if isinstance(ids, list) else 1
        tokens = data.draw(token_args(n))
        offsets = data.draw(st.one_of(st.none(), args([0, 1, 3])))
        self.attempt(lambda: self.m.append_tokens(ids, tokens, offsets))

    @rule(data=st.data(), append=st.booleans())
    def abuse_flat_offsets(self, data: st.DataObject, append: bool) -> None:
        """Flat tokens with offsets that start and end right but go anywhere between."""
        held = self.m.request_ids().tolist()
        if append and held:
            ids = data.draw(st.lists(st.sampled_from(held), min_size=1, max_size=4))
        else:
            ids = list(range(self.next_id + 200, self.next_id + 200 + data.draw(st.integers(1, 4))))
        total = data.draw(st.integers(0, 12))
        middle = data.draw(st.lists(ints, min_size=len(ids) - 1, max_size=len(ids) - 1))
        offsets = np.array([0, *middle, total], dtype=object)
        tokens = np.arange(total, dtype=np.int32)
        call = self.m.append_tokens if append else self.m.add_requests
        self.attempt(lambda: call(ids, tokens, offsets))

    @rule(
        data=st.data(),
        method=st.sampled_from(["free", "preempt", "get_computed_tokens", "new_block_ids_all"]),
    )
    def abuse_lifecycle(self, data: st.DataObject, method: str) -> None:
        ids = data.draw(args(self.pool()))
        self.attempt(lambda: getattr(self.m, method)(ids))

    @rule(data=st.data())
    def abuse_allocate_slots(self, data: st.DataObject) -> None:
        ids = data.draw(args(self.pool()))
        new = data.draw(args([0, 1, 4, 100]))
        ahead = data.draw(st.one_of(st.none(), args([0, 1, 2])))
        step = data.draw(st.one_of(st.booleans(), junk_scalars))
        self.attempt(lambda: self.m.allocate_slots(ids, new, ahead, new_step=step))

    @rule(
        data=st.data(),
        method=st.sampled_from(
            ["block_table", "new_block_ids", "slot_mapping", "block_table_into", "block_hashes"]
        ),
    )
    def abuse_group_exports(self, data: st.DataObject, method: str) -> None:
        group = data.draw(st.one_of(st.integers(-1, 4), junk_scalars))
        ids = data.draw(args(self.pool()))
        if method == "block_table":
            width = data.draw(st.one_of(st.none(), ints, junk_scalars))
            self.attempt(lambda: self.m.block_table(group, ids, width))
        elif method == "new_block_ids":
            self.attempt(lambda: self.m.new_block_ids(group, ids))
        elif method == "slot_mapping":
            pos = data.draw(args([0, 3, 7, 100]))
            self.attempt(lambda: self.m.slot_mapping(group, ids, pos))
        elif method == "block_table_into":
            out = data.draw(
                st.one_of(
                    st.builds(
                        np.zeros,
                        st.tuples(st.integers(0, 5), st.integers(0, 6)),
                        st.sampled_from([np.int32, np.int64, np.float32]),
                    ),
                    arrays([0]),
                    junk_scalars,
                )
            )
            self.attempt(lambda: self.m.block_table_into(group, ids, out))
        else:
            rid = data.draw(st.one_of(st.sampled_from(self.pool()), ints, junk_scalars))
            self.attempt(lambda: self.m.block_hashes(group, rid))

    @rule(
        data=st.data(),
        method=st.sampled_from(
            ["block_tables", "num_computed_tokens", "num_tokens", "shared_prefix_boundary"]
        ),
    )
    def abuse_per_request_reads(self, data: st.DataObject, method: str) -> None:
        ids = data.draw(args(self.pool()))
        self.attempt(lambda: getattr(self.m, method)(ids))

    @rule(
        data=st.data(),
        method=st.sampled_from(["ref_counts", "free_queue", "cached_blocks", "__contains__"]),
    )
    def abuse_scalar_reads(self, data: st.DataObject, method: str) -> None:
        arg = data.draw(st.one_of(st.integers(-1, 4), junk_scalars))
        self.attempt(lambda: getattr(self.m, method)(arg))

    @rule(data=st.data(), method=st.sampled_from(sorted(CORE_ARITY)))
    def abuse_core_directly(self, data: st.DataObject, method: str) -> None:
        """The Rust object without the Python wrapper's conversions in front of it."""
        a = [
            data.draw(st.one_of(args(self.pool()), st.integers(-1, 4)))
            for _ in range(CORE_ARITY[method])
        ]
        self.attempt(lambda: getattr(self.m._core, method)(*a))

    @rule()
    def no_argument_calls(self) -> None:
        for call in (
            self.m.request_ids,
            self.m.usage,
            self.m.stats,
            self.m.take_events,
            self.m.reset_prefix_cache,
            lambda: self.m.num_requests,
            lambda: repr(self.m),
        ):
            self.attempt(call)

    @invariant()
    def consistent(self) -> None:
        self.m.check_invariants()


TestManagerAbuse = ManagerAbuse.TestCase


OFFSET_EDGES = [0, 1, 3, -1, -(2**63), 2**63 - 1]


@given(
    middle=st.lists(st.sampled_from(OFFSET_EDGES), min_size=3, max_size=4),
    total=st.integers(0, 12),
    append=st.booleans(),
)
def test_offsets_with_extreme_steps_are_refused(
    middle: list[int], total: int, append: bool
) -> None:
    """Offsets are compared, never subtracted: a step like ``5 -> -2**63`` wraps to a
    positive difference, and a slice built from it would panic in Rust."""
    m = KVCacheManager(CONFIG, vocab_size=VOCAB)
    m.add_requests([1, 2, 3, 4, 5], [np.arange(1, 4, dtype=np.int32)] * 5)
    before = full_state(m)
    ids = list(range(1, len(middle) + 2)) if append else [10 + i for i in range(len(middle) + 1)]
    offsets = np.array([0, *middle, total], dtype=np.int64)
    call = m.append_tokens if append else m.add_requests
    try:
        call(ids, np.arange(total, dtype=np.int32), offsets)
    except BaseException as e:  # a Rust panic is a BaseException
        assert isinstance(e, errors.HybridKVError), f"{type(e).__module__}.{e!r}"
        assert full_state(m) == before
    else:
        assert bool(np.all(np.diff(offsets) >= 0))
    m.check_invariants()


# Not 2**31 - 1: a valid block count whose pools need ~80 GB of bookkeeping. Where
# memory is smaller it is refused (`block_pool::check_bookkeeping_fits`); where it is
# not, it would really be allocated, which a unit test must not do.
group_fields = st.one_of(
    st.integers(-2, 16),
    st.sampled_from([v for v in EDGE_INTS if v != 2**31 - 1]),
    junk_scalars,
)


@settings(settings.default, max_examples=min(settings.default.max_examples, 100))
@given(
    kind=st.one_of(st.sampled_from(["full_attention", "sliding_window", "state"]), junk_scalars),
    block_size=group_fields,
    num_blocks=group_fields,
    window=st.one_of(st.none(), group_fields),
    mode=st.one_of(st.sampled_from(["align", "all", "none"]), junk_scalars),
    hash_seed=st.one_of(st.integers(0, 5), st.sampled_from(EDGE_INTS), junk_scalars),
    vocab_size=st.one_of(st.none(), st.integers(1, 9), st.sampled_from(EDGE_INTS), junk_scalars),
)
def test_constructor_refuses_junk_with_named_errors(
    kind: Any,
    block_size: Any,
    num_blocks: Any,
    window: Any,
    mode: Any,
    hash_seed: Any,
    vocab_size: Any,
) -> None:
    group = ManagerGroup(kind, block_size, num_blocks, window=window)
    try:
        m = KVCacheManager(
            ManagerConfig((group,), mode), hash_seed=hash_seed, vocab_size=vocab_size
        )
    except BaseException as e:  # a Rust panic is a BaseException
        assert isinstance(e, errors.HybridKVError), f"{type(e).__module__}.{e!r}"
    else:
        m.add_requests([1], [np.array([0], dtype=np.int32)])
        m.check_invariants()
