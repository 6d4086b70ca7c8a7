"""The scheduler's public types and argument checks: policies, the errors, the
protocols of the manager and of an external prefix tier, a step's
:class:`SchedulerOutput` and a :class:`FinishedRequest`, and the checks
``Scheduler.add_request`` applies to ids and prompts (``check_prompt``).

Re-exported by :mod:`hybridkv.serving.scheduler`, where they are documented in use.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, cast

import numpy as np
import numpy.typing as npt

from hybridkv.errors import HybridKVError, InvalidArgumentError, InvalidTokenError

I64 = npt.NDArray[np.int64]
I32 = npt.NDArray[np.int32]
BoolArray = npt.NDArray[np.bool_]

POLICIES = ("fcfs", "priority")
#: How align-mode prefill chunks are cut (see :class:`Scheduler`).
CHUNK_SPLITS = ("hybridkv", "vllm")


class SchedulerError(HybridKVError):
    """The scheduler cannot make progress (a request that can never fit the pools)."""


class ExternalPrefixSource(Protocol):
    """A cache tier below the device pools that can supply prefix tokens (offload)."""

    def lookup(self, req_ids: I64, device_hit_tokens: I64) -> I64:
        """Tokens each request can load beyond its device hit (0 where none)."""
        ...


class KVManager(Protocol):
    """The part of :class:`hybridkv.KVCacheManager` the scheduler drives."""

    def add_requests(self, req_ids: Any, token_ids: Any, offsets: Any = None) -> None: ...
    def get_computed_tokens(self, req_ids: Any) -> Any: ...
    def allocate_slots(self, req_ids: Any, num_new_tokens: Any) -> Any: ...
    def append_tokens(self, req_ids: Any, token_ids: Any, offsets: Any) -> None: ...
    def free(self, req_ids: Any) -> None: ...
    def preempt(self, req_ids: Any) -> None: ...
    def usage(self) -> Any: ...


@dataclass(frozen=True)
class FinishedRequest:
    """A request that produced all its tokens."""

    req_id: int
    output_token_ids: list[int]
    prompt_len: int
    num_preemptions: int
    reason: str  # "length" or "stop"


@dataclass(frozen=True)
class SchedulerOutput:
    """What one step computes. Row ``i`` of the arrays is one scheduled request, in the
    order passed to ``allocate_slots``."""

    step: int
    req_ids: I64
    #: Tokens computed this step (external tokens included, see ``num_external_tokens``).
    num_new_tokens: I64
    #: Tokens already computed (or cache-hit) before this step.
    num_computed_before: I64
    #: Tokens of ``num_new_tokens`` loaded from the external tier instead of computed.
    num_external_tokens: I64
    #: Whether the request yields a sampled token at the end of this step.
    samples: BoolArray
    #: Requests admitted for the first time, their prompt lengths and prefix hits.
    new_req_ids: I64
    new_prompt_lens: I64
    new_hit_tokens: I64
    #: Requests readmitted after a preemption and the tokens they re-hit.
    resumed_req_ids: I64
    resumed_hit_tokens: I64
    #: Requests preempted by this step: those not in ``req_ids`` at once, those in it
    #: (they were allocated before the failure was known) when the step ends, unless
    #: that step finishes them.
    preempted_req_ids: I64
    num_running: int
    num_waiting: int
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def num_scheduled_tokens(self) -> int:
        """Budgeted tokens: computed ones, not external loads."""
        return int(self.num_new_tokens.sum() - self.num_external_tokens.sum())

    @property
    def sample_req_ids(self) -> I64:
        """The requests that sample a token this step, in row order."""
        return self.req_ids[self.samples]


_I64_MIN, _I64_MAX = -(1 << 63), (1 << 63) - 1
#: Token ids are stored as int32 (the prefix hashes hash them as such).
_TOKEN_END = 1 << 31


def _is_int(x: object) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, (bool, np.bool_))


def _int_arg(x: object, what: str, rid: int | None = None) -> int:
    """An int64 from a Python or numpy integer; a bool, float or string is refused
    (a float request id 1.5 would otherwise act on request 1). The error names
    ``what`` (of request ``rid`` when given; the message is only built then)."""
    if type(x) is int and _I64_MIN <= x <= _I64_MAX:  # the usual case, checked first
        return x
    if _is_int(x):
        v = int(cast("int | np.integer[Any]", x))
        if _I64_MIN <= v <= _I64_MAX:
            return v
    name = what if rid is None else f"request {rid}: {what}"
    raise InvalidArgumentError(f"{name} must be an int in the int64 range, got {x!r}")


def check_prompt(rid: int, prompt_token_ids: npt.ArrayLike, hi: int) -> I32:
    """The prompt as a fresh int32 array, or an error naming the first bad token
    (never a silent cast: int64 ids >= 2**31 would wrap, floats truncate). ``hi``: one
    past the largest token id accepted."""
    try:
        a = np.asarray(prompt_token_ids)
    except (ValueError, TypeError, OverflowError) as e:
        raise InvalidArgumentError(f"request {rid}: prompt is not an array: {e}") from None
    if a.ndim != 1:
        raise InvalidArgumentError(
            f"request {rid}: prompt must be 1-D token ids, got shape {a.shape}"
        )
    if a.shape[0] < 1:
        raise InvalidArgumentError(f"request {rid}: empty prompt")
    if a.dtype.kind == "O":
        # Python ints too large for any numpy integer dtype (or mixed objects).
        bad = next((x for x in a.tolist() if not _is_int(x) or not 0 <= int(x) < _TOKEN_END), None)
        if bad is not None:
            pos = a.tolist().index(bad)
            raise InvalidTokenError(
                f"request {rid}: token id {bad!r} at position {pos} is out of range"
            )
        a = a.astype(np.int64)
    elif a.dtype.kind not in "iu":
        raise InvalidArgumentError(
            f"request {rid}: prompt token ids must be integers, got dtype {a.dtype}"
        )
    # Two reductions find whether any id is out of range; only then is the first
    # bad position located.
    if (a.dtype.kind == "i" and int(a.min()) < 0) or int(a.max()) >= hi:
        bad_mask = (a < 0) | (a >= hi) if a.dtype.kind == "i" else a >= hi
        pos = int(np.argmax(bad_mask))
        raise InvalidTokenError(
            f"request {rid}: token id {int(a[pos])} at position {pos} is out of range "
            f"(0 <= id < {hi})"
        )
    return np.array(a, dtype=np.int32)  # a copy: later edits of the caller's array don't leak in
