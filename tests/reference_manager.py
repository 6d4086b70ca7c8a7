"""A plain-Python reference of KVCacheManager, written for clarity, not speed.

It follows the documented rules directly: block keys are the token contents
themselves (not hashes), the longest prefix hit is found by trying every position
from the cap downwards, and the LRU free queue is an ordered dict. Block ids come out
identical to the Rust manager's because both follow the same documented order of
allocation (free-queue head first), release (one batch per group: window entries
latest first; whole requests tail first, group by group; in a batch, unhashed blocks go
to the queue head in batch order and hashed ones to its tail) and caching.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field

from hybridkv.manager import ManagerGroup

Key = tuple[object, ...]


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


class RefPool:
    def __init__(self, num_blocks: int) -> None:
        self.num_blocks = num_blocks
        self.ref = [0] * num_blocks
        self.key: list[Key | None] = [None] * num_blocks
        self.queue: OrderedDict[int, None] = OrderedDict((b, None) for b in range(1, num_blocks))
        self.cached: dict[Key, list[int]] = {}

    @property
    def num_free(self) -> int:
        return len(self.queue)

    def _drop(self, b: int) -> None:
        k = self.key[b]
        if k is None:
            return
        chain = self.cached[k]
        chain.remove(b)
        if not chain:
            del self.cached[k]
        self.key[b] = None

    def allocate(self, n: int) -> list[int]:
        assert n <= len(self.queue)
        out = []
        for _ in range(n):
            b, _ = self.queue.popitem(last=False)
            self.ref[b] = 1
            self._drop(b)
            out.append(b)
        return out

    def free(self, blocks: Sequence[int]) -> None:
        """One batch: blocks reaching ref 0 join the tail if cached, else the head
        (the first of them becoming the head), as vLLM 0.33's pool does."""
        front = []
        for b in blocks:
            assert self.ref[b] > 0
            self.ref[b] -= 1
            if self.ref[b] == 0:
                if self.key[b] is None:
                    front.append(b)
                else:
                    self.queue[b] = None
        for b in reversed(front):
            self.queue[b] = None
            self.queue.move_to_end(b, last=False)

    def touch(self, b: int) -> None:
        if self.ref[b] == 0:
            del self.queue[b]
        self.ref[b] += 1

    def cache(self, b: int, k: Key) -> None:
        if self.key[b] is not None:
            assert self.key[b] == k
            return
        self.key[b] = k
        self.cached.setdefault(k, []).append(b)

    def lookup(self, k: Key) -> int | None:
        chain = self.cached.get(k)
        return chain[0] if chain else None

    def reset(self) -> None:
        self.cached.clear()
        self.key = [None] * self.num_blocks


class RefGroup(ManagerGroup):
    """A group's fields (as the manager takes them) plus the reference rules on them."""

    def first_needed(self, c: int) -> int:
        if self.kind == "sliding_window":
            assert self.window is not None
            return max(0, c - self.window + 1)
        if self.kind == "chunked_local":
            assert self.chunk_size is not None
            return c // self.chunk_size * self.chunk_size
        return 0


@dataclass
class RefRequest:
    rid: int
    tokens: list[int]
    extra: Key = ()
    encoder_len: int = 0
    computed: int = 0
    phase: str = "waiting"  # waiting | queried | running
    tables: list[list[int]] = field(default_factory=list)
    num_cached: list[int] = field(default_factory=list)
    dirty: bool = False
    boundary: int = 0
    prompt_len: int = 0
    # Tokens its last lookup served from the cache.
    hit: int = 0


class RefManager:
    def __init__(
        self,
        groups: Sequence[RefGroup],
        mode: str = "align",
        caching: bool = True,
        checkpoint_policy: str = "reuse",
        pool_of: Sequence[int] | None = None,
        prompt_keep_min: int = 0,
    ) -> None:
        self.groups = list(groups)
        # Per group: its pool (groups sharing one: one id space, one LRU queue, needs
        # summed; keys carry the group, so lookups stay per group).
        self.pool_of = list(pool_of) if pool_of is not None else list(range(len(groups)))
        # A prompt's last checkpoint is kept only when the prompt computed at least
        # this many tokens up to it beyond its hit (the core sets it for elastic arenas).
        self.prompt_keep_min = prompt_keep_min
        self.mode = mode
        self.caching = caching
        # Align mode, "reuse": per state block, requests that moved past its checkpoint.
        self.reuse = checkpoint_policy == "reuse" and mode == "align" and caching
        self.extensions: list[dict[int, int]] = [{} for _ in groups]
        # Per checkpoint block: the token after it on the first extender's path.
        self.next_token: list[dict[int, int]] = [{} for _ in groups]
        # Per group: each running request's pending tail (block, key): the deepest
        # checkpoint it moved past that only it had extended.
        self.tails: list[dict[int, tuple[int, Key]]] = [{} for _ in groups]
        self.chunk_ends: list[dict[int, list[tuple[int, Key]]]] = [{} for _ in groups]
        self.pools = [
            RefPool(groups[self.pool_of.index(p)].num_blocks) for p in range(max(self.pool_of) + 1)
        ]
        self.reqs: dict[int, RefRequest] = {}
        self.dirty: list[int] = []
        self.queries = 0
        self.hit_tokens = 0
        self.disagreements = 0
        self.group_hits = [0] * len(groups)
        # Per group: state blocks cached since the step began (its forward writes them).
        self.states_this_step: list[set[int]] = [set() for _ in groups]

    # -- keys ---------------------------------------------------------------------------

    def key(self, r: RefRequest, g: int, k: int) -> Key:
        """Block ``k``'s identity at group ``g``'s block size: everything the chained hash
        covers (all tokens up to the block's end and the request's extra keys)."""
        bs = self.groups[g].block_size
        return (g, bs, tuple(r.tokens[: (k + 1) * bs]), r.extra)

    # -- requests -----------------------------------------------------------------------

    def add(self, rid: int, tokens: Sequence[int], extra: Key = (), encoder_len: int = 0) -> None:
        assert rid not in self.reqs and tokens
        n = len(self.groups)
        self.reqs[rid] = RefRequest(
            rid,
            list(tokens),
            extra,
            encoder_len,
            tables=[[] for _ in range(n)],
            num_cached=[0] * n,
            prompt_len=len(tokens),
        )

    def append(self, rid: int, tokens: Sequence[int]) -> None:
        self.reqs[rid].tokens.extend(tokens)

    def _superseded(self, r: RefRequest, g: int, k: int) -> None:
        """A hit on the checkpoint at entry ``k - 1``: if another request moved past it
        already, ``r`` branches there (a fork point); the nearest shallower checkpoint
        cached on ``r``'s path (within 1024 entries) is interior now."""
        if k < 1:
            return
        bs = self.groups[g].block_size
        self._mark_branch(g, r.tables[g][k - 1], r, k * bs)
        for j in range(k - 1, max(k - 1024, 1) - 1, -1):
            key = self.key(r, g, j - 1)
            b = self.pools[self.pool_of[g]].lookup(key)
            if b is not None:
                self._mark_branch(g, b, r, j * bs)
                self._drop_interior(g, (b, key))
                return

    def _mark_branch(self, g: int, b: int, r: RefRequest, at: int) -> None:
        """``r`` reaches checkpoint ``b`` and goes on with its token at ``at``: a fork
        point if the first request past it went on with another token."""
        t = self.next_token[g].get(b)
        if (
            self.extensions[g].get(b, 0) >= 1
            and t is not None
            and at < len(r.tokens)
            and r.tokens[at] != t
        ):
            self.extensions[g][b] = max(self.extensions[g][b], 2)

    def _drop_interior(self, g: int, tail: tuple[int, Key]) -> None:
        """Drop the checkpoint ``tail`` if its block still holds it, nobody holds it and
        it is no fork point."""
        b, k = tail
        pool = self.pools[self.pool_of[g]]
        if self.extensions[g].get(b, 0) < 2 and pool.key[b] == k and pool.ref[b] == 0:
            pool._drop(b)

    def _release_all(self, r: RefRequest) -> None:
        if self.reuse:
            # The pending tail stays, unless the state ``r`` holds now is a deeper one.
            for g, table in enumerate(r.tables):
                old = self.tails[g].pop(r.rid, None)
                live = [b for b in table if b]
                pool = self.pools[self.pool_of[g]]
                if old is not None and live and live[-1] != old[0] and pool.key[live[-1]]:
                    self._drop_interior(g, old)
                # Its prompt chunk end kept while it ran is interior now.
                for end in self.chunk_ends[g].pop(r.rid, []):
                    self._drop_interior(g, end)
        for g, table in enumerate(r.tables):
            self.pools[self.pool_of[g]].free([b for b in reversed(table) if b])
            table.clear()
            r.num_cached[g] = 0

    def free(self, rids: Sequence[int]) -> None:
        for rid in rids:
            self._release_all(self.reqs[rid])
            del self.reqs[rid]

    def preempt(self, rids: Sequence[int]) -> None:
        for rid in rids:
            r = self.reqs[rid]
            if self.reuse:
                self._keep_resume_point(r)
            self._release_all(r)
            r.computed = 0
            r.phase = "waiting"

    def _keep_resume_point(self, r: RefRequest) -> None:
        """A preempted request resumes from the deepest checkpoint cached on its path
        (within 1024 entries): kept like a fork point."""
        for g, grp in enumerate(self.groups):
            if grp.kind != "state" or self.mode != "align":
                continue
            top = r.computed // grp.block_size
            for k in range(top, max(top - 1024, 1) - 1, -1):
                b = self.pools[self.pool_of[g]].lookup(self.key(r, g, k - 1))
                if b is not None:
                    self.extensions[g][b] = max(self.extensions[g].get(b, 0), 2)
                    break

    # -- hits ---------------------------------------------------------------------------

    def servable(self, r: RefRequest, g: int, h: int) -> bool:
        grp = self.groups[g]
        bs = grp.block_size
        if grp.kind == "cross_attention" or h == 0:
            return True
        if h % bs:
            return False
        pool = self.pools[self.pool_of[g]]
        if grp.kind == "state":
            return self.mode != "none" and pool.lookup(self.key(r, g, h // bs - 1)) is not None
        lo = grp.first_needed(h) // bs
        return all(pool.lookup(self.key(r, g, k)) is not None for k in range(lo, h // bs))

    def backed(self, r: RefRequest, g: int, h: int) -> bool:
        """``servable`` with the block ending at ``h`` cached too: the prefixes that are
        evidence of an earlier request (cross attention caches nothing)."""
        grp = self.groups[g]
        if h == 0:
            return True
        if grp.kind == "cross_attention" or not self.servable(r, g, h):
            return False
        return (
            self.pools[self.pool_of[g]].lookup(self.key(r, g, h // grp.block_size - 1)) is not None
        )

    def lookup(self, rids: Sequence[int]) -> list[int]:
        out = []
        for rid in rids:
            r = self.reqs[rid]
            assert r.phase != "running"
            self._release_all(r)
            self.queries += 1
            r.boundary = 0
            h = 0
            if self.caching and len(r.tokens) > 1:
                cap = len(r.tokens) - 1
                own = [
                    next(x for x in range(cap, -1, -1) if self.servable(r, g, x))
                    for g in range(len(self.groups))
                ]
                h = next(
                    x
                    for x in range(cap, -1, -1)
                    if all(self.servable(r, g, x) for g in range(len(self.groups)))
                )
                for g, o in enumerate(own):
                    self.group_hits[g] += o
                longest = max(
                    next(x for x in range(cap, -1, -1) if self.backed(r, g, x))
                    for g in range(len(self.groups))
                )
                r.boundary = longest if longest > h else 0
                if r.boundary:
                    self.disagreements += 1
            self.hit_tokens += h
            if h:
                for g, grp in enumerate(self.groups):
                    bs = grp.block_size
                    k = h // bs
                    if grp.kind == "cross_attention":
                        continue
                    lo = k - 1 if grp.kind == "state" else grp.first_needed(h) // bs
                    table = [0] * lo
                    for j in range(lo, k):
                        b = self.pools[self.pool_of[g]].lookup(self.key(r, g, j))
                        assert b is not None
                        table.append(b)
                    for b in table[lo:]:
                        self.pools[self.pool_of[g]].touch(b)
                    r.tables[g] = table
                    r.num_cached[g] = k
                    if self.reuse and grp.kind == "state":
                        self._superseded(r, g, k)
            r.computed = h
            r.hit = h
            r.phase = "queried"
            out.append(h)
        return out

    # -- allocation ---------------------------------------------------------------------

    def first_live(self, g: int, c: int) -> int:
        grp = self.groups[g]
        if grp.kind in ("sliding_window", "chunked_local"):
            return grp.first_needed(c) // grp.block_size
        if grp.kind == "state" and self.mode != "all":
            return max(0, cdiv(c, grp.block_size) - 1)
        return 0

    def _release_unneeded(self, r: RefRequest) -> None:
        for g in range(len(self.groups)):
            table = r.tables[g]
            batch = []
            upto = min(self.first_live(g, r.computed), len(table))
            if self.reuse and self.groups[g].kind == "state":
                self._pass_checkpoints(r, g, upto)
            for k in reversed(range(upto)):
                if table[k]:
                    batch.append(table[k])
                    table[k] = 0
            self.pools[self.pool_of[g]].free(batch)

    def _pass_checkpoints(self, r: RefRequest, g: int, upto: int) -> None:
        """``r`` moved past its state entries below ``upto``: each cached checkpoint
        there gains an extension; one only ``r`` holds that is neither ``r``'s prompt
        end nor extended twice (a fork point) loses its key when ``r`` holds a deeper
        cached checkpoint; otherwise it becomes ``r``'s pending tail, and the pending
        tail it replaces loses its key if nobody holds it and it is still no fork
        point."""
        bs = self.groups[g].block_size
        pool = self.pools[self.pool_of[g]]
        for k in range(upto):
            b = r.tables[g][k]
            if not b or pool.key[b] is None:
                continue
            # A deeper cached checkpoint in r's table makes this one interior.
            deeper_held = any(d and pool.key[d] is not None for d in r.tables[g][k + 1 :])
            if b not in self.next_token[g] and (k + 1) * bs < len(r.tokens):
                self.next_token[g][b] = r.tokens[(k + 1) * bs]
            ext = self.extensions[g][b] = min(self.extensions[g].get(b, 0) + 1, 255)
            # The prompt's last checkpoint (the deepest cached one at or below the
            # prompt's last block boundary in r's table) stays, if r computed at least
            # prompt_keep_min tokens up to it beyond its base: its hit, or the fork
            # point at its shared-prefix boundary (block-floored) when deeper.
            pe = r.prompt_len // bs
            base = max(r.hit, r.boundary // bs * bs)
            prompt_last = (
                k + 1 <= pe
                and not any(d and pool.key[d] is not None for d in r.tables[g][k + 1 : pe])
                and (k + 1) * bs >= base + self.prompt_keep_min
            )
            # While r runs, its deepest prompt chunk end at least prompt_keep_min past
            # the base and before the prompt's last boundary stays (elastic arenas).
            chunk_end = (
                not prompt_last
                and ext < 2
                and self.prompt_keep_min > 0
                and (k + 1) * bs + self.prompt_keep_min <= pe * bs
                and (k + 1) * bs >= base + self.prompt_keep_min
            )
            if chunk_end:
                for end in self.chunk_ends[g].pop(r.rid, []):
                    self._drop_interior(g, end)
                key = pool.key[b]
                assert key is not None
                self.chunk_ends[g][r.rid] = [(b, key)]
            keep = prompt_last or chunk_end or ext >= 2
            if not keep and pool.ref[b] == 1 and deeper_held:
                pool._drop(b)
            elif not keep and pool.ref[b] == 1:
                key = pool.key[b]
                assert key is not None
                old = self.tails[g].get(r.rid)
                self.tails[g][r.rid] = (b, key)
                if old is not None:
                    self._drop_interior(g, old)

    def allocate(
        self,
        rids: Sequence[int],
        num_new: Sequence[int],
        lookahead: Sequence[int] | None = None,
        new_step: bool = True,
    ) -> list[bool]:
        la_all = list(lookahead) if lookahead is not None else [0] * len(rids)
        if new_step:
            for fresh in self.states_this_step:
                fresh.clear()
            for rid in self.dirty:
                if rid in self.reqs:
                    self.reqs[rid].dirty = False
                    self._release_unneeded(self.reqs[rid])
            self.dirty = []
        out = []
        for rid, n, la in zip(rids, num_new, la_all, strict=True):
            out.append(self._allocate_one(self.reqs[rid], n, la))
        return out

    def _need(self, r: RefRequest, g: int, n: int, la: int) -> int:
        grp = self.groups[g]
        bs = grp.block_size
        e = r.computed + n
        length = len(r.tables[g])
        if grp.kind == "state":
            if self.mode == "all":
                return max(0, cdiv(e, bs) - length)
            return int(cdiv(e, bs) > 0 and length < cdiv(e, bs))
        if grp.kind == "cross_attention":
            return cdiv(r.encoder_len, bs) if length == 0 and n > 0 else 0
        return max(0, cdiv(e + la, bs) - length)

    def _allocate_one(self, r: RefRequest, n: int, la: int) -> bool:
        assert r.computed + n <= len(r.tokens)
        self._release_unneeded(r)
        if n == 0 and la == 0:
            return True
        if r.phase == "queried" and self._reads_state_of_this_step(r):
            return False
        need = [self._need(r, g, n, la) for g in range(len(self.groups))]
        per_pool = [0] * len(self.pools)
        for g, x in enumerate(need):
            per_pool[self.pool_of[g]] += x
        if any(x > p.num_free for x, p in zip(per_pool, self.pools, strict=True)):
            return False
        c, e = r.computed, r.computed + n
        for g, grp in enumerate(self.groups):
            if not need[g]:
                continue
            if grp.kind == "state" and self.mode != "all":
                w = cdiv(e, grp.block_size) - 1
                r.tables[g] = r.tables[g][:w] + [0] * (w - len(r.tables[g]))
            r.tables[g].extend(self.pools[self.pool_of[g]].allocate(need[g]))
        r.computed = e
        r.phase = "running"
        trims = any(
            grp.kind in ("sliding_window", "chunked_local")
            or (grp.kind == "state" and self.mode != "all")
            for grp in self.groups
        )
        if trims and n > 0 and not r.dirty:
            r.dirty = True
            self.dirty.append(r.rid)
        if self.caching and n > 0:
            self._cache(r, c, e)
        return True

    def _reads_state_of_this_step(self, r: RefRequest) -> bool:
        """A prefix hit starting from a state checkpoint cached earlier in this step
        (not written yet): the request must wait for the next step."""
        for g, grp in enumerate(self.groups):
            k = r.computed // grp.block_size - 1
            if (
                grp.kind == "state"
                and 0 <= k < len(r.tables[g])
                and r.tables[g][k] in self.states_this_step[g]
            ):
                return True
        return False

    def _cache(self, r: RefRequest, c: int, e: int) -> None:
        for g, grp in enumerate(self.groups):
            bs = grp.block_size
            if grp.kind == "cross_attention" or (grp.kind == "state" and self.mode == "none"):
                continue
            if grp.kind == "state" and self.mode == "align":
                if e % bs or e // bs <= c // bs:
                    continue
                ks = [e // bs - 1]
            else:
                ks = list(range(r.num_cached[g], e // bs))
            for k in ks:
                b = r.tables[g][k]
                if b and self.pools[self.pool_of[g]].key[b] is None:
                    self.pools[self.pool_of[g]].cache(b, self.key(r, g, k))
                    if grp.kind == "state":
                        self.states_this_step[g].add(b)
                        # A checkpoint at the branch point a lookup found counts as
                        # extended once already.
                        at = r.boundary > 0 and (k + 1) * bs == r.boundary // bs * bs
                        self.extensions[g][b] = int(at)
                        self.next_token[g].pop(b, None)
                        if at and (k + 1) * bs < len(r.tokens):
                            self.next_token[g][b] = r.tokens[(k + 1) * bs]
            r.num_cached[g] = max(r.num_cached[g], e // bs)

    def reset_prefix_cache(self) -> bool:
        if any(any(p.ref[1:]) for p in self.pools):
            return False
        for p in self.pools:
            p.reset()
        for fresh in self.states_this_step:
            fresh.clear()
        return True
