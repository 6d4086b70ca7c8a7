"""Hostile input to :class:`hybridkv.scheduler.Scheduler` (issue 15 items 4 and 11).

``add_request`` validates at the door: a bad request raises a ``HybridKVError`` and
leaves every queue as it was, so the valid requests around it still all finish. Before
this, a negative token was queued, then ``schedule()`` raised after popping it and two
valid requests, and from then on scheduled nothing while ``has_unfinished()`` stayed
true; int64 tokens >= 2**32 wrapped through an int32 cast (another prompt, the same
hash), float tokens and float request ids were truncated.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hybridkv.errors import HybridKVError, InvalidArgumentError, InvalidTokenError
from hybridkv.manager import KVCacheManager, ManagerConfig, ManagerGroup
from hybridkv.models import ModelSpec
from hybridkv.planner import plan_with_blocks
from hybridkv.scheduler import Scheduler
from hybridkv.specs import FullAttentionSpec, SlidingWindowSpec
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import rule
from test_scheduler_machine import STATS, SchedulerMachine


def _config() -> ManagerConfig:
    return ManagerConfig(
        (ManagerGroup("full_attention", 4, 64), ManagerGroup("sliding_window", 4, 32, window=8))
    )


def _manager(vocab_size: int | None = None) -> KVCacheManager:
    """A planner-made plan (full attention + sliding window), 4-token blocks."""
    full = FullAttentionSpec(num_kv_heads=1, head_size=8)
    swa = SlidingWindowSpec(num_kv_heads=1, head_size=8, window=8)
    plan = plan_with_blocks(
        ModelSpec("m", (full, swa)),
        [64, 32],
        block_size=4,
        max_num_seqs=4,
        max_model_len=64,
        max_num_batched_tokens=64,
    )
    return KVCacheManager(plan, vocab_size=vocab_size)


def _sched(vocab_size: int | None = None) -> Scheduler:
    return Scheduler(_manager(vocab_size), max_num_batched_tokens=64, max_num_seqs=4)


def _drain(s: Scheduler) -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for _ in range(1000):
        if not s.has_unfinished():
            break
        step = s.schedule()
        for f in s.update_from_output(np.full(step.sample_req_ids.shape[0], 7, dtype=np.int64)):
            out[f.req_id] = f.output_token_ids
    assert not s.has_unfinished()
    return out


def _state(s: Scheduler) -> tuple[Any, ...]:
    return (
        s.num_waiting,
        s.num_running,
        s.has_unfinished(),
        sorted(s._reqs),
        s.manager.num_requests,  # type: ignore[attr-defined]
    )


HOSTILE: list[tuple[str, dict[str, Any], type[HybridKVError]]] = [
    ("negative token", {"prompt_token_ids": [1, -1, 2]}, InvalidTokenError),
    (
        "int64 token 2**32 + 5",
        {"prompt_token_ids": np.asarray([2**32 + 5], np.int64)},
        InvalidTokenError,
    ),
    (
        "int64 token 2**31",
        {"prompt_token_ids": np.asarray([3, 2**31], np.int64)},
        InvalidTokenError,
    ),
    ("uint64 token 2**63", {"prompt_token_ids": np.asarray([2**63], np.uint64)}, InvalidTokenError),
    ("python int token 2**70", {"prompt_token_ids": [1, 2**70]}, InvalidTokenError),
    ("float tokens", {"prompt_token_ids": [1.5, 2.0]}, InvalidArgumentError),
    ("float32 array", {"prompt_token_ids": np.ones(3, np.float32)}, InvalidArgumentError),
    ("bool tokens", {"prompt_token_ids": np.ones(3, bool)}, InvalidArgumentError),
    ("string tokens", {"prompt_token_ids": ["a", "b"]}, InvalidArgumentError),
    ("2-D prompt", {"prompt_token_ids": np.ones((2, 2), np.int32)}, InvalidArgumentError),
    ("ragged prompt", {"prompt_token_ids": [[1, 2], [3]]}, InvalidArgumentError),
    ("empty prompt", {"prompt_token_ids": np.zeros(0, np.int32)}, InvalidArgumentError),
    ("float request id", {"req_id": 1.5}, InvalidArgumentError),
    ("string request id", {"req_id": "9"}, InvalidArgumentError),
    ("bool request id", {"req_id": True}, InvalidArgumentError),
    ("request id 2**63", {"req_id": 2**63}, InvalidArgumentError),
    ("max_tokens 0", {"max_tokens": 0}, InvalidArgumentError),
    ("max_tokens 2.5", {"max_tokens": 2.5}, InvalidArgumentError),
    ("max_tokens True", {"max_tokens": True}, InvalidArgumentError),
    ("max_tokens 2**64", {"max_tokens": 2**64}, InvalidArgumentError),
    ("priority 0.5", {"priority": 0.5}, InvalidArgumentError),
    ("eos 1.0", {"eos_token_id": 1.0}, InvalidArgumentError),
    ("arrival nan", {"arrival_time": float("nan")}, InvalidArgumentError),
    ("arrival string", {"arrival_time": "now"}, InvalidArgumentError),
]


@pytest.mark.parametrize(("name", "bad", "err"), HOSTILE, ids=[h[0] for h in HOSTILE])
def test_bad_request_is_refused_and_changes_nothing(
    name: str, bad: dict[str, Any], err: type[HybridKVError]
) -> None:
    s = _sched()
    s.add_request(0, [1, 2, 3, 4, 5], 3)
    s.add_request(1, [1, 2, 3, 4, 9], 2)
    before = _state(s)
    kwargs: dict[str, Any] = {"req_id": 5, "prompt_token_ids": [4, 5, 6], "max_tokens": 2}
    kwargs.update(bad)
    with pytest.raises(err):
        s.add_request(**kwargs)
    assert _state(s) == before, name
    s.add_request(2, [8, 8, 8], 1)
    done = _drain(s)
    assert sorted(done) == [0, 1, 2]
    assert [len(done[i]) for i in (0, 1, 2)] == [3, 2, 1]


def test_token_ids_are_checked_against_the_manager_vocab() -> None:
    s = _sched(vocab_size=100)
    with pytest.raises(InvalidTokenError, match="100"):
        s.add_request(0, [1, 100], 1)
    assert not s.has_unfinished()
    s.add_request(0, [1, 99], 1)
    assert sorted(_drain(s)) == [0]


def test_prompt_is_copied_at_the_door() -> None:
    s = _sched()
    prompt = np.asarray([1, 2, 3], dtype=np.int32)
    s.add_request(0, prompt, 1)
    prompt[1] = -5  # the caller reuses its buffer: the queued prompt must not change
    assert sorted(_drain(s)) == [0]


def test_numpy_integer_arguments_are_accepted() -> None:
    s = _sched()
    s.add_request(np.int64(3), np.asarray([1, 2], np.uint16), np.int32(2), priority=np.int8(1))
    assert sorted(_drain(s)) == [3]


class _FailingOnce:
    """A manager whose next ``add_requests`` refuses (a rule the scheduler cannot know)."""

    def __init__(self, inner: KVCacheManager) -> None:
        self.inner = inner
        self.fail = False

    def add_requests(self, *args: Any, **kwargs: Any) -> None:
        if self.fail:
            self.fail = False
            raise InvalidTokenError("refused by the manager")
        self.inner.add_requests(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def test_a_manager_refusal_inside_schedule_loses_no_request() -> None:
    mgr = _FailingOnce(_manager())
    s = Scheduler(mgr, max_num_batched_tokens=8, max_num_seqs=4)
    for i in range(3):
        s.add_request(i, [1, 2, 3, i], 2)
    mgr.fail = True
    before = _state(s)
    with pytest.raises(InvalidTokenError):
        s.schedule()
    assert _state(s) == before
    assert sorted(_drain(s)) == [0, 1, 2]


def test_scheduler_over_a_hand_written_manager_config() -> None:
    """Item 11: ``Scheduler(KVCacheManager(ManagerConfig(...)))`` raised AttributeError
    (ManagerGroup has no ``grows``/``index``)."""
    mgr = KVCacheManager(_config())
    s = Scheduler(mgr, max_num_batched_tokens=16, max_num_seqs=2)
    assert s.block_size == 4
    assert s._grow_idx.tolist() == [0]  # only the full-attention group grows
    for i in range(6):
        s.add_request(i, list(range(1, 30)), 4)
    done = _drain(s)
    assert sorted(done) == list(range(6))
    assert mgr.num_requests == 0


ABUSED = {"calls": 0}

_BAD_PROMPTS = st.one_of(
    st.lists(st.integers(-(2**40), -1), min_size=1, max_size=4),
    st.lists(st.integers(2**31, 2**70), min_size=1, max_size=4),
    st.lists(st.floats(allow_nan=True), min_size=1, max_size=4),
    st.just([]),
)


@settings(max_examples=60, stateful_step_count=40)
class SchedulerAbuseMachine(SchedulerMachine):
    """The scheduler machine with hostile calls mixed in: each must raise a
    ``HybridKVError`` and change nothing, and at teardown every valid request still
    finishes with exactly its output (the parent's teardown checks that)."""

    def _snapshot(self) -> tuple[Any, ...]:
        return (*_state(self.sched), self.sched.running_ids().tolist())

    @rule(prompt=_BAD_PROMPTS, position=st.integers(0, 8), good=st.booleans())
    def add_bad_prompt(self, prompt: list[Any], position: int, good: bool) -> None:
        if good and prompt:
            prompt = [*([1] * position), *prompt]  # the bad token behind valid ones
        before = self._snapshot()
        with pytest.raises(HybridKVError):
            self.sched.add_request(self.next_id, prompt, 2)
        assert self._snapshot() == before
        ABUSED["calls"] += 1

    @rule(
        which=st.sampled_from(["req_id", "max_tokens", "priority", "eos_token_id"]),
        value=st.one_of(st.floats(), st.booleans(), st.text(max_size=2), st.just(2**64)),
    )
    def add_bad_scalar(self, which: str, value: object) -> None:
        kwargs: dict[str, Any] = {
            "req_id": self.next_id,
            "prompt_token_ids": [1, 2, 3],
            "max_tokens": 2,
        }
        kwargs[which] = value
        before = self._snapshot()
        with pytest.raises(HybridKVError):
            self.sched.add_request(**kwargs)
        assert self._snapshot() == before

    @rule()
    def add_duplicate(self) -> None:
        if not self.want:
            return
        rid = next(iter(self.want))
        before = self._snapshot()
        with pytest.raises(HybridKVError):
            self.sched.add_request(rid, [1, 2], 1)
        assert self._snapshot() == before

    @rule()
    def out_of_order_calls(self) -> None:
        before = self._snapshot()
        with pytest.raises(HybridKVError):
            self.sched.update_from_output([])
        with pytest.raises(HybridKVError):
            self.sched.preempt([10**9])
        assert self._snapshot() == before


def test_scheduler_abuse_machine() -> None:
    saved = dict(STATS)  # the parent's vacuity counters are its own test's
    try:
        SchedulerAbuseMachine.TestCase().runTest()
        assert STATS["runs"] > saved["runs"]
        assert ABUSED["calls"] > 0
    finally:
        STATS.update(saved)
