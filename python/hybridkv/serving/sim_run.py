"""Running a simulation: :func:`simulate_plan` replays one trace on one layout as a
discrete-event loop (the scheduler plans each step over the real manager, the clock
advances by the cost model's step time; :mod:`hybridkv.serving.simulate` says what is
modelled and what is measured), and :func:`run` plans every layout and replays the trace
on each."""

from __future__ import annotations

import heapq
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from hybridkv.errors import HybridKVError, InvalidArgumentError, PlanError
from hybridkv.planning.planner import MemoryPlan
from hybridkv.serving.cost_model import CostModel
from hybridkv.serving.ideal_hit import ideal_hit_rate
from hybridkv.serving.layouts import LAYOUTS, make_layouts
from hybridkv.serving.scheduler import POLICIES, ExternalPrefixSource, Scheduler
from hybridkv.serving.sim_config import SimConfig, cost_plan, resolve_trace
from hybridkv.serving.sim_report import F64, LayoutResult, SimReport
from hybridkv.serving.traces import Trace


def _pool_used(manager: Any, plan: MemoryPlan) -> F64:
    """Fraction of each pool's usable blocks in use (held by requests)."""
    u = manager.usage()
    row = np.zeros(len(plan.groups))
    got = np.asarray(u, dtype=np.float64).reshape(-1)[: len(plan.groups)]
    row[: got.shape[0]] = got
    return row


def _pct(x: F64, q: float) -> float:
    return float(np.percentile(x, q)) if x.size else float("nan")


def _dist(x: F64) -> dict[str, float]:
    return {
        "mean": float(x.mean()) if x.size else float("nan"),
        "p50": _pct(x, 50),
        "p99": _pct(x, 99),
    }


def simulate_plan(
    plan: MemoryPlan,
    trace: Trace,
    *,
    layout: str,
    cost: CostModel,
    policy: str = "fcfs",
    long_prefill_token_threshold: int | None = None,
    offload: ExternalPrefixSource | None = None,
    manager_factory: Callable[[MemoryPlan], Any] | None = None,
    on_progress: Callable[[int, float], None] | None = None,
    scheduler_options: Mapping[str, Any] | None = None,
) -> LayoutResult:
    """Replay ``trace`` on ``plan`` (:mod:`hybridkv.serving.simulate`); returns the layout's result."""
    n = trace.num_requests
    prompt_lens = trace.prompt_lens
    out_lens = trace.output_lens
    longest = int((prompt_lens + out_lens).max()) if n else 0
    if longest > plan.max_model_len:
        raise InvalidArgumentError(
            f"trace {trace.name!r} has a request of {longest} tokens, above max_model_len "
            f"{plan.max_model_len}"
        )
    if manager_factory is None:
        from hybridkv.cache.manager import KVCacheManager

        manager = KVCacheManager(plan, enable_prefix_caching=True, hash_seed=0)
    else:
        manager = manager_factory(plan)
    sched = Scheduler(
        manager,
        max_num_batched_tokens=plan.max_num_batched_tokens,
        max_num_seqs=plan.max_num_seqs,
        policy=policy,
        long_prefill_token_threshold=long_prefill_token_threshold,
        max_model_len=plan.max_model_len,
        block_size=min([g.block_size for g in plan.groups if g.grows] or [plan.block_size]),
        external=offload,
        **dict(scheduler_options or {}),
    )
    children: dict[int, list[int]] = {}
    for i, p in enumerate(trace.parent.tolist()):
        if p >= 0:
            children.setdefault(p, []).append(i)
    pending: list[tuple[float, int]] = [
        (float(trace.arrival[i]), i) for i in range(n) if trace.parent[i] < 0
    ]
    heapq.heapify(pending)
    arrived = np.full(n, np.nan)
    first_tok = np.full(n, np.nan)
    finish = np.full(n, np.nan)
    n_out = np.zeros(n, dtype=np.int64)
    # Every request's output tokens in one flat array (one vectorised pass, not one
    # list per request): the token request i samples next is out_flat[out_at[i] + n_out[i]].
    out_flat = trace.segments_tokens(trace.output_seg)
    out_at = np.concatenate([[0], np.cumsum(out_lens)[:-1]]).astype(np.int64)
    wall0 = time.perf_counter()
    load_seconds = getattr(offload, "load_seconds", None)
    after_step = getattr(offload, "after_step", None)
    on_step = getattr(offload, "on_step", None)

    t = 0.0
    steps = 0
    idle_steps = 0
    busy_time = 0.0
    conc_time = 0.0
    peak_conc = 0
    hit_tokens = prompt_tokens = 0
    resumed_hits = preemptions = 0
    ext_tokens = 0
    overhead_ns: list[int] = []
    times: list[float] = []
    usage_rows: list[F64] = []
    hit_series: list[float] = []
    done_count = 0
    arena_info = getattr(manager, "arena_info", None)
    waste_rows: list[float] = []
    while pending or sched.has_unfinished():
        if not sched.has_unfinished() and pending[0][0] > t:
            t = pending[0][0]  # idle: jump to the next arrival
        while pending and pending[0][0] <= t:
            _, i = heapq.heappop(pending)
            arrived[i] = t
            sched.add_request(
                i,
                trace.prompt_tokens(i),
                int(out_lens[i]),
                priority=int(trace.priority[i]),
                arrival_time=t,
            )
        t0 = time.perf_counter_ns()
        out = sched.schedule()
        t1 = time.perf_counter_ns()
        ids = out.req_ids
        ext = out.num_external_tokens
        c = cost.step(
            out.num_new_tokens - ext, out.num_computed_before + ext, int(out.samples.sum())
        )
        dt = c.seconds
        if load_seconds is not None and int(ext.sum()):
            dt += float(load_seconds(int(ext.sum())))
        if on_step is not None:  # where an engine's forward pass runs: load, then store
            on_step(manager, out)
        sidx = np.asarray(out.sample_req_ids, dtype=np.int64)
        tokens = out_flat[out_at[sidx] + n_out[sidx]]
        t2 = time.perf_counter_ns()
        done = sched.update_from_output(tokens)
        t3 = time.perf_counter_ns()
        overhead_ns.append((t1 - t0) + (t3 - t2))
        if after_step is not None:
            after_step(manager, out)
        steps += 1
        if ids.size == 0:
            idle_steps += 1
            if idle_steps > 1000:
                raise HybridKVError("simulation stalled: 1000 steps without scheduled work")
            if not pending and not sched.has_unfinished():
                break
            if pending and sched.num_running == 0 and dt == 0.0:
                t = max(t, pending[0][0])
            continue
        idle_steps = 0
        t += dt
        busy_time += dt
        conc_time += dt * out.num_running
        peak_conc = max(peak_conc, out.num_running)
        hit_tokens += int(out.new_hit_tokens.sum())
        prompt_tokens += int(out.new_prompt_lens.sum())
        resumed_hits += int(out.resumed_hit_tokens.sum())
        preemptions += int(out.preempted_req_ids.size)
        ext_tokens += int(ext.sum())
        if sidx.size:
            firsts = sidx[n_out[sidx] == 0]
            first_tok[firsts] = t
            n_out[sidx] += 1
        for f in done:
            finish[f.req_id] = t
            done_count += 1
            for ch in children.get(f.req_id, ()):
                heapq.heappush(pending, (t + float(trace.arrival[ch]), ch))
        times.append(t)
        usage_rows.append(_pool_used(manager, plan))
        if arena_info is not None:
            info = arena_info()
            if info is not None:
                waste_rows.append(float(info["waste_bytes"]))
        hit_series.append(hit_tokens / prompt_tokens if prompt_tokens else 0.0)
        if on_progress is not None and (done or steps % 64 == 0):
            on_progress(done_count, t)
    if on_progress is not None:
        on_progress(done_count, t)
    recomputed = sched.recomputed_tokens
    wall = time.perf_counter() - wall0

    finished = ~np.isnan(finish)
    if not bool(finished.all()):
        raise HybridKVError(f"{int((~finished).sum())} requests never finished")
    bad = [f.req_id for f in sched.finished if len(f.output_token_ids) != out_lens[f.req_id]]
    if bad:
        raise HybridKVError(f"requests {bad[:5]} finished with the wrong output length")
    ttft = first_tok - arrived
    multi = out_lens > 1
    tpot = (finish[multi] - first_tok[multi]) / (out_lens[multi] - 1)
    makespan = t
    oh = np.asarray(overhead_ns, dtype=np.float64) / 1e3
    total_out = int(out_lens.sum())
    total_in = int(prompt_lens.sum())
    grows = [g for g in plan.groups if g.grows]
    usage = np.vstack(usage_rows) if usage_rows else np.zeros((0, len(plan.groups)))
    report: dict[str, Any] = {
        "layout": layout,
        "token_capacity": int(plan.token_capacity),
        "physical_token_limit": plan.physical_token_limit,
        "block_size": int(grows[0].block_size if grows else plan.block_size),
        "pools": [
            {
                "group": g.index,
                "kind": g.kind,
                "layers": len(g.layers),
                "block_size": g.block_size,
                "num_blocks": g.num_blocks,
                "bytes": g.bytes,
                "peak_usage": float(usage[:, g.index].max()) if usage.size else 0.0,
            }
            for g in plan.groups
        ],
        "requests": n,
        "steps": steps,
        "peak_concurrency": int(peak_conc),
        "mean_concurrency": conc_time / busy_time if busy_time else 0.0,
        "prompt_tokens": prompt_tokens,
        "prefix_hit_tokens": hit_tokens,
        "prefix_hit_rate": hit_tokens / prompt_tokens if prompt_tokens else 0.0,
        "preemptions": preemptions,
        "resumed_hit_tokens": resumed_hits,
        "recomputed_tokens": recomputed,
        "external_hit_tokens": ext_tokens,
        "makespan_s": makespan,
        "output_throughput_tok_s": total_out / makespan if makespan else 0.0,
        "total_throughput_tok_s": (total_out + total_in) / makespan if makespan else 0.0,
        "output_throughput": total_out / makespan if makespan else 0.0,
        "ttft_p50": _pct(ttft, 50),
        "ttft_p99": _pct(ttft, 99),
        "ttft_s": _dist(ttft),
        "tpot_s": _dist(tpot),
        "measured": {
            "scheduler_overhead_us_per_step": _dist(oh),
            "scheduler_overhead_s_total": float(oh.sum() / 1e6),
            "sim_wall_s": wall,
            "sim_requests_per_wall_s": n / wall if wall > 0 else 0.0,
        },
    }
    stats = getattr(manager, "stats", None)
    if stats is not None and steps:
        # The manager's own timers (inside the overhead above): hashing, lookup, allocation.
        st = stats()
        inner = st.hash_seconds + st.lookup_seconds + st.alloc_seconds
        report["measured"]["manager_us_per_step"] = 1e6 * inner / steps
    final_info = manager.arena_info() if waste_rows else None
    if final_info is not None:
        w = np.asarray(waste_rows, dtype=np.float64)
        report["arena"] = {
            "region_bytes": int(final_info["region_bytes"]),
            "num_regions": int(final_info["num_regions"]),
            "waste_bytes_mean": float(w.mean()),
            "waste_bytes_peak": float(w.max()),
            "waste_fraction_peak": float(w.max()) / plan.memory_bytes,
            "worst_waste_fraction": int(final_info["worst_waste_bytes"]) / plan.memory_bytes,
            "region_grants": int(final_info["grants"]),
            "region_moves": int(final_info["moves"]),
            "evicted_by_moves": int(final_info["evicted_blocks"]),
        }
    offload_report = getattr(offload, "report", None)
    if offload_report is not None:
        report["offload"] = offload_report()
    labels = [f"g{g.index} {g.kind}" for g in plan.groups]
    return LayoutResult(report, np.asarray(times), usage, labels, np.asarray(hit_series))


def run(
    cfg: SimConfig,
    layouts: Sequence[str] | None = None,
    *,
    progress: bool = False,
    offload: ExternalPrefixSource | None = None,
    manager_factory: Callable[[MemoryPlan], Any] | None = None,
) -> SimReport:
    """Plan, then simulate ``cfg`` on each of ``layouts`` (default: every registered
    layout) with a rich progress bar. ``manager_factory`` (offload) replaces every
    layout's own manager factory."""
    names = list(LAYOUTS) if layouts is None else list(dict.fromkeys(layouts))
    for lay in names:
        if lay not in LAYOUTS:
            raise InvalidArgumentError(f"layout must be one of {tuple(LAYOUTS)}, got {lay!r}")
    if not names:
        raise InvalidArgumentError("no layout given")
    if cfg.policy not in POLICIES:
        raise InvalidArgumentError(f"policy must be one of {POLICIES}, got {cfg.policy!r}")
    trace = resolve_trace(cfg.trace, cfg.seed, window=cfg.trace_window, sharegpt=cfg.sharegpt)
    setups = make_layouts(cfg, trace, names)
    plans = {k: v if isinstance(v, str) else v.plan for k, v in setups.items()}
    runnable = [(k, s) for k, s in setups.items() if not isinstance(s, str)]
    if not runnable:
        raise PlanError("; ".join(f"{k}: {v}" for k, v in plans.items()))
    # Step times come from hybridkv's plan of the model, the same for every layout.
    cost = CostModel(cost_plan(cfg, trace), gpu=cfg.gpu, num_gpus=cfg.num_gpus)
    results: dict[str, LayoutResult] = {}

    def go(bar: Callable[[str], Callable[[int, float], None] | None]) -> None:
        for lay, setup in runnable:
            results[lay] = simulate_plan(
                setup.plan,
                trace,
                layout=lay,
                cost=cost,
                policy=cfg.policy,
                long_prefill_token_threshold=cfg.long_prefill_token_threshold,
                offload=offload,
                manager_factory=manager_factory or setup.manager_factory,
                on_progress=bar(lay),
                scheduler_options=setup.scheduler_options,
            )

    if progress:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

        cols = (
            TextColumn("{task.description:<10}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("requests  t={task.fields[t]:7.1f}s modelled"),
        )
        with Progress(*cols, console=Console(stderr=True), transient=False) as prog:

            def bar(lay: str) -> Callable[[int, float], None]:
                task = prog.add_task(lay, total=trace.num_requests, t=0.0)
                return lambda done, t: prog.update(task, completed=done, t=t)

            go(bar)
    else:
        go(lambda lay: None)
    return SimReport(
        cfg, trace, plans, results, cost.describe(), ideal_hit_rate=ideal_hit_rate(trace)
    )
