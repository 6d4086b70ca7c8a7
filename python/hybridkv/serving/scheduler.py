"""A continuous-batching scheduler over :class:`hybridkv.KVCacheManager`.

Every step it fills a token budget (``max_num_batched_tokens``) and a sequence budget
(``max_num_seqs``): running requests first (one token each in decode, a chunk of the
remaining prompt in prefill), then waiting requests in policy order, whose prompts are
shortened by the prefix cache (``get_computed_tokens``). Long prompts are prefilled in
chunks (``long_prefill_token_threshold`` caps one request's chunk).

Then ONE ``allocate_slots`` call covers the whole batch. The manager serves requests
in batch order, all-or-nothing each, so the oldest (or highest-priority) running
requests get memory first. If a running request does not fit, the scheduler preempts
by recompute: the lowest-priority live requests (newest first under ``"fcfs"``; largest
``priority`` value, then newest, under ``"priority"``) give their blocks back
(``preempt``: cached hashes stay findable) until the failed requests' demand is
covered, the failed request itself being the victim when nothing ranks below it. The
failed request skips this step and retries in the next. A victim that was allocated in
this step still runs it (its new blocks are already cached under their hashes, so they
must be computed) and is preempted when the step ends. A preempted request waits
at the front of the queue (its rank under ``"priority"``) and, when readmitted, looks
its prefix up again, so it re-hits whatever of its own blocks are still cached.

Admission control: a prefix lookup pins its hit blocks before the step's single
allocation, so a careless admission could take exactly the blocks a running request
needs (and a resumed victim would take back what it just gave up: a livelock). So
the scheduler reads the pools' free counts (``manager.usage()``), subtracts what the
running requests will grow by this step, and admits waiting requests in strict queue
order only while their chunk fits what is left (shrinking the chunk to fit, and
stopping at the first request that cannot get even one token, so large requests are
not starved). A request is admitted only when its whole sequence (hit to token count)
fits too (``reserve_full_prompt``, vLLM 0.33's ``scheduler_reserve_full_isl``), and by
default only beside what the running prefills and the step's earlier admissions still
add past this step (``reserve_running_prompts``: the rest of their prompts): checking
the first chunk alone let a long prompt in that the running prefills then had to
preempt for, again and again (Nemotron-Nano-9B-v2 24 GiB on Mooncake's first 600 s:
10,636 preemptions, TTFT p50 221 s; 66 and 14 s with both checks). After a running
request failed to allocate, the next step admits nothing, so it gets the blocks its
victims freed. A request that cannot fit the pools
even when they are empty raises :class:`SchedulerError`.

In ``mamba_cache_mode="align"`` a state group only checkpoints where a step ends on a
block boundary, so prefill chunks are cut to end on one (see ``align_block_size``).

No Python loop runs over blocks or over the running requests: their token counters
live in numpy arrays by slot (``request_table.py``), and the passes over every running
row run in Rust, one call each (``hybridkv._core.running_plan``: the rows' counters,
the one-token rows, decoding, planned in bulk, and the rows with more, which alone go
through the chunk rules one by one; ``block_growth``: the blocks the running rows add
per growing pool, for admission control; ``TokenLists.append``: each sampled token
onto its request's output). Computed counts advance in one vectorised update; the
admission arithmetic on one to three pools is plain ints. Per step: one
``get_computed_tokens`` call per admission round (usually one), one
``allocate_slots``, one ``append_tokens`` and one ``free``.

``external`` is the hook for a tier below the device cache (issue 8's offload): on
admission it is asked how many tokens beyond the device hit it can load; those tokens
are allocated in the same ``allocate_slots`` call but cost no token budget, and the
step output reports them (``num_external_tokens``) so a simulator can charge the
transfer instead of compute.

Layout (issue 16): this module is the step itself, ``schedule`` (admission rounds,
the single allocation, failure handling and preemption) and ``update_from_output``,
over one shared state; kept whole (about 1,000 lines with these docs) because the
admission, failure and preemption paths read and requeue the same queues and must be
read together. Apart: the public types and argument checks (``scheduler_api.py``),
the admission arithmetic and chunk rules (``chunk_rules.py``), the per-request
counters by slot (``request_table.py``) and the passes over every running row
(``rust/core/src/sched_step.rs``, through ``hybridkv._core``).
"""

from __future__ import annotations

import bisect
import heapq
import math
import operator
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from hybridkv._core import running_plan
from hybridkv.errors import (
    DuplicateRequestError,
    InvalidArgumentError,
    InvalidTokenError,
    UnknownRequestError,
)
from hybridkv.serving.chunk_rules import ChunkRules
from hybridkv.serving.request_table import (
    FINISHED,
    RUNNING,
    WAITING,
    Req,
    RequestTable,
    keep_rows,
)
from hybridkv.serving.scheduler_api import (
    _I64_MAX,
    _I64_MIN,
    _TOKEN_END,
    CHUNK_SPLITS,
    POLICIES,
    ExternalPrefixSource,
    FinishedRequest,
    KVManager,
    SchedulerError,
    SchedulerOutput,
    _int_arg,
    _is_int,
    check_prompt,
)

I64 = npt.NDArray[np.int64]
I32 = npt.NDArray[np.int32]
BoolArray = npt.NDArray[np.bool_]

_WAITING, _RUNNING, _FINISHED = WAITING, RUNNING, FINISHED
_Req = Req


#: Group kinds whose block tables grow with the sequence (when a group does not say).
_GROWING_KINDS = ("full_attention", "mla", "sparse_mla")


def _grows(g: Any) -> bool:
    grows = getattr(g, "grows", None)
    return bool(grows) if grows is not None else str(g.kind) in _GROWING_KINDS


def _inserted(a: I64, i: int, x: int) -> I64:
    """``a`` with ``x`` inserted before row ``i`` (``np.insert`` without its overhead)."""
    out = np.empty(a.shape[0] + 1, dtype=a.dtype)
    out[:i] = a[:i]
    out[i] = x
    out[i + 1 :] = a[i:]
    return out


def _i64(values: Iterable[int]) -> I64:
    return np.fromiter(values, dtype=np.int64)


_EMPTY = np.zeros(0, dtype=np.int64)
_REQ_ID = operator.attrgetter("req_id")
_SLOT = operator.attrgetter("slot")
_RANK = operator.attrgetter("rank_key")


class Scheduler(ChunkRules):
    """Continuous batching with chunked prefill, prefix hits and preemption by recompute.

    ``add_request`` queues a request, ``schedule`` plans (and allocates) one step,
    ``update_from_output`` takes that step's sampled tokens, appends them and retires
    finished requests. ``max_model_len`` (optional) rejects requests whose prompt plus
    ``max_tokens`` exceed it. ``block_size`` is the growing groups' block size, used only
    to estimate how many victims a failed allocation needs (default: taken from
    ``manager.plan``, else 16). ``align_block_size``: prefill chunks are cut to end on
    a multiple of it where one lies inside the chunk (the last few prompt tokens then
    run in the next step), so that a state group in ``mamba_cache_mode="align"`` records
    a checkpoint a later request (or this one, resumed) can hit; by default the state
    group's block size when ``manager.plan`` is in align mode, else no alignment.
    ``cut_at_shared_prefix`` (align mode): end the prefill chunk that crosses the point
    where ``manager.shared_prefix_boundary`` says a single group could have served more
    than the agreed hit (the first chunk or a later one: a long shared document's end
    often lies past the first), so the state checkpoints the shared prefix for later
    requests. Off
    by default: on the bundled traces it raised the agentic hit rate by 2 points but
    cost a step of latency per admission and, in a state pool with no spare slots,
    evicted more checkpoints than it made useful (chat: 0.475 -> 0.416).

    ``prompt_cut`` (align mode, hybridkv's split; 0: off): a prefill ends a chunk on the
    prompt's last multiple of it and runs the rest of the prompt whole, so its
    prompt-end checkpoint lies before a short final segment (a question after a long
    document) where later prompts sharing all but that segment branch: with a manager
    that keeps prompt ends only past ``prompt_keep_min`` (elastic arenas), where it
    keeps that one (or at the start of the prefill's last chunk when that lies close
    before it; ``chunk_rules.ChunkRules._chunk``), else when the prefill computes at
    least ``PROMPT_CUT_MIN`` multiples of it past both its hit and its shared-prefix
    boundary.

    ``chunk_split="vllm"`` cuts align-mode prefill chunks by vLLM 0.33's rule
    (``Scheduler._mamba_block_aligned_split``, default path: no fine-grained hits, no
    in-prefill checkpoints) instead: while the request is in prefill (computed below
    ``max(prompt, tokens - 1)``), a chunk ending before the prefill end is floored to a
    block boundary (to nothing, when that is not past its start and a block fits the
    prefill cap: the request then waits a step); a chunk starting mid-block stops at
    the next boundary; no chunk runs past the last block boundary before the final
    token (``(tokens - 1) // block * block``); and one stops at the shared-prefix
    boundary of its last lookup, block-floored, on every chunk (it implies
    ``cut_at_shared_prefix``).

    ``reserve_full_prompt`` (default on, as vLLM 0.33's ``scheduler_reserve_full_isl``):
    admit a waiting request only when its whole sequence fits the room left after the
    step's growth, not just its first chunk. ``reserve_running_prompts`` (default on;
    off for the ``vllm`` layout, as vLLM does not): that room also holds back the blocks
    the running prefills and the step's earlier admissions still add up to their token
    counts, so a new prompt never takes what a running prefill will need next step.

    With a manager whose groups share one pool (``manager.shared_pool``), admission
    control counts every group's new blocks against that pool's free count; likewise,
    in an elastic arena, for each pool the groups of one page class share
    (``manager.pool_of``), where the floors of its bounded groups (less what their
    running requests hold) are also held back from admission.

    A sliding-window (or chunked-local) group in an elastic pool of its own (the
    planner capped its floor) gets an *effective* floor every step
    (``manager.set_floor_needs``): per running or admitted request, the window blocks
    it holds with this step's chunk (at least one token), at most ``cdiv(prompt +
    max_tokens, block)``, summed and capped at the planned floor. The growing groups
    may use the rest. A request is admitted only while the growing pools' room covers
    what its window floor takes beyond the window pool's spare (``held_spare``), and
    only if the floor can then be reached (else the last admitted requests wait);
    where the running requests' floor cannot rise, their prefill chunks shrink to what
    the floor already held covers (one decode step always fits), so no running
    request starves. Off in align mode (state checkpoints fix the chunk ends there).
    """

    def __init__(
        self,
        manager: KVManager,
        *,
        max_num_batched_tokens: int,
        max_num_seqs: int,
        policy: str = "fcfs",
        long_prefill_token_threshold: int | None = None,
        max_model_len: int | None = None,
        block_size: int | None = None,
        external: ExternalPrefixSource | None = None,
        align_block_size: int | None = None,
        cut_at_shared_prefix: bool = False,
        chunk_split: str = "hybridkv",
        prompt_cut: int = 0,
        reserve_full_prompt: bool = True,
        reserve_running_prompts: bool = True,
    ) -> None:
        for name, v in (
            ("max_num_batched_tokens", max_num_batched_tokens),
            ("max_num_seqs", max_num_seqs),
        ):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise InvalidArgumentError(f"{name} must be a positive int, got {v!r}")
        if policy not in POLICIES:
            raise InvalidArgumentError(f"policy must be one of {POLICIES}, got {policy!r}")
        if chunk_split not in CHUNK_SPLITS:
            raise InvalidArgumentError(
                f"chunk_split must be one of {CHUNK_SPLITS}, got {chunk_split!r}"
            )
        if long_prefill_token_threshold is not None and long_prefill_token_threshold < 1:
            raise InvalidArgumentError("long_prefill_token_threshold must be >= 1")
        if max_model_len is not None and max_model_len < 1:
            raise InvalidArgumentError("max_model_len must be >= 1")
        self.manager = manager
        self.reserve_full_prompt = bool(reserve_full_prompt)
        self.reserve_running_prompts = bool(reserve_running_prompts)
        self.max_num_batched_tokens = max_num_batched_tokens
        self.max_num_seqs = max_num_seqs
        self.policy = policy
        self.chunk_cap = long_prefill_token_threshold or max_num_batched_tokens
        self.max_model_len = max_model_len
        plan = getattr(manager, "plan", None)
        # (index, group) of the growing groups. A hand-written ManagerConfig's groups
        # have no ``grows``/``index``: the kinds with unbounded tables grow.
        grow = [(i, g) for i, g in enumerate(plan.groups) if _grows(g)] if plan is not None else []
        if block_size is None and plan is not None:
            sizes = [g.block_size for _, g in grow] or [16]
            block_size = min(sizes)
        self.block_size = int(block_size or 16)
        # Growing pools, for admission control (block counts come from the plan): one
        # row per pool holding a growing group. A pool several groups share (vLLM's
        # shared pool: every group; an elastic arena: the groups of one page class)
        # counts the new blocks of all its groups (``_row_of`` maps those groups to
        # rows; a state group takes one block per new block boundary its request
        # crosses).
        self._shared = bool(getattr(manager, "shared_pool", False)) and plan is not None
        pool_of = getattr(manager, "pool_of", None) if plan is not None else None
        self._row_of: I64 | None = None
        if self._shared:
            assert plan is not None
            grow = list(enumerate(plan.groups))
            self._row_of = np.zeros(len(grow), dtype=np.int64)
        elif pool_of is not None and len(set(pool_of)) < len(pool_of) and grow:
            assert plan is not None
            pools = sorted({pool_of[getattr(g, "index", i)] for i, g in grow})
            grow = [
                (i, g)
                for i, g in enumerate(plan.groups)
                if pool_of[getattr(g, "index", i)] in pools
            ]
            self._row_of = np.asarray(
                [pools.index(pool_of[getattr(g, "index", i)]) for i, g in grow], dtype=np.int64
            )
        self._grow_idx = np.asarray([getattr(g, "index", i) for i, g in grow], dtype=np.int64)
        self._grow_bs = np.asarray([g.block_size for _, g in grow], dtype=np.int64)
        self._grow_blocks = np.asarray([g.num_blocks for _, g in grow], dtype=np.int64)
        self._grow_cap = np.asarray(
            [1 if g.kind == "state" and not _grows(g) else 1 << 62 for _, g in grow],
            dtype=np.int64,
        )
        # Elastic pools shared by a growing group and bounded ones: the bounded groups'
        # floors, less what their running requests hold, are held back from admission
        # (as their own pools held them before they shared one): (row, floor, block
        # size, blocks one request holds at most between steps).
        self._reserve: list[tuple[int, int, int, int]] = []
        if self._row_of is not None and not self._shared:
            for (_, g), row in zip(grow, self._row_of.tolist(), strict=True):
                floor = int(getattr(g, "floor_blocks", 0) or 0)
                most = getattr(g, "max_blocks_per_request", None)
                if _grows(g) or floor <= 0 or not most:
                    continue
                most = int(most)
                window = getattr(g, "window", None)
                if window:  # between steps: the blocks of its last window - 1 tokens
                    most = min(most, -(-(int(window) - 1) // int(g.block_size)) + 1)
                self._reserve.append((row, floor, int(g.block_size), most))
        # Elastic: a sliding-window (or chunked-local) group in a pool of its own (its
        # floor was capped) gets an effective floor each step: what its running and
        # admitted requests can still hold at once (``ChunkRules._window_floors``), so
        # the growing groups may use the rest of its planned floor. (group index,
        # reach: tokens one decode step's blocks span, block size, page bytes.)
        self._win: list[tuple[int, int, int, int]] = []
        self._win_pool: list[int] = []  # their pools
        # This step's floors after the running requests' call, and per window the
        # blocks its pool holds above them that no other pool could take.
        self._win_start: list[int] = []
        self._win_spare: list[int] = []
        self._floors = _EMPTY
        self._row_page: list[int] = []
        if (
            getattr(manager, "elastic", False)
            and hasattr(manager, "set_floor_needs")
            and plan is not None
            and pool_of is not None
            and not self._shared
        ):
            pools = list(pool_of)
            floors = [int(getattr(g, "floor_blocks", 0) or 0) for g in plan.groups]
            for i, g in enumerate(plan.groups):
                idx = int(getattr(g, "index", i))
                if _grows(g) or floors[i] <= 0 or pools.count(pools[idx]) != 1:
                    continue
                bs = int(g.block_size)
                window = getattr(g, "window", None)
                chunk = getattr(g, "chunk_size", None)
                if window:
                    reach = int(window) + bs - 2
                elif chunk:
                    reach = int(chunk) - 1 + bs - math.gcd(int(chunk), bs)
                else:
                    continue
                self._win.append((idx, reach, bs, int(g.page_size_bytes)))
            if self._win:
                self._floors = _i64(floors)
                self._win_pool = [pools[idx] for idx, _r, _b, _p in self._win]
        if self._row_of is not None and grow:
            # One row per pool: its first group's index and block count.
            first = np.unique(self._row_of, return_index=True)[1]
            self._grow_idx = self._grow_idx[first]
            self._grow_blocks = self._grow_blocks[first]
        if self._win:
            assert plan is not None
            # Per growing pool row: its page bytes (a window's blocks cost it this much).
            self._row_page = [
                int(plan.groups[int(k)].page_size_bytes) for k in self._grow_idx.tolist()
            ]
        self._free_at_start = np.zeros(len(self._grow_idx), dtype=np.int64)
        # The same as plain ints, for the admission arithmetic (``ChunkRules._need``).
        self._grow_pairs = list(zip(self._grow_bs.tolist(), self._grow_cap.tolist(), strict=True))
        self._rows = None if self._row_of is None else self._row_of.tolist()
        self.external = external
        if align_block_size is None and plan is not None:
            states = [g.block_size for g in plan.groups if g.kind == "state" and not _grows(g)]
            if states and plan.mamba_cache_mode == "align":
                align_block_size = states[0]
        #: Prefill chunks end on multiples of this (0: no alignment).
        self.align = int(align_block_size or 0)
        if self.align:
            # Effective window floors may cut prefill chunks (``_fit_window_chunks``),
            # which align mode's checkpoint cuts do not allow: planned floors there.
            self._win = []
        self.chunk_split = chunk_split
        self.cut_at_shared_prefix = bool(cut_at_shared_prefix) or chunk_split == "vllm"
        if isinstance(prompt_cut, bool) or not isinstance(prompt_cut, int) or prompt_cut < 0:
            raise InvalidArgumentError(f"prompt_cut must be an int >= 0, got {prompt_cut!r}")
        if prompt_cut and self.align and prompt_cut % self.align:
            raise InvalidArgumentError(
                f"prompt_cut must be a multiple of the align block size {self.align}, "
                f"got {prompt_cut}"
            )
        #: Align mode, hybridkv split: a long prefill ends a chunk on the prompt's last
        #: multiple of this (0: off; ``PROMPT_CUT_MIN``).
        self.prompt_cut = prompt_cut if self.align else 0
        keep = getattr(manager, "prompt_keep_min", 0)
        #: Align mode: a prefill ends a chunk on the prompt's last block boundary only
        #: when the manager keeps the checkpoint there (``chunk_rules.ChunkRules._chunk``).
        self.prompt_keep_min = keep if isinstance(keep, int) and self.align else 0
        self._prefill_cap = min(max_num_batched_tokens, self.chunk_cap)
        self._reqs: dict[int, _Req] = {}
        # Token counters by slot (``request_table.py``).
        self._table = RequestTable()
        self._running: list[_Req] = []  # kept in rank order
        # The running requests' slots and ids, row for row (``_set_running``).
        self._run_slots = _EMPTY
        self._run_ids = _EMPTY
        # The slots of the last step's sampling rows, in row order.
        self._sample_slots = _EMPTY
        self._sample_ids = _EMPTY  # and their ids
        self._waiting_fifo: deque[_Req] = deque()
        self._waiting_heap: list[tuple[int, int, int]] = []
        self._seq = 0
        self._step = 0
        self._last: SchedulerOutput | None = None
        self.finished: list[FinishedRequest] = []
        self.num_preemptions = 0
        #: Tokens resumed requests had computed before preemption and did not re-hit.
        self.recomputed_tokens = 0
        self._deferred: list[_Req] = []  # victims that run this step, preempted after it
        # Admissions per step: prefix lookups pin their hit blocks before allocation,
        # so after admissions fail for memory fewer are tried (then doubling back).
        self._admit_cap = max_num_seqs
        self._hold_admissions = False

    # -- queue ----------------------------------------------------------------------------

    def add_request(
        self,
        req_id: int,
        prompt_token_ids: npt.ArrayLike,
        max_tokens: int,
        *,
        priority: int = 0,
        eos_token_id: int | None = None,
        arrival_time: float = 0.0,
    ) -> None:
        """Queue a request: ``max_tokens`` tokens are generated unless ``eos_token_id``
        is sampled first. ``priority``: smaller runs first (policy ``"priority"``).

        Everything is checked here, before anything is queued: ``req_id``,
        ``max_tokens``, ``priority`` and ``eos_token_id`` must be integers (not bools or
        floats) in the int64 range, the prompt a non-empty 1-D array of integer token
        ids in ``0 .. 2**31 - 1`` (below the manager's ``vocab_size`` when it has one),
        ``arrival_time`` a finite number. A bad request raises
        :class:`~hybridkv.errors.InvalidArgumentError` (or ``InvalidTokenError``) and
        leaves every queue as it was."""
        rid = _int_arg(req_id, "request id")
        if rid in self._reqs:
            raise DuplicateRequestError(f"request {rid} is already queued or running")
        prompt = self._check_prompt(rid, prompt_token_ids)
        mt = _int_arg(max_tokens, "max_tokens", rid)
        if mt < 1:
            raise InvalidArgumentError(f"request {rid}: max_tokens must be >= 1, got {mt}")
        prio = _int_arg(priority, "priority", rid)
        eos = None if eos_token_id is None else _int_arg(eos_token_id, "eos_token_id", rid)
        if isinstance(arrival_time, bool) or not isinstance(
            arrival_time, (int, float, np.integer, np.floating)
        ):
            raise InvalidArgumentError(
                f"request {rid}: arrival_time must be a number, got {arrival_time!r}"
            )
        if not math.isfinite(float(arrival_time)):
            raise InvalidArgumentError(
                f"request {rid}: arrival_time must be finite, got {arrival_time!r}"
            )
        total = prompt.shape[0] + mt
        if self.max_model_len is not None and total > self.max_model_len:
            raise InvalidArgumentError(
                f"request {rid}: prompt {prompt.shape[0]} + max_tokens {mt} = "
                f"{total} exceeds max_model_len {self.max_model_len}"
            )
        r = _Req(self._table, rid, prompt, mt, prio, self._seq, eos, float(arrival_time))
        self._seq += 1
        self._reqs[rid] = r
        self._push_waiting(r, front=False)

    def _token_end(self) -> int:
        """One past the largest token id the manager accepts."""
        hi = _TOKEN_END
        vocab: Any = getattr(self.manager, "vocab_size", None)
        if _is_int(vocab) and 0 < int(vocab) < hi:
            hi = int(vocab)
        return hi

    def _check_prompt(self, rid: int, prompt_token_ids: npt.ArrayLike) -> I32:
        return check_prompt(rid, prompt_token_ids, self._token_end())

    def _push_waiting(self, r: _Req, *, front: bool) -> None:
        r.status = _WAITING
        if self.policy == "priority":
            heapq.heappush(self._waiting_heap, (r.priority, r.seq, r.req_id))
        elif front:
            self._waiting_fifo.appendleft(r)
        else:
            self._waiting_fifo.append(r)

    def _pop_waiting(self) -> _Req | None:
        if self.policy == "priority":
            if not self._waiting_heap:
                return None
            return self._reqs[heapq.heappop(self._waiting_heap)[2]]
        return self._waiting_fifo.popleft() if self._waiting_fifo else None

    @property
    def num_waiting(self) -> int:
        return len(self._waiting_heap) + len(self._waiting_fifo)

    @property
    def num_running(self) -> int:
        return len(self._running)

    def has_unfinished(self) -> bool:
        """Whether any request is waiting or running."""
        return bool(self._reqs)

    def running_ids(self) -> I64:
        return self._run_ids.copy()

    def num_output_tokens(self, req_id: int) -> int:
        return self._table.outs.len_of(self._get(req_id).slot)

    def _set_running(self, running: list[_Req]) -> None:
        """Replace the running list (rank order), its slots and ids with it."""
        self._running = running
        n = len(running)
        self._run_slots = np.fromiter(map(_SLOT, running), np.int64, n)
        self._run_ids = np.fromiter(map(_REQ_ID, running), np.int64, n)

    def _keep_running(self, keep: BoolArray) -> None:
        """Keep the running rows where ``keep`` is set."""
        self._running = keep_rows(self._running, keep)
        self._run_slots = self._run_slots[keep]
        self._run_ids = self._run_ids[keep]

    def _insert_running(self, joined: list[_Req]) -> None:
        """Insert the requests ``joined`` at their ranks (the list stays in rank order:
        no re-sort). Usually they rank after every running request (new arrivals under
        ``"fcfs"``): then the list and its arrays are extended once."""
        running = self._running
        joined = sorted(joined, key=_RANK)
        if not running or running[-1].rank_key < joined[0].rank_key:
            running.extend(joined)
            self._run_slots = np.concatenate(
                [self._run_slots, np.array([r.slot for r in joined], dtype=np.int64)]
            )
            self._run_ids = np.concatenate(
                [self._run_ids, np.array([r.req_id for r in joined], dtype=np.int64)]
            )
            return
        for r in joined:
            i = bisect.bisect_right(running, r.rank_key, key=_RANK)
            running.insert(i, r)
            self._run_slots = _inserted(self._run_slots, i, r.slot)
            self._run_ids = _inserted(self._run_ids, i, r.req_id)

    def _get(self, req_id: int) -> _Req:
        r = self._reqs.get(int(req_id))
        if r is None:
            raise UnknownRequestError(f"request {req_id} is not queued or running")
        return r

    # -- one step -------------------------------------------------------------------------

    def schedule(self) -> SchedulerOutput:
        """Plan one step and allocate its slots (one ``allocate_slots`` call)."""
        if self._last is not None:
            raise InvalidArgumentError("update_from_output() must follow every schedule()")
        cap = self.chunk_cap
        # Running requests first, in rank order (the per-request chunk rules).
        run_sel, run_n, run_c, run_t, budget = self._plan_running(self.max_num_batched_tokens)
        running = self._running
        n_run = run_sel.shape[0]  # the batch: these running rows, then `admitted`
        new_tokens: list[int] = []  # admitted requests' rows, after the running ones
        computed: list[int] = []
        external: list[int] = []

        admitted: list[_Req] = []
        admit_hits: list[int] = []
        slots = min(self.max_num_seqs - len(self._running), self._admit_cap)
        if self._hold_admissions:
            # Running requests failed to allocate last step and victims were preempted
            # for them: let them allocate before any lookup pins blocks (a resumed
            # victim's re-hit would take back exactly the blocks they wait for).
            slots = 0
        # Free blocks per growing pool left once the running requests have grown.
        if not self.num_waiting:
            slots = 0
        win_now: list[int] = []  # the capped windows' effective floors
        win_held: list[int] = []  # what running and admitted requests hold (uncapped)
        adm_holds: list[list[int]] = []  # each admitted request's share of it
        if self._win:
            # The running requests' effective window floors for this step's chunks,
            # before the room counts what they leave. Where a pool cannot reach them,
            # the prefill chunks shrink to what the floors already held cover (each
            # request's base: at most last step's floors), so nobody starves.
            run_all = np.zeros(self._run_slots.shape[0], dtype=np.int64)
            run_all[run_sel] = run_n
            win_held = self._window_holds(self._run_slots, run_all)
            win_now = self._window_floors(win_held)
            if not self.manager.set_floor_needs(self._floor_needs(win_now)):
                # What each window pool can reach now: what it holds plus what it
                # could take (``obtainable_blocks`` less its free blocks); the
                # unscheduled running requests' bases come off first.
                got = self.manager.obtainable_blocks()
                free = self.manager.free_blocks()
                present = self.manager.present_blocks()
                idle = np.ones(self._run_slots.shape[0], dtype=bool)
                idle[run_sel] = False
                rest = self._window_floors(self._window_holds(self._run_slots[idle], run_all[idle]))
                reach = [
                    int(present[i] + got[i] - free[i]) - r
                    for (i, _a, _b, _p), r in zip(self._win, rest, strict=True)
                ]
                sel = self._run_slots[run_sel]
                for cut in (reach, None):
                    run_n = self._fit_window_chunks(sel, run_n, cut)
                    run_all[run_sel] = run_n
                    win_held = self._window_holds(self._run_slots, run_all)
                    win_now = self._window_floors(win_held)
                    if self.manager.set_floor_needs(self._floor_needs(win_now)):
                        break
            self._win_start = win_now
            held = self.manager.held_spare()
            self._win_spare = [int(held[self._win_pool[k]]) for k in range(len(self._win))]
        room_arr = self._room(run_c, run_n) if slots > 0 and budget > 0 else None
        # Plain ints from here on (one entry per growing pool: numpy on one to three
        # entries costs more than the arithmetic); ``start``: the free counts ``room``
        # was last brought up to date with.
        room = None if room_arr is None else room_arr.tolist()
        # What the running prefills still need past this step (their prompts' rest):
        # held back from the whole-sequence check, not from the chunk itself.
        hold_rest = room is not None and self.reserve_full_prompt and self.reserve_running_prompts
        pend = self._pending(run_sel, run_n) if hold_rest else [0] * self._grow_idx.shape[0]
        start = self._free_at_start.tolist()
        full = False
        per_round = slots  # lowered to 1 when other candidates' pins crowd out the head
        while budget > 0 and slots > 0 and not full:
            cands = self._take_candidates(min(slots, per_round), budget)
            if not cands:
                break
            ids = _i64(r.req_id for r in cands)
            fresh = [r for r in cands if not r.known]
            if fresh:
                try:
                    self.manager.add_requests(
                        _i64(r.req_id for r in fresh), [self._tokens(r) for r in fresh], None
                    )
                except Exception:
                    # The manager refused the batch (and changed nothing): nothing is
                    # allocated yet this step, so give back the pins of the requests
                    # admitted in earlier rounds and requeue them and the candidates
                    # in order: no queue loses a request.
                    back = [*admitted, *cands]
                    if admitted:
                        self.manager.preempt(_i64(r.req_id for r in admitted))
                    for r in reversed(back):
                        r.num_computed = 0
                        self._push_waiting(r, front=True)
                    raise
                for r in fresh:
                    r.known = True
            hits = np.asarray(self.manager.get_computed_tokens(ids), dtype=np.int64)
            ext = (
                np.asarray(self.external.lookup(ids, hits), dtype=np.int64).tolist()
                if self.external is not None
                else [0] * len(cands)
            )
            # Align mode: where a single group could serve more than the agreed hit,
            # the prefix is shared but the state has no checkpoint there yet. Ending
            # the first chunk on that boundary records one, so the next request with
            # the same prefix hits all of it.
            bounds = (
                np.asarray(self.manager.shared_prefix_boundary(ids), dtype=np.int64).tolist()
                if self.cut_at_shared_prefix
                and self.align
                and hasattr(self.manager, "shared_prefix_boundary")
                else [0] * len(cands)
            )
            if room is not None:
                # The lookups just pinned hit blocks that were free: count them out.
                now = self._free_blocks().tolist()
                room = [a + b - f for a, b, f in zip(room, now, start, strict=True)]
                start = now
            leftovers: list[_Req] = []
            head_blocked = False
            for r, h, x, b in zip(cands, hits.tolist(), ext, bounds, strict=True):
                # At least the last token is computed: its logits give the next token.
                x = max(0, min(x, r.num_tokens - 1 - h))
                n = min(r.num_tokens - h - x, budget, cap)
                if full or n <= 0 or slots <= 0:
                    leftovers.append(r)
                    continue
                r.boundary = b
                r.hit = h + x
                if self.align and self.chunk_split == "vllm":
                    n = self._vllm_split(r, h + x, n)
                    if n <= 0:
                        # vLLM: no block-aligned chunk fits the budget; admission stops.
                        full = True
                        leftovers.append(r)
                        continue
                elif n > 1 and self.align:
                    n = self._chunk(r, h + x, n)
                win_cost: list[int] = []
                if self._win:
                    # A window floor rising for this request takes memory the growing
                    # pools could otherwise use: count it against their room.
                    mine = self._window_holds(_i64([r.slot]), _i64([n + x]))
                    held_next = [a + b for a, b in zip(win_held, mine, strict=True)]
                    win_next = self._window_floors(held_next)
                    win_cost = self._window_cost(win_now, win_next)
                if room is not None:
                    if self._win:
                        room = [f - w for f, w in zip(room, win_cost, strict=True)]
                    need = self._need(h, h + n + x)
                    # Its whole sequence must fit beside what running prefills still need.
                    refused = self.reserve_full_prompt and any(
                        a + p > f
                        for a, p, f in zip(self._need(h, r.num_tokens), pend, room, strict=True)
                    )
                    if not refused and any(a > f for a, f in zip(need, room, strict=True)):
                        # Shrink the chunk to what fits; if nothing does, admission
                        # stops here (strict queue order: a large request is not
                        # starved by smaller ones behind it).
                        fit = self._fit(h, np.asarray(room, dtype=np.int64)) - h - x
                        if fit >= 1 and self.align and self.chunk_split == "vllm":
                            fit = self._vllm_split(r, h + x, fit)
                        elif fit >= 1 and self.align and fit > 1:
                            fit = self._aligned(h + x, fit)
                        refused = fit < 1
                        if not refused:
                            n = min(n, fit)
                            need = self._need(h, h + n + x)
                    if refused:
                        full = True
                        head_blocked = not leftovers and r is cands[0]
                        leftovers.append(r)
                        if self._win:  # its window floor's rise does not happen
                            room = [f + w for f, w in zip(room, win_cost, strict=True)]
                        continue
                    room = [f - a for f, a in zip(room, need, strict=True)]
                    if hold_rest:  # its own rest is held back from later admissions
                        rest = self._need(h + n + x, r.num_tokens)
                        pend = [p + k for p, k in zip(pend, rest, strict=True)]
                r.num_computed = h
                if self._win:
                    win_now, win_held = win_next, held_next
                    adm_holds.append(mine)
                new_tokens.append(n + x)
                computed.append(h)
                external.append(x)
                admitted.append(r)
                admit_hits.append(h + x)
                budget -= n
                slots -= 1
            if leftovers:
                # Their lookups touched hit blocks; give them back and requeue in order.
                self.manager.preempt(_i64(r.req_id for r in leftovers))
                for r in reversed(leftovers):
                    r.num_computed = 0
                    self._push_waiting(r, front=True)
                if head_blocked and len(cands) > 1 and per_round > 1:
                    # The pins of the candidates behind it may be what crowded the
                    # head out: look it up again alone.
                    per_round = 1
                    full = False
                    assert room is not None
                    now = self._free_blocks().tolist()
                    room = [a + b - f for a, b, f in zip(room, now, start, strict=True)]
                    start = now
                    continue
                if head_blocked and not n_run and not admitted and not self._running:
                    head = cands[0]
                    raise SchedulerError(
                        f"request {head.req_id} ({head.num_tokens} tokens) does not fit the "
                        "KV-cache pools even when they are empty"
                    )
                break

        if self._win and admitted:
            # Raise the window floors for the admitted requests; where a pool cannot
            # reach its floor, the last admitted requests wait (no running request may
            # starve for its window).
            while admitted and not self.manager.set_floor_needs(self._floor_needs(win_now)):
                r = admitted.pop()
                win_held = [a - b for a, b in zip(win_held, adm_holds.pop(), strict=True)]
                win_now = self._window_floors(win_held)
                for lst in (new_tokens, computed, external, admit_hits):
                    lst.pop()
                self.manager.preempt(_i64([r.req_id]))
                r.num_computed = 0
                self._push_waiting(r, front=True)

        every = n_run == len(running)  # every running request runs (the usual step)
        ids = self._run_ids.copy() if every else self._run_ids[run_sel]  # the output's own
        slots_arr = self._run_slots if every else self._run_slots[run_sel]
        n_arr, c_arr, t_arr = run_n, run_c, run_t
        if admitted:
            # The admitted rows follow the running ones: one conversion for all columns.
            adm = np.array(
                [
                    [r.req_id for r in admitted],
                    [r.slot for r in admitted],
                    new_tokens,
                    computed,
                    [r.num_tokens for r in admitted],
                ],
                dtype=np.int64,
            )
            ids = np.concatenate([ids, adm[0]])
            slots_arr = np.concatenate([slots_arr, adm[1]])
            n_arr = np.concatenate([n_arr, adm[2]])
            c_arr = np.concatenate([c_arr, adm[3]])
            t_arr = np.concatenate([t_arr, adm[4]])
        ok = (
            np.asarray(self.manager.allocate_slots(ids, n_arr), dtype=bool)
            if ids.shape[0]
            else np.zeros(0, dtype=bool)
        )
        all_kept = bool(ok.all())
        preempted: list[_Req] = []
        if not all_kept:
            batch = [*(running[i] for i in run_sel.tolist()), *admitted]
            preempted = self._handle_failures(batch, n_arr, ok, admitted)
        else:  # every row allocated (``_handle_failures``' first case, inline)
            self._hold_admissions = False
            self._admit_cap = min(self.max_num_seqs, 2 * self._admit_cap)

        keep = ok
        n_kept = n_arr if all_kept else n_arr[keep]
        kept_slots = slots_arr if all_kept else slots_arr[keep]
        # Computed counts advance by the step's tokens (slots are unique in a batch).
        self._table.num_computed[kept_slots] += n_kept
        samples = (c_arr + n_arr == t_arr)[keep]
        out_ids = ids if all_kept else ids[keep]
        self._sample_slots = kept_slots[samples]
        self._sample_ids = out_ids[samples]

        new_ids: list[int] = []
        new_lens: list[int] = []
        new_hits: list[int] = []
        res_ids: list[int] = []
        res_hits: list[int] = []
        # Admitted requests are the batch's last rows: only their outcomes matter here.
        adm_ok = ok[n_run:].tolist()
        joined: list[_Req] = []
        for r, h, good in zip(admitted, admit_hits, adm_ok, strict=True):
            if not good:
                continue
            r.status = _RUNNING
            joined.append(r)
            if r.started:
                res_ids.append(r.req_id)
                res_hits.append(h)
                self.recomputed_tokens += max(0, r.lost - h)
            else:
                new_ids.append(r.req_id)
                new_lens.append(r.prompt_len)
                new_hits.append(h)
            r.started = True
        if joined:
            # The running list stays in rank order (insertions, not a re-sort).
            self._insert_running(joined)

        ext_arr = (
            np.concatenate(
                [np.zeros(run_n.shape[0], dtype=np.int64), np.asarray(external, dtype=np.int64)]
            )[keep]
            if any(external)
            else np.zeros(n_kept.shape[0], dtype=np.int64)
        )
        out = SchedulerOutput(
            step=self._step,
            req_ids=out_ids,
            num_new_tokens=n_kept,
            num_computed_before=c_arr if all_kept else c_arr[keep],
            num_external_tokens=ext_arr,
            samples=samples,
            new_req_ids=_i64(new_ids),
            new_prompt_lens=_i64(new_lens),
            new_hit_tokens=_i64(new_hits),
            resumed_req_ids=_i64(res_ids),
            resumed_hit_tokens=_i64(res_hits),
            preempted_req_ids=_i64(r.req_id for r in preempted) if preempted else _EMPTY,
            num_running=len(self._running),
            num_waiting=self.num_waiting,
        )
        self._step += 1
        self._last = out
        return out

    def _plan_running(self, budget: int) -> tuple[I64, I64, I64, I64, int]:
        """This step's chunks of the running requests, in rank order, within ``budget``
        tokens: ``(rows, num_new, computed, num_tokens, budget left)`` where ``rows``
        index ``self._running`` (requests with a chunk of at least one token).

        A request takes ``min(remaining, budget left, chunk cap)`` tokens, cut by the
        align-mode chunk rule; once the budget is spent nobody else runs. A request
        with one token left (decoding, or the last prompt token) takes exactly that
        token (no chunk rule shortens a one-token chunk), so those are counted off in
        bulk and only the others go through the rules one by one."""
        running = self._running
        nr = len(running)
        # One pass in Rust over the running rows: their counters, the one-token rows
        # (n[i] = 1) and the rows with more, with the one-token rows before each.
        table = self._table
        c, t, n, multi, ones_before, ones = running_plan(
            table.num_computed, table.num_tokens, self._run_slots
        )
        stop = nr  # rows from here on get nothing (the budget ran out before them)
        pos = 0  # the first row not yet counted off
        counted = 0  # one-token rows before ``pos``
        vllm_split = self.align and self.chunk_split == "vllm"
        for i, before in zip([*multi, nr], [*ones_before, ones], strict=True):
            k = before - counted  # one-token rows in [pos, i)
            if k >= budget:
                # The budget runs out inside this run of one-token rows: the last to
                # run is the budget-th of them.
                stop = pos + int((n[pos:i] == 1).nonzero()[0][budget - 1]) + 1
                budget = 0
                break
            budget -= k
            counted = before
            if i == nr:
                break
            ci = int(c[i])
            m = min(int(t[i]) - ci, budget, self.chunk_cap)
            if vllm_split:
                m = self._vllm_split(running[i], ci, m)
            elif m > 1 and self.align:
                m = self._chunk(running[i], ci, m)
            m = max(m, 0)
            n[i] = m
            budget -= m
            pos = i + 1
            if budget == 0:
                stop = pos
                break
        if stop < nr:
            n[stop:] = 0
        rows = n.nonzero()[0]
        if rows.shape[0] == nr:  # every running request runs (the usual step)
            return rows, n, c, t, budget
        return rows, n[rows], c[rows], t[rows], budget

    def _tokens(self, r: _Req) -> I32:
        if not self._table.outs.len_of(r.slot):
            return r.prompt
        return np.concatenate([r.prompt, np.asarray(r.output, dtype=np.int32)])

    def _take_candidates(self, slots: int, budget: int) -> list[_Req]:
        """Waiting requests for one admission round: as many as would fit the budget
        with no prefix hit, at least one (hits usually make room for another round)."""
        out: list[_Req] = []
        need = 0
        while len(out) < slots:
            r = self._pop_waiting()
            if r is None:
                break
            out.append(r)
            need += min(r.num_tokens, self.chunk_cap)
            if need >= budget:
                break
        return out

    def _handle_failures(
        self, batch: list[_Req], n_arr: I64, ok: BoolArray, admitted: list[_Req]
    ) -> list[_Req]:
        """Requeue failed admissions; preempt for failed running requests."""
        self._hold_admissions = False
        if bool(ok.all()):
            self._admit_cap = min(self.max_num_seqs, 2 * self._admit_cap)
            return []
        admitted_ids = {r.req_id for r in admitted}
        failed_new: list[_Req] = []
        failed_running: list[tuple[_Req, int]] = []
        for r, n, good in zip(batch, n_arr.tolist(), ok.tolist(), strict=True):
            if good:
                continue
            if r.req_id in admitted_ids:
                failed_new.append(r)
            else:
                failed_running.append((r, n))
        if failed_new:
            self.manager.preempt(_i64(r.req_id for r in failed_new))
            for r in reversed(failed_new):
                r.num_computed = 0
                self._push_waiting(r, front=True)
            lone = len(admitted) == 1
            self._admit_cap = max(1, len(admitted) - len(failed_new))
            if lone and not self._running and not bool(ok.any()):
                # Alone, with nothing else holding memory: it can never fit.
                head = failed_new[0]
                raise SchedulerError(
                    f"request {head.req_id} ({head.num_tokens} tokens) does not fit the "
                    "KV-cache pools even when they are empty"
                )
        if not failed_running:
            return []
        failed_ids = {r.req_id for r in failed_new}
        succeeded_new = [r for r in admitted if r.req_id not in failed_ids]
        if len(self._running) == 1 and not succeeded_new:
            # The only request holding memory cannot grow: it never fits.
            only = failed_running[0][0]
            raise SchedulerError(
                f"request {only.req_id} ({only.num_tokens} tokens) does not fit the "
                "KV-cache pools even when they are empty"
            )
        self._hold_admissions = True
        # Victims, lowest priority first, among running requests and this step's
        # successful admissions.
        pool = sorted([*self._running, *succeeded_new], key=_Req.rank, reverse=True)
        victims: list[_Req] = []
        taken: set[int] = set()
        bs = self.block_size
        for r, n in failed_running:  # highest priority first (batch order)
            if r.req_id in taken:
                continue
            need = -(-(r.num_computed + n) // bs) - (-(-r.num_computed // bs))
            freed = 0
            for v in pool:
                if freed >= max(need, 1):
                    break
                if v.req_id in taken:
                    continue
                if v.rank() <= r.rank():
                    break  # nothing ranks below r: preempt r itself
                victims.append(v)
                taken.add(v.req_id)
                freed += -(-v.num_computed // bs)
            if freed < max(need, 1) and r.req_id not in taken:
                victims.append(r)
                taken.add(r.req_id)
        # A victim allocated in this step keeps its step: the blocks just allocated for
        # it are already cached under their hashes, so they must really be computed.
        # It is preempted when the step ends (update_from_output); the others now.
        in_step = {r.req_id for r, good in zip(batch, ok.tolist(), strict=True) if good}
        self._preempt([v for v in victims if v.req_id not in in_step])
        self._deferred = [v for v in victims if v.req_id in in_step]
        return victims

    def _preempt(self, victims: Sequence[_Req]) -> None:
        if not victims:
            return
        self.manager.preempt(_i64(v.req_id for v in victims))
        gone = {v.req_id for v in victims}
        self._set_running([r for r in self._running if r.req_id not in gone])
        for v in reversed(victims):  # the highest-ranked victim ends up at the front
            v.lost = v.num_computed
            v.num_preemptions += 1
            self.num_preemptions += 1
            v.num_computed = 0
            self._push_waiting(v, front=True)

    def preempt(self, req_ids: Iterable[int]) -> None:
        """Preempt running requests by recompute now (engines: e.g. to make room)."""
        if self._last is not None:
            raise InvalidArgumentError("preempt() between schedule() and update_from_output()")
        rs = [self._get(i) for i in req_ids]
        for r in rs:
            if r.status != _RUNNING:
                raise InvalidArgumentError(f"request {r.req_id} is not running")
        self._preempt(sorted(rs, key=_Req.rank, reverse=True))

    def update_from_output(
        self, sampled_token_ids: Mapping[int, int] | npt.ArrayLike
    ) -> list[FinishedRequest]:
        """Record the step's sampled tokens: a mapping ``req_id -> token`` or an array
        aligned with ``output.sample_req_ids``. Returns the requests that finished."""
        out = self._last
        if out is None:
            raise InvalidArgumentError("update_from_output() without a schedule()")
        sample_ids = self._sample_ids
        tok_arr: I64 | None = None
        if isinstance(sampled_token_ids, Mapping):
            try:
                toks = [int(sampled_token_ids[i]) for i in sample_ids.tolist()]
            except KeyError as e:
                raise InvalidArgumentError(f"no sampled token for request {e}") from None
        else:
            arr = np.asarray(sampled_token_ids).reshape(-1)
            if arr.shape[0] != sample_ids.shape[0]:
                raise InvalidArgumentError(
                    f"{arr.shape[0]} sampled tokens for {sample_ids.shape[0]} sampling requests"
                )
            if arr.dtype.kind == "i":  # the usual case: no value can leave int64
                tok_arr = arr.astype(np.int64)
            else:
                toks = arr.tolist() if arr.dtype.kind == "u" else [int(t) for t in arr.tolist()]
        slots = self._sample_slots
        if tok_arr is None:
            try:
                tok_arr = np.asarray(toks, dtype=np.int64)
            except OverflowError:
                bad = next(t for t in toks if not _I64_MIN <= t <= _I64_MAX)
                raise InvalidTokenError(f"sampled token id {bad} is out of range") from None
        # One Rust pass: which requests finish (by length, or by their stop token),
        # the continuing ones' tokens checked (they go to the manager: a bad one
        # changes nothing), then every token recorded and every count advanced.
        hi = self._token_end()
        fin_rows, by_length, bad = self._table.record_sampled(slots, tok_arr, hi)
        if bad >= 0:
            raise InvalidTokenError(
                f"request {int(sample_ids[bad])}: sampled token id {int(tok_arr[bad])} is "
                f"out of range (0 <= id < {hi})"
            )
        self._last = None
        done: list[FinishedRequest] = []
        cont_ids, cont_toks = sample_ids, tok_arr
        if fin_rows:
            reqs = self._reqs
            for rid, length in zip(sample_ids[fin_rows].tolist(), by_length, strict=True):
                r = reqs[rid]
                reason = "length" if length else "stop"
                output = self._table.outs.take(r.slot)
                done.append(FinishedRequest(rid, output, r.prompt_len, r.num_preemptions, reason))
            cont = np.ones(sample_ids.shape[0], dtype=bool)
            cont[fin_rows] = False
            cont_ids, cont_toks = sample_ids[cont], tok_arr[cont]
        if cont_ids.shape[0]:
            n = cont_ids.shape[0]
            self.manager.append_tokens(
                cont_ids, cont_toks.astype(np.int32), np.arange(n + 1, dtype=np.int64)
            )
        if done:
            gone = [f.req_id for f in done]
            self.manager.free(_i64(gone))
            keep = np.ones(self._run_ids.shape[0], dtype=bool)
            for rid in gone:  # a step finishes a few requests: one pass each
                keep &= self._run_ids != rid
            self._keep_running(keep)
            for f in done:
                r = self._reqs.pop(f.req_id)
                r.status = _FINISHED
                self._table.give_back(r.slot)
            self.finished.extend(done)
        if self._deferred:
            victims = [v for v in self._deferred if v.status == _RUNNING]
            self._deferred = []
            self._preempt(victims)
        return done


__all__ = [
    "POLICIES",
    "ExternalPrefixSource",
    "FinishedRequest",
    "KVManager",
    "Scheduler",
    "SchedulerError",
    "SchedulerOutput",
]
