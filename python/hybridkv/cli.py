"""The ``hybridkv`` command: ``plan`` and ``models`` here, more from other modules.

A module adds a subcommand with ``add_parser(subparsers)``: it creates its parser with
``subparsers.add_parser(...)`` and sets ``func`` (``args -> int`` exit code) with
``set_defaults``. Bad arguments print one line on stderr and exit with code 2.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

from hybridkv.argtypes import add_state_cache_slots_argument, positive_int
from hybridkv.errors import HybridKVError
from hybridkv.units import format_bytes, size_type

#: Modules whose ``add_parser(subparsers)`` adds a subcommand, when they exist.
SUBCOMMAND_MODULES = ("hybridkv.serving.simulate",)


class UsageError(Exception):
    """A bad command line: reported as one line, exit code 2."""


class _Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are one line on stderr and exit code 2."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog}: error: {message}")


def _console() -> Any:
    """A rich console; wide enough for the tables when stdout is not a terminal."""
    from rich.console import Console

    return Console(width=None if sys.stdout.isatty() else 160)


def kv_dtype_type(text: str) -> str | int:
    """``--kv-dtype``: a dtype name (bf16, fp8, ...) or bytes per token per layer."""
    from hybridkv.models.specs import DTYPE_BYTES

    if text.isdigit():
        value = int(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"kv dtype bytes per token must be > 0, got {text}")
        return value
    if text.lower() not in DTYPE_BYTES:
        raise argparse.ArgumentTypeError(
            f"unknown kv dtype {text!r}: use bf16, fp16, fp8, fp32 or bytes per token"
        )
    return text.lower()


# ---------------------------------------------------------------------------
# plan
# ---------------------------------------------------------------------------


def add_plan_parser(subparsers: Any) -> None:
    """Register ``hybridkv plan``."""
    from hybridkv.models.specs import MAMBA_CACHE_MODES
    from hybridkv.planning.planner import BOUNDED_SIZINGS

    p = subparsers.add_parser(
        "plan",
        help="plan KV-cache memory for a model: per-group pools and token capacity",
        description="Plan KV-cache memory: one pool per KV-cache group at its natural page size.",
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="a bundled model name (see `hybridkv models`)")
    src.add_argument("--config", help="path to a Hugging Face config.json (or its folder)")
    p.add_argument("--memory", type=size_type, required=True, help="KV-cache memory, e.g. 70GiB")
    p.add_argument("--max-num-seqs", type=positive_int, default=256)
    p.add_argument("--max-model-len", type=positive_int, default=32768)
    p.add_argument("--max-num-batched-tokens", type=positive_int, default=8192)
    p.add_argument("--block-size", type=positive_int, default=16)
    p.add_argument(
        "--kv-dtype", type=kv_dtype_type, default=None, help="bf16, fp8, ... or bytes per token"
    )
    p.add_argument("--tp", type=positive_int, default=1, help="tensor-parallel ranks")
    p.add_argument(
        "--resolve",
        choices=("builtin", "transformers"),
        default="builtin",
        help="read the config with hybridkv's reader (transformers' defaults built in) or "
        "rebuild it with an installed transformers first; both give the same plan",
    )
    p.add_argument("--mamba-cache-mode", choices=MAMBA_CACHE_MODES, default="align")
    p.add_argument(
        "--bounded-sizing",
        choices=BOUNDED_SIZINGS,
        default="tight",
        help="sliding-window / chunked pools: tight whole-step bound or per-request worst case",
    )
    add_state_cache_slots_argument(p)
    p.add_argument(
        "--state-checkpoint-tokens",
        type=positive_int,
        metavar="N",
        help="block size of bounded state groups: where checkpoints land (default: "
        "--block-size; a multiple of it)",
    )
    p.add_argument(
        "--layout",
        choices=("elastic", "static"),
        default="elastic",
        help="elastic: one arena shared by all groups, bounded groups with floors "
        "(default); static: one fixed pool per group",
    )
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    p.set_defaults(func=run_plan)


def _layer_ranges(layers: Sequence[int]) -> str:
    """Sorted layer numbers, compactly: ``0-3,5,7-9`` for runs, ``1-41/2`` for a run of
    three or more with one stride (every 2nd layer from 1 to 41); cut to 40 characters
    for the table."""
    parts: list[str] = []
    i = 0
    while i < len(layers):
        j = i
        step = layers[i + 1] - layers[i] if i + 1 < len(layers) else 1
        while j + 1 < len(layers) and layers[j + 1] - layers[j] == step:
            j += 1
        if j == i:
            parts.append(str(layers[i]))
        elif step == 1:
            parts.append(f"{layers[i]}-{layers[j]}")
        elif j - i >= 2:
            parts.append(f"{layers[i]}-{layers[j]}/{step}")
        else:  # two layers a stride apart: plainer as a list
            parts.append(str(layers[i]))
            j = i
        i = j + 1
    text = ",".join(parts)
    return text if len(text) <= 40 else text[:37] + "..."


def _layers_cell(model: Any, positions: Sequence[int]) -> str:
    """``count: model layer ranges``, plus the name pattern when it is not ``layers.N``
    (``decoder.layers.N.encoder_attn``, ``layers.N.mamba``)."""
    import re

    numbers = sorted(set(model.model_layers(positions)))
    patterns = {re.sub(r"\d+", "N", model.layer_names[i], count=1) for i in positions}
    cell = f"{len(positions)}: {_layer_ranges(numbers)}"
    if patterns != {"layers.N"}:
        cell += " " + ("|".join(sorted(patterns)) if len(patterns) <= 2 else "(mixed names)")
    return cell


def run_plan(args: argparse.Namespace) -> int:
    """``hybridkv plan``: print the plan as a table or JSON."""
    from hybridkv.models import load_model
    from hybridkv.planning.planner import plan_memory

    model = load_model(
        args.model or args.config, tp=args.tp, kv_dtype=args.kv_dtype, resolve=args.resolve
    )
    plan = plan_memory(
        model,
        memory_bytes=args.memory,
        max_num_seqs=args.max_num_seqs,
        max_model_len=args.max_model_len,
        max_num_batched_tokens=args.max_num_batched_tokens,
        block_size=args.block_size,
        mamba_cache_mode=args.mamba_cache_mode,
        bounded_sizing=args.bounded_sizing,
        state_cache_slots=args.state_cache_slots,
        state_checkpoint_tokens=args.state_checkpoint_tokens,
        layout=args.layout,
    )
    if args.json:
        print(json.dumps(plan.to_dict(), indent=2))
        return 0
    from rich.table import Table

    table = Table(
        title=f"hybridkv plan: {model.name} ({format_bytes(plan.memory_bytes)}, tp={model.tp})"
    )
    cols = ("group", "kind", "layers", "block", "page", "blocks", "floor", "bytes", "slot space")
    for col in cols:
        table.add_column(col, justify="left" if col in ("kind", "layers") else "right")
    table.add_column("per request")
    for g in plan.groups:
        extra = ""
        if g.window is not None:
            extra = f"window {g.window}"
        elif g.chunk_size is not None:
            extra = f"chunk {g.chunk_size}"
        elif g.max_encoder_len is not None:
            extra = f"encoder {g.max_encoder_len}"
        per_req = "grows" if g.grows else f"<= {g.max_blocks_per_request} blocks ({g.sizing})"
        table.add_row(
            str(g.index),
            f"{g.kind} {extra}".strip(),
            _layers_cell(model, g.layers),
            str(g.block_size),
            format_bytes(g.page_size_bytes),
            f"{g.num_blocks:,}",
            f"{g.floor_blocks:,}" if not g.grows else "-",
            format_bytes(g.bytes),
            f"{g.slot_address_space:,}",
            per_req,
        )
    console = _console()
    console.print(table)
    base = plan.vllm_baseline
    physical = (
        f"{plan.physical_token_limit:,.0f}" if plan.physical_token_limit is not None else "n/a"
    )
    ratio = (
        f"; hybridkv / vLLM runtime {plan.token_capacity / base.token_capacity:.2f}x"
        if base.token_capacity
        else ""
    )
    baseline = (
        f"{base.token_capacity:,} tokens at runtime (one shared pool of {base.num_blocks:,} "
        f"blocks, block {base.block_size}, {base.num_groups} groups of {base.group_size} "
        f"layers, {plan.max_num_seqs} requests' state/window blocks reserved){ratio}"
        if base.token_capacity is not None
        else f"impossible ({base.reason})"
    )
    lines = [
        f"token capacity:   {plan.token_capacity:,} tokens (physical limit {physical})",
        f"max concurrency:  {plan.max_concurrency:.2f} requests of {plan.max_model_len:,} tokens",
        f"bounded pools:    {format_bytes(plan.bounded_bytes)}; unused {format_bytes(plan.unused_bytes)}",
        f"vLLM 0.33 baseline: {baseline}",
    ]
    if base.token_capacity is not None:
        lines.append(
            f"  vLLM boot log prints: {base.boot_log_token_capacity:,} tokens "
            "(num_blocks / blocks of one max_model_len request x max_model_len); "
            f"equal split num_blocks // num_groups: {base.equal_split_token_capacity:,} "
            "tokens (older boot logs). Neither is what its pool holds at runtime."
        )
    if plan.arena is not None:
        a = plan.arena
        lines[2] = (
            f"floors:           {format_bytes(plan.bounded_bytes)} (held in "
            f"{sum(a.floor_regions)} regions); elastic remainder {format_bytes(a.elastic_bytes)}"
        )
        pools = a.pool_of or tuple(range(len(plan.groups)))
        shared = [
            [g for g, q in enumerate(pools) if q == p]
            for p in sorted(set(pools))
            if list(pools).count(p) > 1
        ]
        # Windows with a capped floor keep their own pool beside an equal page
        # (hybridkv.planning.elastic).
        apart = [
            g
            for g, pg in enumerate(plan.groups)
            if pg.sizing == "capped"
            and any(
                h != g
                and q.page_size_bytes == pg.page_size_bytes
                and q.block_size == pg.block_size
                and q.kind != "state"
                for h, q in enumerate(plan.groups)
            )
        ]
        text = "; ".join(
            f"groups {'+'.join(map(str, gs))} share one pool (equal "
            f"{format_bytes(plan.groups[gs[0]].page_size_bytes)} pages: one id space, "
            "one LRU)"
            for gs in shared
        )
        if apart:
            many = len(apart) > 1
            text += ("; " if text else "") + (
                f"group{'s' * many} {', '.join(map(str, apart))} "
                f"{'keep their' if many else 'keeps its'} own pool beside an equal page "
                "(a capped window floor: sharing one LRU, the window and the growing "
                "group would evict each other's cached blocks)"
            )
        lines.append(
            "pools:            " + (text or "one per group (no two groups have equal pages)")
        )
        lines.append(
            f"arena:            {a.num_regions} regions of {format_bytes(a.region_bytes)}, "
            f"null area {format_bytes(a.null_bytes)}; waste {format_bytes(a.waste_bytes)} "
            f"({100 * a.waste_bytes / a.memory_bytes:.2f} %), at worst "
            f"{100 * a.worst_waste_bytes / a.memory_bytes:.2f} %"
        )
    else:
        lines.append("layout:           static (elastic remainder 0 B)")
    if plan.state_cache_slots:
        lines.append(f"state cache slots: {plan.state_cache_slots} spare blocks per state group")
    if plan.encoder_only_layers:
        lines.append(f"encoder-only layers (no cache): {len(plan.encoder_only_layers)}")
    lines.extend(f"note: {note}" for note in model.notes)
    for line in lines:
        console.print(line, highlight=False)
    return 0


# ---------------------------------------------------------------------------
# models
# ---------------------------------------------------------------------------


def add_models_parser(subparsers: Any) -> None:
    """Register ``hybridkv models``."""
    p = subparsers.add_parser("models", help="list the bundled model configs")
    p.add_argument("--json", action="store_true", help="print the list as JSON")
    p.set_defaults(func=run_models)


def run_models(args: argparse.Namespace) -> int:
    """``hybridkv models``: the bundled models, their source and layer kinds."""
    from hybridkv.models import list_models, load_model, model_source

    rows: list[dict[str, Any]] = []
    for name in list_models():
        model = load_model(name)
        rows.append(
            {
                "name": name,
                "source": model_source(name).splitlines()[0],
                "model_type": model.model_type,
                "layers": model.kind_counts(),
            }
        )
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    from rich.table import Table

    table = Table(title="bundled models")
    for col in ("name", "hugging face id", "model_type", "cache layers"):
        table.add_column(col)
    for row in rows:
        kinds = ", ".join(f"{n} {k}" for k, n in row["layers"].items())
        table.add_row(row["name"], row["source"], row["model_type"], kinds)
    _console().print(table)
    return 0


# ---------------------------------------------------------------------------
# entry point
# ---------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The full ``hybridkv`` parser, with every available subcommand."""
    parser = _Parser(prog="hybridkv", description="KV-cache manager for hybrid LLMs.")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    subparsers.required = True
    add_plan_parser(subparsers)
    add_models_parser(subparsers)
    for name in SUBCOMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:
                continue  # that subcommand is not built yet
            raise
        module.add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``hybridkv``; returns the exit code (2 for bad arguments)."""
    try:
        args = build_parser().parse_args(argv)
        code = args.func(args)
    except UsageError as exc:
        print(str(exc).splitlines()[0] if str(exc) else "hybridkv: error", file=sys.stderr)
        return 2
    except HybridKVError as exc:
        _print_error(argv, str(exc))
        return 2
    except SystemExit as exc:  # --help and friends
        return exc.code if isinstance(exc.code, int) else 0
    except KeyboardInterrupt:
        _print_error(argv, "interrupted")
        return 130
    except MemoryError:
        _print_error(argv, "out of memory (the inputs ask for more than this machine has)")
        return 1
    except RecursionError:
        _print_error(argv, "an input is nested too deeply to process")
        return 1
    except Exception as exc:  # a bug: still one line, never a traceback
        if os.environ.get("HYBRIDKV_TRACEBACK"):
            raise
        _print_error(
            argv,
            f"internal error ({type(exc).__name__}: {exc}); please report it "
            "(HYBRIDKV_TRACEBACK=1 shows the traceback)",
        )
        return 1
    return int(code)


def _print_error(argv: Sequence[str] | None, message: str) -> None:
    """One line on stderr: ``hybridkv SUBCOMMAND: error: MESSAGE`` (credentials in any
    URL the message quotes are masked)."""
    from hybridkv.offload.redact import redact_text

    subcommand = (sys.argv[1:] if argv is None else list(argv))[:1]
    command = " ".join(["hybridkv", *subcommand])
    text = " ".join(redact_text(message).split())
    if len(text) > 2000:
        text = text[:2000] + " ..."
    print(f"{command}: error: {text}", file=sys.stderr)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
