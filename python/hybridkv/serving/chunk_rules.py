"""Admission arithmetic and chunk rules of the scheduler (a mixin of
:class:`~hybridkv.serving.scheduler.Scheduler`): free blocks per growing pool, the
blocks a chunk needs, the longest chunk that fits, the room left after the running
requests grow, and the align-mode chunk cuts (hybridkv's and vLLM 0.33's rule).

Pure functions of the scheduler's configuration and the pools' free counts: they
decide how many tokens a request may take, never which request runs (that policy
stays in ``scheduler.py``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from hybridkv._core import block_growth
from hybridkv.serving.request_table import Req, RequestTable

I64 = npt.NDArray[np.int64]


#: ``prompt_cut`` applies to prefills computing at least this many multiples of it
#: past both their hit and their shared-prefix boundary (long new content: 8192 tokens
#: at the simulator's 256). Measured (Qwen3-Next, 16 GiB): at 4 the bundled chat
#: trace's first 120 requests hit 0.879 (0.867 at 32) but the whole trace 0.693
#: (0.726 at 32, as without the cut); docqa (first 120) hits 0.934 at both (0.901
#: without the cut).
PROMPT_CUT_MIN = 32


def _blocks_between(c: Any, e: Any, bs: I64, cap: I64) -> I64:
    """Blocks of size ``bs`` a request adds going from ``c`` to ``e`` computed tokens
    (``cdiv(e) - cdiv(c)``), capped at a pool's per-request ``cap``; broadcasts."""
    need: I64 = np.minimum(-(-e // bs) + (-c // bs), cap)  # ceil(e/bs) - ceil(c/bs)
    return need


class ChunkRules:
    """Set by :class:`~hybridkv.serving.scheduler.Scheduler`'s constructor."""

    manager: Any
    align: int
    prompt_cut: int
    prompt_keep_min: int
    _prefill_cap: int
    _shared: bool
    _row_of: I64 | None
    _reserve: list[tuple[int, int, int, int]]
    _grow_idx: I64
    _grow_bs: I64
    _grow_blocks: I64
    _grow_cap: I64
    _free_at_start: I64
    _grow_pairs: list[tuple[int, int]]
    _rows: list[int] | None
    reserve_full_prompt: bool
    _win: list[tuple[int, int, int, int]]
    _floors: I64
    _win_start: list[int]
    _win_spare: list[int]
    _row_page: list[int]
    _table: RequestTable
    max_num_batched_tokens: int
    _run_slots: I64

    def _free_blocks(self) -> I64:
        """Free blocks of each growing pool (from ``manager.usage()``; an elastic
        manager's ``obtainable_blocks()`` also counts memory it can take over)."""
        obtainable = getattr(self.manager, "obtainable_blocks", None)
        if getattr(self.manager, "elastic", False) and obtainable is not None:
            got = np.asarray(obtainable(), dtype=np.int64)
            return got[self._grow_idx]
        free_blocks = getattr(self.manager, "free_blocks", None)
        if free_blocks is not None:
            # The pools' free counts themselves (what the usage fractions encode).
            got = np.asarray(free_blocks(), dtype=np.int64)
            return got[self._grow_idx]
        used = np.asarray(self.manager.usage(), dtype=np.float64)[self._grow_idx]
        return np.rint((1.0 - used) * (self._grow_blocks - 1)).astype(np.int64)

    def _blocks_needed(self, c: int, n: int) -> I64:
        """Blocks each growing pool needs to go from ``c`` to ``c + n`` computed tokens
        (a pool several groups share: the sum over its groups)."""
        need = _blocks_between(c, c + n, self._grow_bs, self._grow_cap)
        if self._row_of is not None:
            return np.bincount(self._row_of, weights=need, minlength=self._grow_idx.size).astype(
                np.int64
            )
        return need

    def _need(self, c: int, e: int) -> list[int]:
        """``_blocks_needed(c, e - c)`` as plain ints (admission works on one to three
        pools: Python arithmetic beats numpy there)."""
        need = [min(-(-e // bs) + (-c // bs), cap) for bs, cap in self._grow_pairs]
        rows = self._rows
        if rows is None:
            return need
        out = [0] * self._grow_idx.shape[0]
        for row, k in zip(rows, need, strict=True):
            out[row] += k
        return out

    def _fit(self, h: int, room: I64) -> int:
        """The most computed tokens a request hit at ``h`` reaches within ``room``."""
        bs = self._grow_bs
        if self._row_of is None:
            return int(np.min((-(-h // bs) + room) * bs))
        # Shared pools: grow while every summed need fits (needs rise with the end).
        lo, hi = h, h + max(int(room.max()), 0) * int(bs.max()) + 1
        while lo < hi:  # largest e with need(h, e - h) <= room
            mid = (lo + hi + 1) // 2
            if bool(np.all(self._blocks_needed(h, mid - h) <= room)):
                lo = mid
            else:
                hi = mid - 1
        return lo

    def _room(self, c: I64, n: I64) -> I64 | None:
        """Free growing-pool blocks after the running requests' growth this step (from
        ``c`` computed by ``n`` tokens each) and, in a shared elastic pool, beside the
        floors its bounded groups do not hold yet; ``None`` when the manager does not
        report usage (no admission control)."""
        if self._grow_idx.size == 0 or not hasattr(self.manager, "usage"):
            return None
        self._free_at_start = self._free_blocks()
        room = self._free_at_start.copy()
        if c.size:
            # Each growing group's new blocks over every running row: one pass in Rust.
            per_group = block_growth(c, n, self._grow_bs, self._grow_cap)
            rows = self._rows
            if rows is None:
                room -= np.asarray(per_group, dtype=np.int64)
            else:
                for row, k in zip(rows, per_group, strict=True):
                    room[row] -= k
        # A bounded group's floor in a shared elastic pool, less what it holds; not with
        # the whole-sequence check, which already counts a new request's window blocks
        # (as many as its full group's, more than a window holds): holding the floor of
        # requests not yet running back on top made gpt-oss-20b (window and full in one
        # pool) at 8 GiB on the Mooncake hour wait 27.9/59.3 s (TTFT p50/p99) where the
        # vllm layout, the same pool without the hold, waits 9.8/27.9 s.
        for row, floor, bs, most in [] if self.reserve_full_prompt else self._reserve:
            held = int(np.minimum(-(-c // bs), most).sum()) if c.size else 0
            room[row] -= max(floor - held, 0)
        return room

    def _window_holds(self, slots: I64, n: I64) -> list[int]:
        """Per capped window group (``_win``): the blocks the requests in ``slots`` can
        hold at once this step, with ``n`` new tokens each (0: not scheduled); a sum
        over requests, so admissions add theirs (``_window_floors`` caps it).

        A request that takes ``n`` tokens holds at most ``min(cdiv(A + n, b), cdiv(T,
        b))`` window blocks (``models/window_bound.py``: ``A`` the reach, ``T`` its
        prompt plus ``max_tokens``). Unscheduled ones count as ``n = 1``: that *base*
        covers every later step of one token each, so the floor never has to rise for
        a running request to make progress (``_fit_window_chunks``)."""
        t = self._table
        total = t.prompt_len[slots] + t.max_tokens[slots]
        step = np.maximum(n, 1)
        out: list[int] = []
        for _idx, reach, bs, _page in self._win:
            most = -(-total // bs)
            out.append(int(np.minimum(-(-(reach + step) // bs), most).sum()))
        return out

    def _window_floors(self, holds: list[int]) -> list[int]:
        """``_window_holds`` sums as effective floors: at most each group's planned one."""
        return [
            min(h, int(self._floors[idx]))
            for (idx, _r, _b, _p), h in zip(self._win, holds, strict=True)
        ]

    def _fit_window_chunks(self, slots: I64, n: I64, reach: list[int] | None) -> I64:
        """``n`` (rows in rank order) with chunks cut so each window's floor stays
        within ``reach`` blocks (what its pool can hold now): every request keeps its
        base (one token: at most the floor already held), then rows in rank order keep
        their whole chunk while the blocks past their bases fit, the first that does
        not gets what is left, the later ones their base (at least one token). With
        ``reach`` None every chunk is cut to its base."""
        t = self._table
        total = t.prompt_len[slots] + t.max_tokens[slots]
        out = n.copy()
        for k, (_idx, reach_t, bs, _page) in enumerate(self._win):
            most = -(-total // bs)
            base = np.minimum(-(-(reach_t + 1) // bs), most)
            held = np.minimum(-(-(reach_t + np.maximum(out, 1)) // bs), most)
            left = 0 if reach is None else reach[k] - int(base.sum())
            extra = held - base
            # cdiv(A + m, b) <= base + e  <=>  m <= b * (base + e) - A.
            for i in range(out.shape[0]):
                e = int(extra[i])
                if e <= left:
                    left -= e
                    continue
                e = max(left, 0)
                left -= e
                out[i] = max(min(int(out[i]), bs * (int(base[i]) + e) - reach_t), 1)
        return out

    def _floor_needs(self, wins: list[int]) -> I64:
        """Per group: its planned floor, the capped windows' effective ones in place."""
        needs = self._floors.copy()
        for (idx, _r, _b, _p), e in zip(self._win, wins, strict=True):
            needs[idx] = e
        return needs

    def _window_cost(self, before: list[int], after: list[int]) -> list[int]:
        """Growing-pool blocks (per row) the windows' floors rising from ``before`` to
        ``after`` can take from the growing pools' room: the rise past what each window
        pool already holds beyond this step's start floors where nobody else could take
        it (``held_spare``), its bytes over the row's page, rounded up."""
        grown = 0
        for k, (_i, _r, _b, page) in enumerate(self._win):
            free = self._win_start[k] + self._win_spare[k]
            grown += (max(after[k] - free, 0) - max(before[k] - free, 0)) * page
        return [-(-grown // page) for page in self._row_page]

    def _pending(self, run_sel: I64, run_n: I64) -> list[int]:
        """Blocks per growing pool the running requests still add after this step
        (rows ``run_sel`` of the running list take ``run_n`` tokens now) up to their
        current token counts: the rest of their prompts (decoding rows add nothing)."""
        table = self._table
        c = table.num_computed[self._run_slots]  # a copy (fancy indexing)
        t = table.num_tokens[self._run_slots]
        c[run_sel] += run_n
        rest = np.maximum(t - c, 0)
        per_group = block_growth(c, rest, self._grow_bs, self._grow_cap)
        rows = self._rows
        if rows is None:
            return [int(k) for k in per_group]
        out = [0] * self._grow_idx.shape[0]
        for row, k in zip(rows, per_group, strict=True):
            out[row] += int(k)
        return out

    def _vllm_split(self, r: Req, start: int, n: int) -> int:
        """vLLM 0.33's align-mode prefill chunk from ``start`` (class docstring)."""
        bs = self.align
        num_tokens = r.num_tokens
        prefill_end = max(r.prompt_len, num_tokens - 1)
        if start >= prefill_end:
            return n
        end = start + n
        if end < prefill_end:
            aligned = end // bs * bs
            if aligned > start or bs <= self._prefill_cap:
                end = aligned
        # The chunk stops at the first of these stops inside ``(start, end)``: the next
        # block boundary (a chunk starting mid-block), the last block boundary before
        # the final token, and the shared-prefix junction of the last lookup (floored).
        cut = end
        if start % bs:
            cut = min(cut, (start // bs + 1) * bs)
        last_cache = max((num_tokens - 1) // bs * bs, 0)
        if start < last_cache < cut:
            cut = last_cache
        junction = r.boundary
        if start < junction < end:
            x = start + (junction - start) // bs * bs
            if start < x < cut:
                cut = x
        return max(cut - start, 0)

    def _chunk(self, r: Req, c: int, n: int) -> int:
        """Align-mode prefill chunk ``[c, c + n)`` of ``r`` (hybridkv's split): cut at
        the shared-prefix boundary, then at the prompt-end checkpoint, else on a block
        boundary (``_aligned``).

        Where the manager keeps prompt ends only past ``prompt_keep_min`` (elastic
        arenas), the prompt-end checkpoint lies on the prompt's last multiple of
        ``prompt_cut`` (its last block boundary when 0), kept only when the prompt
        computes at least ``prompt_keep_min`` tokens up to it beyond its *base*: its hit
        or its shared-prefix boundary (block-floored), where a fork checkpoint lies
        already. Else the rest of the prompt runs whole (no cut costs it a step). A
        prefill that ended a chunk on a block boundary already kept-worthy (past the
        base by ``prompt_keep_min``) and less than ``prompt_keep_min`` before that cut
        runs the rest whole too: the chunk end is its prompt-end checkpoint, one step
        sooner. The coarse cut puts the checkpoint before the prompt's short final
        segment (a question after a document, a new message), where later prompts that
        share all but that segment branch: a finer one lies past their branch point.
        Qwen3-Next 16 GiB (at the prompt's last block boundary before): docqa hit 0.9756
        -> 0.9775, TTFT p99 0.0329 -> 0.0233 s (vllm 0.0240); agentic 0.8577 -> 0.8611;
        the Mooncake hour's first 3,000 requests 0.0386 -> 0.0394 (static 0.0388).

        Otherwise (static pools), a prefill computing at least ``PROMPT_CUT_MIN``
        multiples of ``prompt_cut`` past its hit and boundary ends a chunk on the
        prompt's last multiple of it and runs the rest whole."""
        n = self._cut(r, c, n)
        g = self.prompt_cut
        keep = self.prompt_keep_min
        ends = c + n >= r.prompt_len
        if keep:
            a = self.align
            base = max(r.hit, r.boundary // a * a)
            q = r.prompt_len // (g or a) * (g or a)
            if ends and q - base < keep:
                return n  # no prompt-end checkpoint kept: nothing to cut for
            if ends and c > r.hit and c % a == 0 and c - base >= keep and q - c < keep:
                return n  # this chunk's start is the prompt-end checkpoint
            if q - base >= keep and c < q < c + n:
                return q - c
            if ends and c == q:
                return n
            return self._aligned(c, n)
        if g:
            q = r.prompt_len // g * g
            long = q - max(r.hit, r.boundary) >= PROMPT_CUT_MIN * g
            if long and c < q < c + n:
                return q - c
            if long and c == q and ends:
                # The rest of a prompt whose state is checkpointed at its coarse cut
                # runs whole (no extra step for a finer prompt-end checkpoint).
                return n
        return self._aligned(c, n)

    def _cut(self, r: Req, c: int, n: int) -> int:
        """Prefill chunk ``[c, c + n)`` cut back to end at ``r``'s shared-prefix boundary
        (block-floored) when it lies inside: on every chunk, not only the first, since
        the branch point of a long shared prefix (a document) often lies past the first
        chunk, and a state checkpoint there is what later requests sharing it hit."""
        stop = r.boundary // self.align * self.align
        return stop - c if c < stop < c + n else n

    def _aligned(self, c: int, n: int) -> int:
        """Prefill chunk ``[c, c + n)`` cut back to end on a block boundary when one lies
        inside it, so the state group records a checkpoint there (mode ``align``)."""
        end = (c + n) // self.align * self.align
        return end - c if end > c else n
