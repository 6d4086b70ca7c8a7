"""Token capacity of every bundled model: hybridkv's per-group plan vs vLLM 0.33's
runtime layout of the same memory (one shared pool at its inflated block size, with
max_num_seqs requests' state/window blocks reserved) vs the physical limit, at one
stated budget; vLLM's boot-log figure beside it (what vLLM prints, not what it holds).

Budget: 60 GiB of KV cache, max_model_len 32768 (Whisper: its 448-token decoder),
8192 batched tokens, block size 16, bf16 KV (the model's dtype; Whisper fp16), tp=1,
mamba_cache_mode "align"; once with 256 sequences and once with 32. Bounded pools are
reserved for max_num_seqs requests at their worst case, so a model whose windows or
states cannot all be held at once reports "does not fit" and by how much. The physical limit is (memory - bounded pools - one null
block per growing pool) / growing bytes per token; "per-request" re-plans with the
per-request window sizing to show what the tight bound buys.
"""

from __future__ import annotations

from hybridkv.errors import PlanError
from hybridkv.models import list_models, load_model
from hybridkv.planner import plan_memory
from hybridkv.units import format_bytes
from rich.console import Console
from rich.table import Table

MEMORY = 60 << 30
MAX_MODEL_LEN = 32768
MAX_BATCHED = 8192
BLOCK = 16


def capacity_table(max_num_seqs: int) -> Table:
    """One row per bundled model at the stated budget with ``max_num_seqs`` sequences."""
    table = Table(
        title=(
            f"capacity at {format_bytes(MEMORY)}, max_model_len {MAX_MODEL_LEN}, "
            f"{max_num_seqs} seqs, {MAX_BATCHED} batched tokens, block {BLOCK}, bf16"
        )
    )
    for col in (
        "model",
        "groups",
        "bounded pools",
        "hybridkv tokens",
        "physical limit",
        "vLLM runtime",
        "hybridkv / vLLM",
        "vLLM boot log",
        "per-request sizing",
    ):
        table.add_column(col, justify="left" if col in ("model", "groups") else "right")
    for name in list_models():
        model = load_model(name)
        max_len = min(MAX_MODEL_LEN, model.max_model_len or MAX_MODEL_LEN)
        kw = {
            "memory_bytes": MEMORY,
            "max_num_seqs": max_num_seqs,
            "max_model_len": max_len,
            "max_num_batched_tokens": MAX_BATCHED,
            "block_size": BLOCK,
        }
        groups = ", ".join(f"{n} {k}" for k, n in model.kind_counts().items())
        try:
            plan = plan_memory(model, **kw)  # type: ignore[arg-type]
        except PlanError as exc:
            short = int(str(exc).rsplit("short by ", 1)[-1].split()[0])
            row = ["does not fit", f"short by {format_bytes(short)}", "", "", "", "", ""]
            table.add_row(name, groups, *row)
            continue
        base = plan.vllm_baseline.token_capacity
        boot = plan.vllm_baseline.boot_log_token_capacity
        physical = plan.physical_token_limit
        try:
            loose = plan_memory(model, bounded_sizing="per_request", **kw)  # type: ignore[arg-type]
            loose_text = f"{loose.token_capacity:,}"
        except PlanError:
            loose_text = "does not fit"
        has_window = any(g.kind in ("sliding_window", "chunked_local") for g in plan.groups)
        table.add_row(
            name if max_len == MAX_MODEL_LEN else f"{name} (len {max_len})",
            groups,
            format_bytes(plan.bounded_bytes),
            f"{plan.token_capacity:,}",
            f"{physical:,.0f}" if physical is not None else "n/a",
            f"{base:,}" if base is not None else "impossible",
            f"{plan.token_capacity / base:.2f}x" if base else "n/a",
            f"{boot:,}" if boot is not None else "n/a",
            loose_text if has_window else "same",
        )
    return table


def main() -> None:
    console = Console(width=200)
    for seqs in (256, 32):
        console.print(capacity_table(seqs))


if __name__ == "__main__":
    main()
