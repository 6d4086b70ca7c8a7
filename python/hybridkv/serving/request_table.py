"""The scheduler's per-request state: counters in numpy arrays indexed by slot.

A :class:`~hybridkv.serving.scheduler.Scheduler` step touches every running request
(its computed and total token counts, the token it sampled, whether it finished). Kept
as attributes of one Python object per request, those touches are a Python loop over
the batch, twice per step; kept here, one array per counter and one slot per live
request, a step reads and updates them with a few numpy operations over the batch's
slots. The policy code that looks at one request at a time (admission, chunk rules,
preemption) still reads ``r.num_computed`` / ``r.num_tokens``: they are properties
over these arrays (:class:`Req`).

A slot is taken when a request is queued and given back when it finishes; a preempted
request keeps its slot. Sampled tokens are kept by slot in Rust
(:class:`hybridkv._core.TokenLists`): a step appends the whole batch's in one call,
a finished request's list is handed back once (``Req.output`` reads a copy).
"""

from __future__ import annotations

from itertools import compress
from typing import Any

import numpy as np
import numpy.typing as npt

from hybridkv._core import TokenLists

I64 = npt.NDArray[np.int64]
I32 = npt.NDArray[np.int32]
BoolArray = npt.NDArray[np.bool_]

WAITING, RUNNING, FINISHED = 0, 1, 2


class RequestTable:
    """Counters of every live request, one slot each (see the module docs)."""

    def __init__(self, capacity: int = 64) -> None:
        cap = max(1, capacity)
        self.num_computed = np.zeros(cap, dtype=np.int64)
        self.num_tokens = np.zeros(cap, dtype=np.int64)
        self.prompt_len = np.zeros(cap, dtype=np.int64)
        self.max_tokens = np.zeros(cap, dtype=np.int64)
        #: The token count at which sampling one more token reaches ``max_tokens``
        #: (``prompt_len + max_tokens - 1``, capped at the int64 maximum).
        self.length_at = np.zeros(cap, dtype=np.int64)
        self.eos = np.zeros(cap, dtype=np.int64)
        self.has_eos = np.zeros(cap, dtype=bool)
        #: Live slots with an ``eos`` token (none: finish checks skip the stop test).
        self.num_eos = 0
        #: The tokens the request in each slot sampled (Rust lists: one append per step).
        self.outs = TokenLists()
        self.outs.reserve_slots(cap)
        self._free: list[int] = list(range(cap - 1, -1, -1))

    def take(self, prompt_len: int, max_tokens: int, eos: int | None) -> int:
        """A slot for a new request (its counters set: nothing computed yet)."""
        if not self._free:
            self._grow()
        s = self._free.pop()
        self.num_computed[s] = 0
        self.num_tokens[s] = prompt_len
        self.prompt_len[s] = prompt_len
        self.max_tokens[s] = max_tokens
        self.length_at[s] = min(prompt_len + max_tokens - 1, (1 << 63) - 1)
        self.has_eos[s] = eos is not None
        self.num_eos += eos is not None
        self.eos[s] = 0 if eos is None else eos
        self.outs.clear(s)
        return s

    def give_back(self, slot: int) -> None:
        """Free a finished request's slot."""
        self.outs.clear(slot)
        if self.has_eos[slot]:
            self.has_eos[slot] = False
            self.num_eos -= 1
        self._free.append(slot)

    def _grow(self) -> None:
        old = self.num_computed.shape[0]
        new = 2 * old
        names = ("num_computed", "num_tokens", "prompt_len", "max_tokens", "length_at", "eos")
        for name in (*names, "has_eos"):
            a = getattr(self, name)
            b = np.zeros(new, dtype=a.dtype)
            b[:old] = a
            setattr(self, name, b)
        self.outs.reserve_slots(new)
        self._free.extend(range(new - 1, old - 1, -1))

    def record_sampled(
        self, slots: I64, toks: I64, token_end: int
    ) -> tuple[list[int], list[bool], int]:
        """The slots' requests sampled ``toks`` (one each): ``(finished rows, by length,
        bad row)``. A request finishes when it has ``max_tokens`` outputs or samples its
        ``eos`` token; every other must have sampled a token below ``token_end``, else
        its row comes back as ``bad`` (-1: none) and nothing changes. Otherwise each
        token joins its slot's list and each token count grows by one (one Rust call:
        ``TokenLists.sample``)."""
        stop = self.has_eos[slots] & (toks == self.eos[slots]) if self.num_eos else None
        return self.outs.sample(slots, toks, self.num_tokens, self.length_at, stop, token_end)


def keep_rows(items: list[Any], mask: BoolArray) -> list[Any]:
    """``items`` where ``mask`` is set (a C-level pass)."""
    return list(compress(items, mask.tolist()))


class Req:
    """One request's bookkeeping: its identity and policy fields as attributes, its
    token counters in the scheduler's :class:`RequestTable` (``slot``)."""

    __slots__ = (
        "arrival",
        "boundary",
        "eos",
        "hit",
        "known",
        "lost",
        "max_tokens",
        "num_preemptions",
        "priority",
        "prompt",
        "prompt_len",
        "rank_key",
        "req_id",
        "seq",
        "slot",
        "started",
        "status",
        "table",
    )

    def __init__(
        self,
        table: RequestTable,
        req_id: int,
        prompt: I32,
        max_tokens: int,
        priority: int,
        seq: int,
        eos: int | None,
        arrival: float,
    ) -> None:
        self.req_id = req_id
        self.prompt = prompt
        self.prompt_len = int(prompt.shape[0])
        self.max_tokens = max_tokens
        self.priority = priority
        self.seq = seq
        self.rank_key = (priority, seq)  # rank(), precomputed for sorting
        self.eos = eos
        self.arrival = arrival
        self.num_preemptions = 0
        self.status = WAITING
        self.known = False  # added to the manager yet
        self.started = False  # kept in a step's output at least once
        self.lost = 0  # tokens computed when last preempted
        self.boundary = 0  # shared-prefix boundary from its last prefix lookup
        self.hit = 0  # tokens hit (cache and external) at its last admission
        self.table = table
        self.slot = table.take(self.prompt_len, max_tokens, eos)

    @property
    def num_computed(self) -> int:
        """Tokens computed (or cache-hit) so far."""
        return int(self.table.num_computed[self.slot])

    @num_computed.setter
    def num_computed(self, v: int) -> None:
        self.table.num_computed[self.slot] = v

    @property
    def output(self) -> list[int]:
        """The tokens sampled so far (a copy)."""
        return self.table.outs.get(self.slot)

    @property
    def num_tokens(self) -> int:
        """Prompt plus sampled tokens."""
        return int(self.table.num_tokens[self.slot])

    def rank(self) -> tuple[int, int]:
        """Smaller runs first and is preempted last."""
        return self.rank_key
