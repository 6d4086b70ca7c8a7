"""Differential run: hybridkv's KVCacheManager against vLLM 0.33's real KVCacheManager.

The same random hybrid request streams go through both managers under one driver
(identical scheduling rules on each side, each side deciding from its own answers), and
every observation is logged and compared record by record:

- ``hit``: a prefix lookup's hit length and shared-prefix boundary;
- ``alloc``: each ``allocate_slots`` outcome (fits or not), in vLLM's scheduler order
  (running requests first, a failing one preempting the newest running request, then
  waiting requests looked up and admitted; admissions in the same step can be refused
  for a state checkpoint cached earlier in the step, on both sides);
- ``table``: after every successful allocation, each group's block-table length and
  which entries are the null block (in ``shared`` memory mode, where hybridkv runs
  vLLM's layout of one pool and one id space, the block ids themselves);
- ``step``: at each step's end the blocks evicted from the prefix cache during the step
  and (``shared`` mode) the pool's free-block count.

Memory modes: ``plenty`` (hybridkv's own layout, a pool per group, every pool large;
vLLM one large pool: nothing may be evicted or refused for space) and ``shared``
(hybridkv's shared-pool mode with vLLM's block count, small enough to evict and
preempt). Configs: full attention; + sliding window; + Mamba state (``align``);
+ chunked-local attention.

The first divergence of a stream ends its comparison (later records follow from it);
diverging streams are shrunk (dropping requests, shortening outputs) to a small
reproducer that is printed as JSON. Differences that are intended are named: those in
``INTENDED`` are counted apart, with the record kinds they excuse; those in
``BY_DESIGN`` the driver neutralises (replays on the vLLM side, or a hybridkv option),
so the comparison stays exact after them. Any other difference is a divergence, and
the run exits 1.

vLLM runs in a subprocess with the python of its own venv (``/work/vllm-venv`` or
``$VLLM_VENV``), as ``benches/bench_manager.py`` does; without it (no venv, or no
``vllm`` package in it) only hybridkv's side runs, nothing is compared, and the run
says so and exits 0. A vLLM side that starts but fails exits 1. vLLM is never a
dependency of hybridkv.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from collections import deque
from collections.abc import Sequence
from typing import Any

import numpy as np

VOCAB = 50_000
CONFIGS: dict[str, tuple[str, ...]] = {
    "full": ("full",),
    "full+swa": ("full", "swa"),
    "full+swa+mamba": ("full", "swa", "mamba"),
    "full+chunked": ("full", "chunked"),
}
INSTALL = "bash ../shared/peers/install_vllm_core.sh /work/vllm-venv"


def _longer_boundary(h: list[Any], v: list[Any], before: list[list[Any]]) -> bool:
    return h[0] == v[0] == "boundary" and h[:3] == v[:3] and h[3] > v[3]


def _refused_hits(log: list[list[Any]]) -> int:
    """Admissions with a prefix hit that were refused (the hit released again)."""
    return sum(
        bool(x[0] == "hit" and x[3] > 0 and y[0] == "boundary" and z[0] == "alloc" and not z[4])
        for x, y, z in zip(log, log[1:], log[2:], strict=False)
    )


# Differences by design that the driver neutralises (the first replayed on the vLLM side
# with vLLM's own calls, the second by a hybridkv option), so that the comparison stays
# exact after them: name -> why hybridkv differs and how the driver handles it.
BY_DESIGN: dict[str, str] = {
    "refused hit re-queued": (
        "hybridkv's get_computed_tokens takes a reference on each hit block (nothing can "
        "evict them between the lookup and the allocation); when the admission is then "
        "refused the scheduler releases them (preempt: tail first, group by group) and "
        "hashed ones re-enter the free queue at its tail, as most recently used. vLLM "
        "takes the references only inside a successful allocate_slots, so its free "
        "queue is untouched. The vLLM side replays hybridkv's release with its pool's "
        "touch() and free_blocks() (counted per row as 'refused hits')."
    ),
    "checkpoint policy lru": (
        "hybridkv's default checkpoint_policy outside a shared pool is 'reuse' (interior "
        "align-mode state checkpoints are dropped when their request is released; turn "
        "ends, prompt ends and fork points stay). vLLM keeps every checkpoint until LRU "
        "eviction, which is hybridkv's 'lru' policy: the hybridkv side runs 'lru' (a "
        "shared pool forces it anyway)."
    ),
}
# Intended differences: name -> (why it is right, predicate over the hybridkv and vLLM
# records that differ). A record pair it accepts is counted, not a divergence.
INTENDED: dict[str, tuple[str, Any]] = {
    "longer shared-prefix boundary": (
        "hybridkv reports the longest prefix any one group holds cached blocks for "
        "(KVCacheManager.shared_prefix_boundary); vLLM caps each group's lookup at the "
        "hit of the groups before it (full attention first), so evidence a later group "
        "holds past an earlier group's hit (blocks the full-attention pool evicted "
        "first) is lost. The hint only steers where an align-mode scheduler ends a "
        "chunk; a longer one keeps a state checkpoint at a real branch point.",
        _longer_boundary,
    ),
}


# --- streams ---------------------------------------------------------------------------


def make_stream(seed: int, config: str, memory: str) -> dict[str, Any]:
    """A deterministic random request stream: shared prefixes, exact re-sends of
    earlier prompts, staggered arrivals, chunked prefill and decode."""
    rng = np.random.default_rng(seed)
    bs = int(rng.choice([4, 8, 16]))
    n = int(rng.integers(6, 25))
    prefixes = [
        rng.integers(1, VOCAB, int(rng.integers(bs, 6 * bs)), dtype=np.int64).tolist()
        for _ in range(int(rng.integers(1, 4)))
    ]
    reqs: list[dict[str, Any]] = []
    arrival = 0
    for i in range(n):
        if reqs and rng.random() < 0.2:
            prompt = list(reqs[int(rng.integers(0, len(reqs)))]["prompt"])
        else:
            head = prefixes[int(rng.integers(0, len(prefixes)))] if rng.random() < 0.7 else []
            tail = rng.integers(1, VOCAB, int(rng.integers(1, 5 * bs)), dtype=np.int64)
            prompt = head + tail.tolist()
        arrival += int(rng.integers(0, 3))
        reqs.append(
            {"id": i, "prompt": prompt, "arrival": arrival, "max_tokens": int(rng.integers(1, 17))}
        )
    longest = max(len(r["prompt"]) + r["max_tokens"] for r in reqs)
    need = sum(-(-(len(r["prompt"]) + r["max_tokens"]) // bs) for r in reqs)
    kinds = CONFIGS[config]
    if memory == "plenty":
        num_blocks = len(kinds) * (need + 8) + 16
    else:
        one = -(-longest // bs) * len(kinds)
        num_blocks = int(rng.integers(one + 2, max(one + 3, need // 2 + 1)))
    return {
        "seed": seed,
        "config": config,
        "memory": memory,
        "block_size": bs,
        "window": int(rng.integers(bs, 4 * bs)),
        "chunk": int(rng.integers(1, 4)) * bs,
        "prefill_cap": int(rng.integers(1, 5)) * bs,
        "budget": int(rng.integers(4, 9)) * bs,
        "max_seqs": int(rng.integers(2, 7)),
        "num_blocks": num_blocks,
        "max_model_len": longest + 8,
        "requests": reqs,
    }


def _token(rid: int, pos: int) -> int:
    return (rid * 7919 + pos * 104729) % (VOCAB - 1) + 1


# --- the driver (identical for both sides) ---------------------------------------------


def run_stream(side: Any, s: dict[str, Any]) -> list[list[Any]]:
    """Drive ``side`` over stream ``s``; the log of observations."""
    bs = s["block_size"]
    align = "mamba" in CONFIGS[s["config"]]
    shared = s["memory"] == "shared"
    reqs = {r["id"]: r for r in s["requests"]}
    pending = deque(sorted(reqs, key=lambda i: (reqs[i]["arrival"], i)))
    waiting: deque[int] = deque()
    running: list[int] = []
    computed: dict[int, int] = {}
    ntok = {i: len(reqs[i]["prompt"]) for i in reqs}
    generated = dict.fromkeys(reqs, 0)
    known: set[int] = set()
    log: list[list[Any]] = []
    step = 0
    while pending or waiting or running:
        if step > 20 * len(reqs) + 200:
            log.append(["stuck", step])
            break
        while pending and reqs[pending[0]]["arrival"] <= step:
            waiting.append(pending.popleft())
        side.new_step()
        budget = s["budget"]
        scheduled: list[tuple[int, int]] = []

        def chunk(rid: int, budget: int) -> int:
            c, t = computed[rid], ntok[rid]
            n = min(t - c, budget, s["prefill_cap"])
            plen = len(reqs[rid]["prompt"])
            if align and c < plen and c + n < t:
                # align mode: a partial prefill chunk ends on a block boundary. (Not at
                # the reported shared-prefix boundary: the two managers define it
                # differently, see INTENDED, and the schedule must not depend on it.)
                n = (c + n) // bs * bs - c
            return max(int(n), 0)

        queue = list(running)
        while queue:
            rid = queue.pop(0)
            n = chunk(rid, budget)
            if n <= 0:
                continue
            while True:
                ok = side.allocate(rid, n)
                log.append(["alloc", step, rid, n, ok])
                if ok:
                    scheduled.append((rid, n))
                    budget -= n
                    _log_tables(log, step, rid, side.tables(rid), shared)
                    break
                victim = running[-1]
                running.remove(victim)
                if victim in queue:
                    queue.remove(victim)
                side.preempt(victim)
                computed[victim] = 0
                waiting.appendleft(victim)
                log.append(["preempt", step, victim])
                if victim == rid:
                    break
        while waiting and len(running) < s["max_seqs"] and budget > 0:
            rid = waiting[0]
            if rid not in known:
                side.add(rid, reqs[rid]["prompt"])
                known.add(rid)
            hit, b = side.lookup(rid)
            log.append(["hit", step, rid, hit])
            log.append(["boundary", step, rid, b])
            computed[rid] = hit
            n = chunk(rid, budget)
            ok = n > 0 and side.allocate(rid, n, hit=hit)
            log.append(["alloc", step, rid, n, ok])
            if not ok:
                side.unlookup(rid)
                computed[rid] = 0
                break
            waiting.popleft()
            running.append(rid)
            scheduled.append((rid, n))
            budget -= n
            _log_tables(log, step, rid, side.tables(rid), shared)
        finished = []
        for rid, n in scheduled:
            computed[rid] += n
            if computed[rid] == ntok[rid]:
                generated[rid] += 1
                if generated[rid] >= reqs[rid]["max_tokens"]:
                    finished.append(rid)
                else:
                    side.append(rid, _token(rid, ntok[rid]))
                    ntok[rid] += 1
        for rid in finished:
            side.free(rid)
            running.remove(rid)
        evicted, free = side.step_end()
        log.append(["evicted", step, evicted])
        if free is not None:
            log.append(["free", step, free])
        step += 1
    return log


def _log_tables(
    log: list[list[Any]], step: int, rid: int, rows: list[list[int]], ids: bool
) -> None:
    """Each group's table length and null entries; the ids too when they are comparable
    (``shared`` mode: one pool, one id space; per-group pools number blocks per pool)."""
    shapes = [[len(r), [i for i, b in enumerate(r) if b == 0]] for r in rows]
    log.append(["table", step, rid, shapes])
    if ids:
        log.append(["ids", step, rid, rows])


# --- hybridkv --------------------------------------------------------------------------


class HybridSide:
    def __init__(self, s: dict[str, Any]) -> None:
        from hybridkv import KVCacheManager, ManagerConfig, ManagerGroup

        bs = s["block_size"]
        nb = s["num_blocks"]
        groups = []
        for k in CONFIGS[s["config"]]:
            if k == "full":
                groups.append(ManagerGroup("full_attention", bs, nb))
            elif k == "swa":
                groups.append(ManagerGroup("sliding_window", bs, nb, window=s["window"]))
            elif k == "chunked":
                groups.append(ManagerGroup("chunked_local", bs, nb, chunk_size=s["chunk"]))
            else:
                groups.append(ManagerGroup("state", bs, nb))
        self.shared = s["memory"] == "shared"
        self.m = KVCacheManager(
            ManagerConfig(tuple(groups), "align"),
            enable_prefix_caching=True,
            enable_kv_events=True,
            shared_pool=self.shared,
            checkpoint_policy=s.get("checkpoint_policy", "lru"),
        )
        self.first = True

    @staticmethod
    def _a(rid: int) -> np.ndarray:
        return np.asarray([rid], dtype=np.int64)

    def new_step(self) -> None:
        self.first = True

    def add(self, rid: int, prompt: list[int]) -> None:
        self.m.add_requests(self._a(rid), [np.asarray(prompt, dtype=np.int32)])

    def lookup(self, rid: int) -> tuple[int, int]:
        hit = int(self.m.get_computed_tokens(self._a(rid))[0])
        return hit, int(self.m.shared_prefix_boundary(self._a(rid))[0])

    def unlookup(self, rid: int) -> None:
        self.m.preempt(self._a(rid))

    def allocate(self, rid: int, n: int, hit: int = 0) -> bool:
        del hit  # the lookup already made the hit the request's computed count
        ok = bool(self.m.allocate_slots(self._a(rid), np.asarray([n]), new_step=self.first)[0])
        self.first = False
        return ok

    def tables(self, rid: int) -> list[list[int]]:
        return [self.m.block_table(g, self._a(rid))[0].tolist() for g in range(self.m.num_groups)]

    def preempt(self, rid: int) -> None:
        self.m.preempt(self._a(rid))

    def append(self, rid: int, tok: int) -> None:
        self.m.append_tokens(self._a(rid), [np.asarray([tok], dtype=np.int32)])

    def free(self, rid: int) -> None:
        self.m.free(self._a(rid))

    def step_end(self) -> tuple[int, int | None]:
        """Blocks evicted since the last call; the shared pool's free count."""
        from hybridkv.cache.manager_events import BlockRemoved

        evicted = sum(
            len(e.block_hashes) for e in self.m.take_events() if isinstance(e, BlockRemoved)
        )
        return evicted, int(self.m.stats().num_free[0]) if self.shared else None


# --- vLLM (its own venv) ---------------------------------------------------------------


def vllm_main(path: str) -> None:
    """Run every stream of ``path`` through vLLM's KVCacheManager; print the logs."""
    import torch
    import vllm
    from vllm.sampling_params import SamplingParams
    from vllm.utils.hashing import sha256
    from vllm.v1.core.kv_cache_manager import KVCacheManager
    from vllm.v1.core.kv_cache_utils import get_request_block_hasher, init_none_hash
    from vllm.v1.kv_cache_interface import (
        ChunkedLocalAttentionSpec,
        FullAttentionSpec,
        KVCacheConfig,
        KVCacheGroupSpec,
        MambaSpec,
        SlidingWindowSpec,
    )
    from vllm.v1.request import Request

    init_none_hash(sha256)

    class VllmSide:
        def __init__(self, s: dict[str, Any]) -> None:
            bs = s["block_size"]
            kw = {"block_size": bs, "num_kv_heads": 2, "head_size": 64, "dtype": torch.bfloat16}
            groups = []
            for k in CONFIGS[s["config"]]:
                if k == "full":
                    spec: Any = FullAttentionSpec(**kw)
                elif k == "swa":
                    spec = SlidingWindowSpec(sliding_window=s["window"], **kw)
                elif k == "chunked":
                    spec = ChunkedLocalAttentionSpec(attention_chunk_size=s["chunk"], **kw)
                else:
                    spec = MambaSpec(
                        block_size=bs,
                        shapes=((3, 256), (4, 32, 32)),
                        dtypes=(torch.bfloat16, torch.float32),
                        mamba_cache_mode="align",
                    )
                groups.append(KVCacheGroupSpec([f"{k}.0"], spec))
            cfg = KVCacheConfig(
                num_blocks=s["num_blocks"], kv_cache_tensors=[], kv_cache_groups=groups
            )
            self.m = KVCacheManager(
                cfg,
                max_model_len=s["max_model_len"],
                scheduler_block_size=bs,
                hash_block_size=bs,
                enable_caching=True,
            )
            self.shared = s["memory"] == "shared"
            self.hasher = get_request_block_hasher(bs, sha256)
            self.reqs: dict[int, Any] = {}
            self.hits: dict[int, tuple[int, Any]] = {}
            self.evicted = 0
            self.requeued = 0
            pool = self.m.block_pool
            real = pool._maybe_evict_cached_block

            def counting(block: Any) -> bool:
                got = bool(real(block))
                self.evicted += int(got)
                return got

            pool._maybe_evict_cached_block = counting

        def new_step(self) -> None:
            self.m.new_step_starts()

        def add(self, rid: int, prompt: list[int]) -> None:
            sp = SamplingParams(max_tokens=1 << 20)
            self.reqs[rid] = Request(f"r{rid}", prompt, sp, None, block_hasher=self.hasher)

        def lookup(self, rid: int) -> tuple[int, int]:
            blocks, hit, boundary = self.m.get_computed_blocks(self.reqs[rid])
            self.hits[rid] = (hit, blocks)
            return int(hit), int(boundary)

        def unlookup(self, rid: int) -> None:
            # hybridkv's lookup holds the hit blocks (a reference each) until the
            # request is admitted or released; a refused admission releases them, tail
            # first, one group after another (KVCacheManager.preempt). Model that here
            # with vLLM's own pool calls (see BY_DESIGN).
            got = self.hits.pop(rid, None)
            if got is None or got[0] == 0:
                return
            pool = self.m.block_pool
            groups = [list(g) for g in got[1].blocks]
            for g in groups:
                pool.touch(g)
            for g in groups:
                pool.free_blocks(reversed(g))
            self.requeued += 1

        def allocate(self, rid: int, n: int, hit: int = 0) -> bool:
            r = self.reqs[rid]
            if rid in self.hits:
                nhit, blocks = self.hits[rid]
                got = self.m.allocate_slots(r, n, nhit, blocks)
                if got is not None:
                    del self.hits[rid]
                    r.num_computed_tokens += nhit
            else:
                got = self.m.allocate_slots(r, n)
            if got is None:
                return False
            r.num_computed_tokens += n
            return True

        def tables(self, rid: int) -> list[list[int]]:
            return [list(row) for row in self.m.get_block_ids(f"r{rid}")]

        def preempt(self, rid: int) -> None:
            r = self.reqs[rid]
            self.m.free(r)
            r.num_computed_tokens = 0

        def append(self, rid: int, tok: int) -> None:
            self.reqs[rid].append_output_token_ids(tok)

        def free(self, rid: int) -> None:
            self.m.free(self.reqs.pop(rid))

        def step_end(self) -> tuple[int, int | None]:
            evicted, self.evicted = self.evicted, 0
            free = int(self.m.block_pool.get_num_free_blocks()) if self.shared else None
            return evicted, free

    with open(path) as f:
        streams = json.load(f)
    logs = [run_stream(VllmSide(s), s) for s in streams]
    print(json.dumps({"version": vllm.__version__, "logs": logs}))


def vllm_python() -> str | None:
    venv = os.environ.get("VLLM_VENV", "/work/vllm-venv")
    py = os.path.join(venv, "bin", "python")
    return py if os.path.exists(py) else None


class VllmSideError(RuntimeError):
    """vLLM is installed, but its side of the comparison did not run to the end."""


def run_vllm(streams: list[dict[str, Any]]) -> tuple[str, list[list[list[Any]]]] | str:
    """vLLM's logs of ``streams`` (one subprocess), or a sentence saying why there are
    none because vLLM is absent (no venv, or no ``vllm`` package in it). Any other
    failure of the vLLM side raises :class:`VllmSideError`."""
    py = vllm_python()
    if py is None:
        return f"vLLM side skipped: no vLLM venv (install it with {INSTALL}, or set VLLM_VENV)"
    probe = subprocess.run(
        [
            py,
            "-c",
            "import importlib.util, sys; sys.exit(importlib.util.find_spec('vllm') is None)",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    if probe.returncode == 1:
        return f"vLLM side skipped: {py} has no vllm package (install it with {INSTALL})"
    if probe.returncode != 0:
        raise VllmSideError(f"{py} does not run: {probe.stderr.strip()[-300:]}")
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "streams.json")
        with open(path, "w") as f:
            json.dump(streams, f)
        proc = subprocess.run(
            [py, __file__, "--vllm-side", path], capture_output=True, text=True, timeout=3600
        )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    tail = " | ".join((proc.stderr or proc.stdout).strip().splitlines()[-5:])
    if proc.returncode != 0 or not lines:
        raise VllmSideError(f"vLLM side failed (exit {proc.returncode}): {tail}")
    out = json.loads(lines[-1])
    return str(out["version"]), out["logs"]


# --- comparison ------------------------------------------------------------------------


def compare(
    a: list[list[Any]], b: list[list[Any]]
) -> tuple[dict[str, int], tuple[int, Any, Any] | None]:
    """Intended differences met (by name) before the first divergence, and that
    divergence (record index, hybridkv record, vLLM record; None: none)."""
    intended: dict[str, int] = {}
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x == y:
            continue
        name = next((k for k, (_, ok) in INTENDED.items() if ok(x, y, a[:i])), None)
        if name is None:
            return intended, (i, x, y)
        intended[name] = intended.get(name, 0) + 1
    if len(a) != len(b):
        i = min(len(a), len(b))
        return intended, (i, a[i] if i < len(a) else None, b[i] if i < len(b) else None)
    return intended, None


def shrink(s: dict[str, Any], rounds: int = 8) -> dict[str, Any]:
    """A smaller stream that still diverges: greedily drop requests (every candidate of
    a round in one vLLM subprocess), else halve the outputs."""
    cur = s
    for _ in range(rounds):
        reqs = cur["requests"]
        cands = [{**cur, "requests": reqs[:i] + reqs[i + 1 :]} for i in range(len(reqs))]
        if any(r["max_tokens"] > 1 for r in reqs):
            halved = [{**r, "max_tokens": max(1, r["max_tokens"] // 2)} for r in reqs]
            cands.append({**cur, "requests": halved})
        cands = [c for c in cands if c["requests"]]
        try:
            got = run_vllm(cands)
        except VllmSideError:
            return cur
        if isinstance(got, str) or not cands:
            return cur
        best = None
        for c, vlog in zip(cands, got[1], strict=True):
            if compare(run_stream(HybridSide(c), c), vlog)[1] is not None:
                size = (len(c["requests"]), sum(r["max_tokens"] for r in c["requests"]))
                if best is None or size < best[0]:
                    best = (size, c)
        if best is None:
            return cur
        cur = best[1]
    return cur


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--streams", type=int, default=20, help="streams per config and memory mode")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--configs", default=",".join(CONFIGS), help="comma-separated")
    ap.add_argument("--memory", default="plenty,shared", help="plenty, shared or both")
    ap.add_argument("--no-shrink", action="store_true")
    ap.add_argument("--vllm-side", metavar="STREAMS", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.vllm_side:
        vllm_main(a.vllm_side)
        return 0

    from rich.console import Console
    from rich.table import Table

    con = Console(width=200)
    streams = [
        make_stream(a.seed * 100_003 + i, cfg, mem)
        for cfg in a.configs.split(",")
        for mem in a.memory.split(",")
        for i in range(a.streams)
    ]
    hlogs = [run_stream(HybridSide(s), s) for s in streams]
    try:
        got = run_vllm(streams)
    except VllmSideError as e:
        con.print(f"[red]{e}[/red]: nothing compared")
        return 1
    if isinstance(got, str):
        con.print(got)
        return 0
    version, vlogs = got
    table = Table(
        title=(
            f"hybridkv vs vLLM {version} KVCacheManager: {a.streams} random streams per row, "
            "one driver, every record compared"
        )
    )
    cols: tuple[str, ...] = ("config", "memory", "records", "lookups", "hit tokens", "allocs")
    cols += ("refused",)
    cols += ("refused hits", "preempts", "evicted hkv/vLLM", "intended", "diverging")
    for col in cols:
        table.add_column(col, justify="left" if col in ("config", "memory") else "right")
    divergences: list[tuple[dict[str, Any], tuple[int, Any, Any]]] = []
    intended_total: dict[str, int] = {}
    rows: dict[tuple[str, str], dict[str, int]] = {}
    evicted: dict[tuple[str, str], list[int]] = {}
    for s, h, v in zip(streams, hlogs, vlogs, strict=True):
        key = (s["config"], s["memory"])
        row = rows.setdefault(key, dict.fromkeys(cols[2:], 0))
        row["records"] += len(h)
        row["lookups"] += sum(1 for r in h if r[0] == "hit")
        row["hit tokens"] += sum(r[3] for r in h if r[0] == "hit")
        row["allocs"] += sum(1 for r in h if r[0] == "alloc")
        row["refused"] += sum(1 for r in h if r[0] == "alloc" and not r[4])
        row["refused hits"] += _refused_hits(h)
        row["preempts"] += sum(1 for r in h if r[0] == "preempt")
        ev = evicted.setdefault(key, [0, 0])
        for j, x in enumerate((h, v)):
            ev[j] += sum(r[2] for r in x if r[0] == "evicted")
        met, d = compare(h, v)
        row["intended"] += sum(met.values())
        for k, n in met.items():
            intended_total[k] = intended_total.get(k, 0) + n
        if d is not None:
            row["diverging"] += 1
            divergences.append((s, d))
    for key, row in rows.items():
        cells = {**row, "evicted hkv/vLLM": "{}/{}".format(*evicted[key])}
        table.add_row(*key, *(str(cells[c]) for c in cols[2:]))
    con.print(table)
    con.print(
        f"disagreements: {len(divergences)} of {len(streams)} streams diverge "
        "(every difference not named below is one)"
    )
    kinds: dict[str, int] = {}
    for _, (_, x, y) in divergences:
        k = (x or y)[0]
        kinds[k] = kinds.get(k, 0) + 1
    if kinds:
        con.print(
            "first diverging record, by kind: " + ", ".join(f"{k} {n}" for k, n in kinds.items())
        )
    for s, (i, x, y) in divergences[:10]:
        con.print(
            f"- {s['config']}/{s['memory']} seed {s['seed']}: record {i}: hybridkv {x}, vLLM {y}"
        )
    for name, (why, _) in INTENDED.items():
        con.print(f"intended difference '{name}' ({intended_total.get(name, 0)} records): {why}")
    for name, why in BY_DESIGN.items():
        con.print(f"difference by design, neutralised by the driver: '{name}': {why}")
    if divergences and not a.no_shrink:
        s = min((d[0] for d in divergences), key=lambda s: len(s["requests"]))
        small = shrink(s)
        try:
            again = run_vllm([small])
        except VllmSideError as e:
            again = str(e)
        d = (
            None
            if isinstance(again, str)
            else compare(run_stream(HybridSide(small), small), again[1][0])[1]
        )
        con.print("shrunk reproducer (a stream for run_stream; its first divergence after):")
        con.print(json.dumps(small), soft_wrap=True)
        con.print(f"first divergence: {d}", soft_wrap=True)
    return 1 if divergences else 0


if __name__ == "__main__":
    sys.exit(main())
