"""A plain-Python reference of :class:`hybridkv.scheduler.Scheduler`, over the
plain-Python reference manager (``tests/reference_manager.py``).

Written from the scheduler's documented rules, for clarity, not speed: lists and
loops, no numpy, one request at a time. The stateful machine runs it in lockstep with
the real scheduler over the real manager and compares every step's decisions (batch,
chunk sizes, admissions and their hits, preemption victims, queue sizes). The rules:

- Rank ``(priority, arrival)``: smaller runs first and is preempted last.
- Running requests first, in rank order: ``min(remaining, budget, chunk cap)`` tokens,
  a prefill chunk cut back to end on a multiple of ``align`` when one lies inside it
  (not when it ends the prompt and the manager would keep no checkpoint on the prompt's
  last boundary: fewer than ``prompt_keep_min`` tokens computed up to it past the base,
  the hit or the block-floored shared-prefix boundary; nor when it ends the prompt and
  starts on a block boundary at least ``prompt_keep_min`` past the base and less than
  that before the prompt's last boundary: its start is the prompt-end checkpoint).
- Then waiting requests in queue order (FIFO, preempted ones at the front; or by rank
  under ``"priority"``), looked up in rounds: a round takes as many as would fill the
  budget with no hit (at least one), at most ``admit_cap`` admissions a step (halved
  after a failed admission, doubled back after a clean step), none in the step after
  a running request failed (its victims' blocks are for it). Admission control:
  free blocks of each growing pool, minus what the running requests grow by, minus what
  earlier admissions take. A request is admitted only when its whole sequence (from its
  hit to its token count) fits that room less what the running requests and the step's
  earlier admissions still add past this step up to their own token counts (the rest
  of their prompts); then its chunk
  shrinks to fit. The first request that fails either stops admission (when it is a
  round's head and others were looked up with it, their pins may be the cause: it is
  looked up again alone). Requests looked
  up but not admitted give their hit back and return to the front.
- One allocation for the whole batch. A failed admission waits at the front. For a
  failed running request, victims are taken lowest rank first among the running and
  this step's admitted requests, ranked below it, until their blocks (at the growing
  block size) cover what it needed; else it is the victim. Victims allocated in this
  step keep the step and are preempted after it; the others at once.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from reference_manager import RefManager, cdiv


class RefSchedulerError(Exception):
    """A request that can never fit (the real scheduler raises ``SchedulerError``)."""


@dataclass
class RefReq:
    rid: int
    prompt: list[int]
    max_tokens: int
    priority: int
    seq: int
    output: list[int] = field(default_factory=list)
    computed: int = 0
    known: bool = False  # given to the manager yet
    started: bool = False  # ran a step at least once
    running: bool = False
    lost: int = 0
    boundary: int = 0  # shared-prefix boundary from its last lookup (0: none or cut off)
    hit: int = 0  # tokens hit at its last admission

    @property
    def num_tokens(self) -> int:
        return len(self.prompt) + len(self.output)

    def rank(self) -> tuple[int, int]:
        return (self.priority, self.seq)


@dataclass
class RefStep:
    """One step's decisions, in the real ``SchedulerOutput``'s terms."""

    req_ids: list[int]
    num_new_tokens: list[int]
    num_computed_before: list[int]
    samples: list[bool]
    new: list[tuple[int, int]]  # (req id, hit)
    resumed: list[tuple[int, int]]
    preempted: list[int]
    num_running: int
    num_waiting: int


class RefScheduler:
    def __init__(
        self,
        manager: RefManager,
        *,
        budget: int,
        max_num_seqs: int,
        policy: str = "fcfs",
        chunk_cap: int | None = None,
        cut_at_shared_prefix: bool = False,
        prompt_keep_min: int = 0,
    ) -> None:
        self.m = manager
        self.budget = budget
        self.max_num_seqs = max_num_seqs
        self.policy = policy
        self.cap = chunk_cap or budget
        groups = manager.groups
        # Growing pools: full attention (admission control counts only these).
        self.growing = [g for g, grp in enumerate(groups) if grp.kind == "full_attention"]
        self.block_size = min((groups[g].block_size for g in self.growing), default=16)
        states = [grp.block_size for grp in groups if grp.kind == "state"]
        self.align = states[0] if states and manager.mode == "align" else 0
        self.cut = cut_at_shared_prefix
        # A prefill ends a chunk on the prompt's last block boundary only when the
        # manager keeps a checkpoint there (computed >= this beyond the hit; 0: always).
        self.keep_min = prompt_keep_min if self.align else 0
        self.reqs: dict[int, RefReq] = {}
        self.running: list[RefReq] = []
        self.waiting: list[RefReq] = []
        self.seq = 0
        self.admit_cap = max_num_seqs
        self.hold = False
        self.deferred: list[RefReq] = []
        self.last: RefStep | None = None

    # -- queue ----------------------------------------------------------------------

    def add(self, rid: int, prompt: list[int], max_tokens: int, priority: int = 0) -> None:
        r = RefReq(rid, list(prompt), max_tokens, priority, self.seq)
        self.seq += 1
        self.reqs[rid] = r
        self.waiting.append(r)

    def requeue_front(self, r: RefReq) -> None:
        r.running = False
        self.waiting.insert(0, r)

    def pop_waiting(self) -> RefReq | None:
        if not self.waiting:
            return None
        if self.policy == "priority":
            best = min(self.waiting, key=RefReq.rank)
            self.waiting.remove(best)
            return best
        return self.waiting.pop(0)

    # -- helpers --------------------------------------------------------------------

    def cut_at(self, bound: int, c: int, n: int) -> int:
        # Every prefill chunk crossing the shared-prefix boundary ends there.
        stop = bound // self.align * self.align
        return stop - c if c < stop < c + n else n

    def aligned(self, c: int, n: int) -> int:
        end = (c + n) // self.align * self.align
        return end - c if end > c else n

    def chunk(self, r: RefReq, c: int, n: int) -> int:
        n = self.cut_at(r.boundary, c, n)
        a, keep = self.align, self.keep_min
        last = len(r.prompt) // a * a
        base = max(r.hit, r.boundary // a * a)
        if keep and c + n >= len(r.prompt):
            if last - base < keep:
                return n  # the rest of the prompt runs whole: no kept checkpoint to cut for
            if c > r.hit and c % a == 0 and c - base >= keep and last - c < keep:
                return n  # the chunk's start is the prompt-end checkpoint
        return self.aligned(c, n)

    def free_blocks(self) -> list[int]:
        return [self.m.pools[g].num_free for g in self.growing]

    def blocks_needed(self, c: int, n: int) -> list[int]:
        return [
            cdiv(c + n, self.m.groups[g].block_size) - cdiv(c, self.m.groups[g].block_size)
            for g in self.growing
        ]

    def tokens(self, r: RefReq) -> list[int]:
        return r.prompt + r.output

    # -- one step -------------------------------------------------------------------

    def schedule(self) -> RefStep:
        assert self.last is None
        budget = self.budget
        batch: list[tuple[RefReq, int, int]] = []  # (request, new tokens, computed before)
        for r in self.running:
            if budget == 0:
                break
            n = min(r.num_tokens - r.computed, budget, self.cap)
            if n <= 0:
                continue
            if n > 1 and self.align:
                n = self.chunk(r, r.computed, n)
            batch.append((r, n, r.computed))
            budget -= n

        admitted: list[tuple[RefReq, int]] = []  # (request, hit)
        slots = min(self.max_num_seqs - len(self.running), self.admit_cap)
        if self.hold or not self.waiting:
            slots = 0
        room: list[int] | None = None
        start: list[int] = []
        if slots > 0 and budget > 0 and self.growing:
            start = self.free_blocks()
            room = list(start)
            for _r, n, c in batch:
                room = [x - need for x, need in zip(room, self.blocks_needed(c, n), strict=True)]
        # What the running requests still add past this step (the rest of their prompts).
        pend = [0] * len(self.growing)
        if room is not None:
            stepped = {r.rid: n for r, n, _ in batch}
            for r in self.running:
                after = r.computed + stepped.get(r.rid, 0)
                more = self.blocks_needed(after, max(r.num_tokens - after, 0))
                pend = [a + b for a, b in zip(pend, more, strict=True)]
        full = False
        per_round = slots
        while budget > 0 and slots > 0 and not full:
            cands: list[RefReq] = []
            want = 0
            while len(cands) < min(slots, per_round):
                nxt = self.pop_waiting()
                if nxt is None:
                    break
                cands.append(nxt)
                want += min(nxt.num_tokens, self.cap)
                if want >= budget:
                    break
            if not cands:
                break
            for r in cands:
                if not r.known:
                    self.m.add(r.rid, self.tokens(r))
                    r.known = True
            hits = self.m.lookup([r.rid for r in cands])
            bounds = [self.m.reqs[r.rid].boundary if self.cut and self.align else 0 for r in cands]
            if room is not None:
                now = self.free_blocks()
                room = [x + b - a for x, a, b in zip(room, start, now, strict=True)]
                start = now
            leftovers: list[RefReq] = []
            head_blocked = False
            for r, h, bound in zip(cands, hits, bounds, strict=True):
                n = min(r.num_tokens - h, budget, self.cap)
                if full or n <= 0 or slots <= 0:
                    leftovers.append(r)
                    continue
                r.boundary = bound
                r.hit = h
                if n > 1 and self.align:
                    n = self.chunk(r, h, n)
                if room is not None:
                    whole = self.blocks_needed(h, r.num_tokens - h)
                    if any(a + p > b for a, p, b in zip(whole, pend, room, strict=True)):
                        full = True
                        head_blocked = not leftovers and r is cands[0]
                        leftovers.append(r)
                        continue
                    need = self.blocks_needed(h, n)
                    if any(a > b for a, b in zip(need, room, strict=True)):
                        fit = (
                            min(
                                (cdiv(h, self.m.groups[g].block_size) + room[i])
                                * self.m.groups[g].block_size
                                for i, g in enumerate(self.growing)
                            )
                            - h
                        )
                        if fit > 1 and self.align:
                            fit = self.aligned(h, fit)
                        if fit < 1:
                            full = True
                            head_blocked = not leftovers and r is cands[0]
                            leftovers.append(r)
                            continue
                        n = min(n, fit)
                        need = self.blocks_needed(h, n)
                    room = [a - b for a, b in zip(room, need, strict=True)]
                    rest = self.blocks_needed(h + n, max(r.num_tokens - h - n, 0))
                    pend = [a + b for a, b in zip(pend, rest, strict=True)]
                r.computed = h
                batch.append((r, n, h))
                admitted.append((r, h))
                budget -= n
                slots -= 1
            if not leftovers:
                continue
            self.m.preempt([r.rid for r in leftovers])
            for r in reversed(leftovers):
                r.computed = 0
                self.requeue_front(r)
            if head_blocked and len(cands) > 1 and per_round > 1:
                per_round = 1
                full = False
                assert room is not None
                now = self.free_blocks()
                room = [x + b - a for x, a, b in zip(room, start, now, strict=True)]
                start = now
                continue
            if head_blocked and not batch and not self.running:
                raise RefSchedulerError(cands[0].rid)
            break

        ok = self.m.allocate([r.rid for r, _, _ in batch], [n for _, n, _ in batch])
        preempted = self.handle_failures(batch, ok, admitted)
        kept = [(r, n, c) for (r, n, c), good in zip(batch, ok, strict=True) if good]
        for r, n, _ in kept:
            r.computed += n
        new: list[tuple[int, int]] = []
        resumed: list[tuple[int, int]] = []
        kept_ids = {r.rid for r, _, _ in kept}
        for r, h in admitted:
            if r.rid not in kept_ids:
                continue
            r.running = True
            self.running.append(r)
            (resumed if r.started else new).append((r.rid, h))
        for r, _, _ in kept:
            r.started = True
        self.running.sort(key=RefReq.rank)
        self.last = RefStep(
            req_ids=[r.rid for r, _, _ in kept],
            num_new_tokens=[n for _, n, _ in kept],
            num_computed_before=[c for _, _, c in kept],
            samples=[r.computed == r.num_tokens for r, _, _ in kept],
            new=new,
            resumed=resumed,
            preempted=[v.rid for v in preempted],
            num_running=len(self.running),
            num_waiting=len(self.waiting),
        )
        return self.last

    def handle_failures(
        self,
        batch: list[tuple[RefReq, int, int]],
        ok: list[bool],
        admitted: list[tuple[RefReq, int]],
    ) -> list[RefReq]:
        self.hold = False
        if all(ok):
            self.admit_cap = min(self.max_num_seqs, 2 * self.admit_cap)
            return []
        admitted_ids = {r.rid for r, _ in admitted}
        failed_new = [
            r
            for (r, _, _), good in zip(batch, ok, strict=True)
            if not good and r.rid in admitted_ids
        ]
        failed_running = [
            (r, n)
            for (r, n, _), good in zip(batch, ok, strict=True)
            if not good and r.rid not in admitted_ids
        ]
        if failed_new:
            self.m.preempt([r.rid for r in failed_new])
            for r in reversed(failed_new):
                r.computed = 0
                self.requeue_front(r)
            self.admit_cap = max(1, len(admitted) - len(failed_new))
            if len(admitted) == 1 and not self.running and not any(ok):
                raise RefSchedulerError(failed_new[0].rid)
        if not failed_running:
            return []
        failed_ids = {r.rid for r in failed_new}
        succeeded_new = [r for r, _ in admitted if r.rid not in failed_ids]
        if len(self.running) == 1 and not succeeded_new:
            raise RefSchedulerError(failed_running[0][0].rid)
        self.hold = True
        candidates = sorted([*self.running, *succeeded_new], key=RefReq.rank, reverse=True)
        victims: list[RefReq] = []
        bs = self.block_size
        for r, n in failed_running:
            if r in victims:
                continue
            need = max(1, cdiv(r.computed + n, bs) - cdiv(r.computed, bs))
            freed = 0
            for v in candidates:
                if freed >= need:
                    break
                if v in victims:
                    continue
                if v.rank() <= r.rank():
                    break
                victims.append(v)
                freed += cdiv(v.computed, bs)
            if freed < need and r not in victims:
                victims.append(r)
        in_step = {r.rid for (r, _, _), good in zip(batch, ok, strict=True) if good}
        self.preempt_now([v for v in victims if v.rid not in in_step])
        self.deferred = [v for v in victims if v.rid in in_step]
        return victims

    def preempt_now(self, victims: list[RefReq]) -> None:
        if not victims:
            return
        self.m.preempt([v.rid for v in victims])
        self.running = [r for r in self.running if r not in victims]
        for v in reversed(victims):
            v.lost = v.computed
            v.computed = 0
            self.requeue_front(v)

    def preempt(self, rids: list[int]) -> None:
        """An engine's preemption between steps (highest rank ends up in front)."""
        self.preempt_now(sorted((self.reqs[i] for i in rids), key=RefReq.rank, reverse=True))

    def update(self, sampled: dict[int, int]) -> list[int]:
        """Take the sampled tokens; returns the finished request ids."""
        step = self.last
        assert step is not None
        self.last = None
        done, cont = [], []
        for rid, s in zip(step.req_ids, step.samples, strict=True):
            if not s:
                continue
            r = self.reqs[rid]
            r.output.append(sampled[rid])
            if len(r.output) >= r.max_tokens:
                done.append(rid)
            else:
                cont.append(rid)
        for rid in cont:
            self.m.append(rid, [sampled[rid]])
        if done:
            self.m.free(done)
            self.running = [r for r in self.running if r.rid not in done]
            for rid in done:
                del self.reqs[rid]
        if self.deferred:
            victims = [v for v in self.deferred if v.running and v.rid in self.reqs]
            self.deferred = []
            self.preempt_now(victims)
        return done
