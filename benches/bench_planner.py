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


#: The closing note of issue 12: every family at one operator-sized budget.
FAMILY_MEMORY = 40 << 30
FAMILY_SEQS = 64
#: model_types with a parser before issue 12 (the first 14 bundled models' parsers).
MODEL_TYPES_BEFORE = 22


def family_rows() -> list[tuple[str, str, str, str, str, str]]:
    """One row per family (``model_type``), each planned from its bundled config at
    40 GiB / 64 seqs / max_model_len 32768 (or the model's learned-position bound) /
    8192 batched tokens: hybridkv's tokens, vLLM 0.33's runtime tokens (the planner's
    ``vllm_baseline``) and their ratio, or the refusal message where it does not fit."""
    first: dict[str, str] = {}
    for name in list_models():
        first.setdefault(load_model(name).model_type or name, name)
    rows = []
    for family, name in sorted(first.items()):
        model = load_model(name)
        max_len = min(MAX_MODEL_LEN, model.max_model_len or MAX_MODEL_LEN)
        groups = ", ".join(f"{n} {k}" for k, n in model.kind_counts().items())
        label = name if max_len == MAX_MODEL_LEN else f"{name} (len {max_len})"
        try:
            plan = plan_memory(
                model,
                memory_bytes=FAMILY_MEMORY,
                max_num_seqs=FAMILY_SEQS,
                max_model_len=max_len,
                max_num_batched_tokens=MAX_BATCHED,
                block_size=BLOCK,
            )
        except PlanError as exc:
            rows.append((family, label, groups, "refused", "", str(exc)))
            continue
        base = plan.vllm_baseline.token_capacity
        ratio = f"{plan.token_capacity / base:.2f}x" if base else "n/a"
        vllm = f"{base:,}" if base is not None else f"impossible: {plan.vllm_baseline.reason}"
        rows.append((family, label, groups, f"{plan.token_capacity:,}", vllm, ratio))
    return rows


def family_table() -> str:
    """The family table as Markdown (what benches/RESULTS.md records), with the
    supported ``model_type`` counts before and after."""
    from hybridkv.models import supported_model_types

    lines = [
        f"capacity at {format_bytes(FAMILY_MEMORY)}, {FAMILY_SEQS} seqs, max_model_len "
        f"{MAX_MODEL_LEN} (learned-position models: their bound), {MAX_BATCHED} batched "
        f"tokens, block {BLOCK}, model dtype, tp=1, mamba_cache_mode align",
        "",
        "| family | bundled config | cache layers | hybridkv tokens | vLLM runtime tokens "
        "| hybridkv / vLLM |",
        "|---|---|---|---|---|---|",
    ]
    rows = family_rows()
    for family, label, groups, mine, vllm, ratio in rows:
        if mine == "refused":
            lines.append(f"| {family} | {label} | {groups} | refused: {ratio} | | |")
        else:
            lines.append(f"| {family} | {label} | {groups} | {mine} | {vllm} | {ratio} |")
    lines += [
        "",
        f"families: {len(rows)}; model_types with a parser: {MODEL_TYPES_BEFORE} before "
        f"issue 12, {len(supported_model_types())} now (more plan through the generic "
        "reader and text_config wrappers: see tests/test_models_transformers.py's sweep)",
    ]
    return "\n".join(lines)


def main() -> None:
    import sys

    if "--families" in sys.argv[1:]:
        print(family_table())
        return
    console = Console(width=200)
    for seqs in (256, 32):
        console.print(capacity_table(seqs))
    print(family_table())


if __name__ == "__main__":
    main()
