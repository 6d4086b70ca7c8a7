"""The tiny hybrid LM's cached path: :class:`CachedRunner` runs one scheduler step over
hybridkv's paged caches, :func:`serve` drives it to greedy completion.

The K/V of attention layers live in their group's pool (``[num_blocks, block_size,
kv_heads, head_dim]``), the conv and recurrent states of the Mamba-2 / gated-delta layers
in their state group's pool (one slot per block id), all read and written through the
Triton kernels at the block tables and slot mappings the manager gives.

State group convention (the manager's): table entry ``k`` of a state group holds the
state after ``min((k + 1) * block_size, t)`` tokens, so a step computing tokens
``[c, c + n)`` reads entry ``cdiv(c, bs) - 1`` (nothing when ``c == 0``) and writes
entry ``cdiv(c + n, bs) - 1``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from hybridkv import ops
from hybridkv.testing.tiny_lm import (
    ATTENTION_KINDS,
    CHUNKED,
    MAMBA2,
    SLIDING,
    TinyHybridLM,
    _rms,
)


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


@dataclass
class StepTrace:
    """What :class:`CachedRunner` saw in one step (for the proof's assertions)."""

    step: int
    num_tokens: int
    prefill_rows: int
    decode_rows: int
    #: Requests whose step continued a partly computed prompt (chunked prefill).
    chunked_prefill_rows: int
    #: Null entries below the live range of sliding-window tables (released blocks).
    window_nulls: int
    #: State reads from a checkpoint another request or an earlier life wrote.
    state_reads: int


class CachedRunner:
    """Runs scheduler steps of a :class:`TinyHybridLM` over hybridkv's paged caches.

    ``plan`` is the :class:`~hybridkv.planning.planner.MemoryPlan` the manager was built from:
    each layer's cache tensors are sized by its group's pool (``num_blocks``), and
    block 0 (the null block) is filled with NaN so that any read of it would show. An
    elastic plan (``plan.arena`` set) puts every layer's tensors in ONE
    :class:`~hybridkv.cache.arena_backend.TorchArena` (strided views over one byte tensor,
    all NaN to start), so groups really share memory as the manager moves it.
    """

    def __init__(self, model: TinyHybridLM, plan: Any) -> None:
        self.model = model
        self.plan = plan
        c = model.cfg
        self.group_of: dict[int, int] = {}
        for g in plan.groups:
            for layer in g.layers:
                self.group_of[int(layer)] = int(g.index)
        self.block_size = {int(g.index): int(g.block_size) for g in plan.groups}
        self.caches: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self.arena: Any = None
        if getattr(plan, "arena", None) is not None:
            from hybridkv.cache.arena_backend import TorchArena

            self.arena = TorchArena(plan)
        for i, kind in enumerate(c.layers):
            g = plan.groups[self.group_of[i]]
            nb = int(g.num_blocks)
            if kind in ATTENTION_KINDS:
                shape: tuple[tuple[int, ...], tuple[int, ...]] = (
                    (nb, int(g.block_size), c.num_kv_heads, c.head_dim),
                ) * 2
            elif kind == MAMBA2:
                shape = (
                    (nb, c.d_conv - 1, c.mamba_conv_dim),
                    (nb, c.mamba_heads, c.mamba_head_dim, c.d_state),
                )
            else:
                shape = (
                    (nb, c.d_conv - 1, c.gdn_conv_dim),
                    (nb, c.gdn_v_heads, c.gdn_v_dim, c.gdn_k_dim),
                )
            dtypes = (model.dtype, model.dtype if kind in ATTENTION_KINDS else torch.float32)
            if self.arena is not None:
                j = g.layers.index(i)
                k, v = self.arena.layer_views(
                    int(g.index), j, [(shape[0][1:], dtypes[0]), (shape[1][1:], dtypes[1])]
                )
                self.caches[i] = (k, v)
                continue
            self.caches[i] = (
                torch.full(shape[0], float("nan"), dtype=dtypes[0]),
                torch.full(shape[1], float("nan"), dtype=dtypes[1]),
            )
        self.traces: list[StepTrace] = []
        #: States written at block boundaries inside a step (mode ``all``), and states
        #: later read from such a slot (a prefix hit or resume starting there).
        self.checkpoint_writes = 0
        self.checkpoint_reads = 0
        self._inner: set[tuple[int, int]] = set()

    def execute(
        self,
        manager: Any,
        req_ids: Sequence[int],
        num_computed: Sequence[int],
        num_new: Sequence[int],
        tokens: Mapping[int, Sequence[int]],
        sample_rows: Sequence[bool],
    ) -> dict[int, torch.Tensor]:
        """Compute one step; returns the last-token logits of every sampling request."""
        c = self.model.cfg
        w = self.model.w
        n = len(req_ids)
        if n == 0:
            return {}
        ids = np.asarray(req_ids, dtype=np.int64)
        comp = [int(x) for x in num_computed]
        new = [int(x) for x in num_new]
        flat_tokens: list[int] = []
        positions: list[int] = []
        req_of_row: list[int] = []
        for r, (rid, c0, cnt) in enumerate(zip(ids.tolist(), comp, new, strict=True)):
            flat_tokens.extend(int(t) for t in tokens[rid][c0 : c0 + cnt])
            positions.extend(range(c0, c0 + cnt))
            req_of_row.extend([r] * cnt)
        qsl_list = [0]
        for cnt in new:
            qsl_list.append(qsl_list[-1] + cnt)
        qsl = torch.tensor(qsl_list, dtype=torch.int32)
        seq_lens = torch.tensor([a + b for a, b in zip(comp, new, strict=True)], dtype=torch.int32)
        pos = torch.tensor(positions, dtype=torch.long)
        row_ids = np.asarray([req_ids[r] for r in req_of_row], dtype=np.int64)

        tables: dict[int, torch.Tensor] = {}
        slots: dict[int, torch.Tensor] = {}
        src: dict[int, torch.Tensor] = {}
        dst: dict[int, torch.Tensor] = {}
        ckpt: dict[int, tuple[torch.Tensor, torch.Tensor, int]] = {}
        window_nulls = 0
        state_reads = 0
        for g in self.plan.groups:
            gi = int(g.index)
            bs = int(g.block_size)
            table = np.asarray(manager.block_table(gi, ids), dtype=np.int32)
            if g.kind == "state":
                s_src, s_dst = [], []
                for r in range(n):
                    read = _cdiv(comp[r], bs) - 1
                    write = _cdiv(comp[r] + new[r], bs) - 1
                    s_src.append(int(table[r, read]) if read >= 0 else -1)
                    s_dst.append(int(table[r, write]))
                    if read >= 0 and s_src[-1] <= 0:
                        raise AssertionError(f"request {req_ids[r]}: no state at entry {read}")
                    if s_dst[-1] <= 0:
                        raise AssertionError(f"request {req_ids[r]}: no state slot to write")
                    state_reads += int(read >= 0 and s_src[-1] != s_dst[-1])
                src[gi] = torch.tensor(s_src, dtype=torch.int64)
                dst[gi] = torch.tensor(s_dst, dtype=torch.int64)
                ckpt[gi] = self._checkpoints(table, comp, new, bs)
                # Which states came from a boundary inside an earlier step (mode "all").
                self.checkpoint_reads += sum((gi, x) in self._inner for x in s_src)
                self._inner -= {(gi, x) for x in s_dst}
                self._inner |= {(gi, int(x)) for x in ckpt[gi][0].flatten().tolist() if x > 0}
            else:
                tables[gi] = torch.from_numpy(np.ascontiguousarray(table))
                sm = np.asarray(manager.slot_mapping(gi, row_ids, np.asarray(positions)))
                if (sm < 0).any():
                    raise AssertionError(f"group {gi}: a token of this step maps to no slot")
                slots[gi] = torch.from_numpy(sm.astype(np.int64))
                if g.kind == "sliding_window":
                    for r in range(n):
                        live = (comp[r] + 1 - int(g.window)) // bs if comp[r] else 0
                        window_nulls += int((table[r, : max(live, 0)] == 0).sum())

        decode = [r for r in range(n) if new[r] == 1 and comp[r] > 0]
        prefill = [r for r in range(n) if r not in decode]
        steps = {gi: _StateStep(qsl, src[gi], dst[gi], ckpt[gi], prefill, decode) for gi in src}
        self.traces.append(
            StepTrace(
                step=len(self.traces),
                num_tokens=len(flat_tokens),
                prefill_rows=len(prefill),
                decode_rows=len(decode),
                chunked_prefill_rows=sum(1 for r in prefill if not sample_rows[r]),
                window_nulls=window_nulls,
                state_reads=state_reads,
            )
        )

        x = w["embed"][torch.tensor(flat_tokens, dtype=torch.long)]
        for i, kind in enumerate(c.layers):
            gi = self.group_of[i]
            h = _rms(x, w[f"{i}.norm"], c.eps)
            if kind in ATTENTION_KINDS:
                q, k, v = self.model._qkv(i, h, pos)
                kc, vc = self.caches[i]
                ops.write_kv(k.contiguous(), v.contiguous(), kc, vc, slots[gi])
                o = ops.paged_attention(
                    q.contiguous(),
                    kc,
                    vc,
                    tables[gi],
                    seq_lens,
                    qsl,
                    sliding_window=c.window if kind == SLIDING else None,
                    chunk_size=c.chunk if kind == CHUNKED else None,
                )
                x = x + o.reshape(o.shape[0], -1) @ w[f"{i}.o"].T
            elif kind == MAMBA2:
                x = x + self._mamba(i, h, steps[gi])
            else:
                x = x + self._gdn(i, h, steps[gi])
            x = x + self.model._mlp(i, x)

        last = [qsl_list[r + 1] - 1 for r in range(n) if sample_rows[r]]
        logits = self.model._head(x[last]).float() if last else torch.zeros(0)
        rids = [int(ids[r]) for r in range(n) if sample_rows[r]]
        return {rid: logits[j] for j, rid in enumerate(rids)}

    def _checkpoints(
        self, table: np.ndarray[Any, Any], comp: list[int], new: list[int], bs: int
    ) -> tuple[torch.Tensor, torch.Tensor, int]:
        """Block boundaries strictly inside each request's step whose table entry holds
        a block (mode ``all``; in ``align`` those entries are null) get the state there."""
        rows: list[list[int]] = []
        firsts: list[int] = []
        for r, (c0, cnt) in enumerate(zip(comp, new, strict=True)):
            b0 = (c0 // bs + 1) * bs
            slots = [int(table[r, b // bs - 1]) for b in range(b0, c0 + cnt, bs)]
            rows.append([x if x > 0 else -1 for x in slots])
            firsts.append(b0 - c0)
        self.checkpoint_writes += sum(x > 0 for row in rows for x in row)
        width = max([len(x) for x in rows] + [1])
        padded = [x + [-1] * (width - len(x)) for x in rows]
        return torch.tensor(padded, dtype=torch.int64), torch.tensor(firsts), bs

    def _conv(
        self, i: int, xbc: torch.Tensor, bias: torch.Tensor | None, step: _StateStep
    ) -> torch.Tensor:
        conv_state = self.caches[i][0]
        weight = self.model.w[f"{i}.conv_w"]
        return step.run(
            torch.empty_like(xbc),
            ops.causal_conv1d_prefill,
            ops.causal_conv1d_update,
            lambda idx: (*_rows(idx, xbc), conv_state, weight, bias),
        )

    def _mamba(self, i: int, h: torch.Tensor, step: _StateStep) -> torch.Tensor:
        w = self.model.w
        z, xbc, dt = self.model._mamba_in(i, h)
        xbc = self._conv(i, xbc, w[f"{i}.conv_b"], step)
        xs, b, cc = self.model._mamba_split(xbc)
        ssm = self.caches[i][1]
        a, d, dt_bias = (w[f"{i}.{name}"].float() for name in ("A", "D", "dt_bias"))
        y = step.run(
            torch.empty_like(xs),
            ops.ssd_prefill,
            ops.selective_state_update,
            lambda idx: (ssm, *_rows(idx, xs, dt), a, *_rows(idx, b, cc), d, dt_bias),
        )
        return self.model._mamba_out(i, y, z)

    def _gdn(self, i: int, h: torch.Tensor, step: _StateStep) -> torch.Tensor:
        w = self.model.w
        qkv, z, a, b = self.model._gdn_in(i, h)
        qkv = self._conv(i, qkv, None, step)
        q, k, v = self.model._gdn_split(qkv)
        state = self.caches[i][1]
        a_log, dt_bias = w[f"{i}.A_log"].float(), w[f"{i}.dt_bias"].float()
        o = step.run(
            torch.empty_like(v),
            ops.gated_delta_rule,
            ops.gated_delta_decode,
            lambda idx: (state, *_rows(idx, q, k, v, a, b), a_log, dt_bias),
        )
        return self.model._gdn_out(i, o, z)


def _rows(idx: torch.Tensor, *tensors: torch.Tensor) -> list[torch.Tensor]:
    """Token rows ``idx`` of each tensor, contiguous (as the launchers want them)."""
    return [t[idx].contiguous() for t in tensors]


@dataclass(frozen=True)
class _StateStep:
    """One step's batch as a state group sees it: per request the source and
    destination slots and mid-step checkpoints (``slots, first, every``), and which
    requests run as prefill (several new tokens, or the first) and which as decode."""

    qsl: torch.Tensor
    src: torch.Tensor
    dst: torch.Tensor
    ckpt: tuple[torch.Tensor, torch.Tensor, int]
    prefill: list[int]
    decode: list[int]

    def _tokens(self, rows: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Token indices of requests ``rows`` and their own ``query_start_loc``."""
        idx: list[int] = []
        sub = [0]
        for r in rows:
            a, b = int(self.qsl[r]), int(self.qsl[r + 1])
            idx.extend(range(a, b))
            sub.append(sub[-1] + b - a)
        return torch.tensor(idx, dtype=torch.long), torch.tensor(sub, dtype=torch.int32)

    def run(
        self,
        out: torch.Tensor,
        prefill_op: Callable[..., torch.Tensor],
        decode_op: Callable[..., torch.Tensor],
        operands: Callable[[torch.Tensor], Sequence[Any]],
    ) -> torch.Tensor:
        """Fill ``out``'s token rows through a state op's two launchers and return it.

        ``operands(idx)`` gives the launcher's leading arguments for token rows
        ``idx``; prefill requests then pass their ``query_start_loc``, slots and
        checkpoints, decode requests their slots.
        """
        if self.prefill:
            idx, sub = self._tokens(self.prefill)
            slots, first, every = self.ckpt
            out[idx] = prefill_op(
                *operands(idx),
                sub,
                self.src[self.prefill],
                self.dst[self.prefill],
                checkpoint_slots=slots[self.prefill].contiguous(),
                checkpoint_first=first[self.prefill].contiguous(),
                checkpoint_every=every,
            )
        if self.decode:
            idx, _ = self._tokens(self.decode)
            out[idx] = decode_op(*operands(idx), self.src[self.decode], self.dst[self.decode])
        return out


# ---------------------------------------------------------------------------------------
# driving it all
# ---------------------------------------------------------------------------------------


@dataclass
class ServeResult:
    """Outputs of :func:`serve` and what happened on the way."""

    outputs: dict[int, list[int]]
    #: Per request, the logits each sampled token was taken from (fp32, in order).
    logits: dict[int, list[torch.Tensor]]
    steps: int
    #: Prefix-hit tokens at first admission and at resumption after preemption.
    hit_tokens: int
    resumed_hit_tokens: int
    preemptions: int
    traces: list[StepTrace] = field(default_factory=list)
    manager_stats: Any = None
    #: States written at block boundaries inside a step (mode ``all``) and read back.
    checkpoint_writes: int = 0
    checkpoint_reads: int = 0
    #: Elastic plans: after each step, regions moved between groups so far (and the
    #: manager's arena report at the end).
    arena_moves: list[int] = field(default_factory=list)
    arena_info: Any = None


def serve(
    model: TinyHybridLM,
    prompts: Mapping[int, Sequence[int]],
    max_tokens: int | Mapping[int, int],
    *,
    plan: Any,
    max_num_batched_tokens: int,
    max_num_seqs: int,
    long_prefill_token_threshold: int | None = None,
    arrivals: Mapping[int, int] | None = None,
    max_steps: int = 10_000,
) -> ServeResult:
    """Greedy generation for ``prompts`` through Scheduler + KVCacheManager + kernels.

    ``arrivals`` (request id -> step) holds requests back until that step, so later
    ones can hit prefixes cached by earlier ones.
    """
    from hybridkv.cache.manager import KVCacheManager
    from hybridkv.serving.scheduler import Scheduler

    manager = KVCacheManager(plan)
    sched = Scheduler(
        manager,
        max_num_batched_tokens=max_num_batched_tokens,
        max_num_seqs=max_num_seqs,
        long_prefill_token_threshold=long_prefill_token_threshold,
    )
    runner = CachedRunner(model, plan)
    tokens: dict[int, list[int]] = {rid: list(p) for rid, p in prompts.items()}
    outputs: dict[int, list[int]] = {rid: [] for rid in prompts}
    logits: dict[int, list[torch.Tensor]] = {rid: [] for rid in prompts}
    pending = sorted(prompts, key=lambda r: ((arrivals or {}).get(r, 0), r))
    hits = resumed_hits = 0
    moves: list[int] = []
    step = 0
    while pending or sched.has_unfinished():
        if step >= max_steps:
            raise RuntimeError(f"no completion after {max_steps} steps")
        while pending and (arrivals or {}).get(pending[0], 0) <= step:
            rid = pending.pop(0)
            mt = max_tokens if isinstance(max_tokens, int) else max_tokens[rid]
            sched.add_request(rid, np.asarray(prompts[rid], dtype=np.int32), mt)
        out = sched.schedule()
        hits += int(out.new_hit_tokens.sum())
        resumed_hits += int(out.resumed_hit_tokens.sum())
        got = runner.execute(
            manager,
            out.req_ids.tolist(),
            out.num_computed_before.tolist(),
            out.num_new_tokens.tolist(),
            tokens,
            out.samples.tolist(),
        )
        sampled = {rid: int(lg.argmax()) for rid, lg in got.items()}
        for rid, lg in got.items():
            logits[rid].append(lg)
            outputs[rid].append(sampled[rid])
            tokens[rid].append(sampled[rid])
        sched.update_from_output(sampled)
        info = manager.arena_info()
        if info is not None:
            moves.append(int(info["moves"]))
        step += 1
    return ServeResult(
        outputs=outputs,
        logits=logits,
        steps=step,
        hit_tokens=hits,
        resumed_hit_tokens=resumed_hits,
        preemptions=sched.num_preemptions,
        traces=runner.traces,
        manager_stats=manager.stats(),
        checkpoint_writes=runner.checkpoint_writes,
        checkpoint_reads=runner.checkpoint_reads,
        arena_moves=moves,
        arena_info=manager.arena_info(),
    )


__all__ = ["CachedRunner", "ServeResult", "StepTrace", "serve"]
