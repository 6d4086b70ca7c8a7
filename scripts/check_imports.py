"""Check hybridkv's import graph: no cycles, and every import runs down the layers.

Reads every module under ``python/hybridkv`` with :mod:`ast` (nothing is imported) and
counts every ``import`` of a ``hybridkv`` module, at module level or inside a function:
a lazy import hides a cycle from the interpreter, not from the reader.

Layers, top to bottom (a module may import its own layer or any below)::

    testing                       tiny model + cached runner used by tests and benches
    cli                           `hybridkv` command line
    serving                       scheduler, simulator, cost model, traces
    offload                       offload tiers and their connector
    planning                      memory plans and baseline layouts
    cache, ops -> kernels         pools, arena, manager; kernel launchers, Triton kernels
    models                        specs, config parsers, bundled configs
    foundation                    _core (Rust bindings), errors, units, argtypes

``hybridkv/__init__.py`` is the facade above them all and is not itself a layer.
Run: ``python scripts/check_imports.py [--graph]`` (exit 1 on any violation).
"""

from __future__ import annotations

import argparse
import ast
import sys
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "python"
PKG = "hybridkv"

# (layer rank, module-name prefixes); a module takes the rank of its longest prefix.
LAYERS: list[tuple[int, str, tuple[str, ...]]] = [
    (
        0,
        "foundation",
        (
            "hybridkv._core",
            "hybridkv.errors",
            "hybridkv.units",
            "hybridkv.argtypes",
            "hybridkv._aliases",
        ),
    ),
    (1, "models", ("hybridkv.models",)),
    (2, "kernels", ("hybridkv.kernels",)),
    (3, "cache", ("hybridkv.cache",)),
    (3, "ops", ("hybridkv.ops",)),
    (4, "planning", ("hybridkv.planning",)),
    (5, "offload", ("hybridkv.offload",)),
    (6, "serving", ("hybridkv.serving",)),
    (7, "cli", ("hybridkv.cli",)),
    (8, "testing", ("hybridkv.testing",)),
]


def module_files() -> dict[str, Path]:
    out: dict[str, Path] = {}
    for path in sorted((ROOT / PKG).rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    for stub in (ROOT / PKG).rglob("*.pyi"):  # _core: the extension, typed by its stub
        out.setdefault(".".join(stub.relative_to(ROOT).with_suffix("").parts), stub)
    return out


def layer_of(module: str) -> tuple[int, str] | None:
    best: tuple[int, int, str] | None = None
    for rank, name, prefixes in LAYERS:
        for p in prefixes:
            if (module == p or module.startswith(p + ".")) and (best is None or len(p) > best[0]):
                best = (len(p), rank, name)
    return None if best is None else (best[1], best[2])


def imports_of(module: str, path: Path, known: dict[str, Path]) -> Iterator[tuple[str, int]]:
    """(imported hybridkv module, line) for every import statement in ``path``."""
    tree = ast.parse(path.read_text(), filename=str(path))
    is_pkg = path.name == "__init__.py"
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == PKG or alias.name.startswith(PKG + "."):
                    yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".") if is_pkg else module.split(".")[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            if base != PKG and not base.startswith(PKG + "."):
                continue
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                yield (sub if sub in known else base), node.lineno


def build_graph(known: dict[str, Path]) -> dict[str, dict[str, int]]:
    graph: dict[str, dict[str, int]] = {}
    for module, path in known.items():
        if path.suffix == ".pyi":
            continue
        edges = graph.setdefault(module, {})
        for target, line in imports_of(module, path, known):
            if target != module:
                edges.setdefault(target, line)
    return graph


def find_cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    sccs: list[list[str]] = []
    counter = 0
    for start in graph:
        if start in index:
            continue
        work: list[tuple[str, Iterator[str]]] = [(start, iter(graph.get(start, {})))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, it = work[-1]
            advanced = False
            for nxt in it:
                if nxt not in graph:
                    continue
                if nxt not in index:
                    index[nxt] = low[nxt] = counter
                    counter += 1
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(graph.get(nxt, {}))))
                    advanced = True
                    break
                if nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
            if advanced:
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                comp = []
                while True:
                    m = stack.pop()
                    on_stack.discard(m)
                    comp.append(m)
                    if m == node:
                        break
                if len(comp) > 1:
                    sccs.append(sorted(comp))
    return sccs


def check(graph: dict[str, dict[str, int]], known: dict[str, Path]) -> list[str]:
    problems: list[str] = []
    for module, edges in sorted(graph.items()):
        if module == PKG:
            continue  # the facade re-exports from every layer
        mine = layer_of(module)
        if mine is None:
            problems.append(f"{module}: in no layer (add it to LAYERS in {Path(__file__).name})")
            continue
        rel = known[module].relative_to(ROOT.parent)
        for target, line in sorted(edges.items()):
            if target == PKG:
                problems.append(
                    f"{rel}:{line}: {module} imports the `hybridkv` facade; import the module "
                    "that defines the name"
                )
                continue
            theirs = layer_of(target)
            if theirs is not None and theirs[0] > mine[0]:
                problems.append(
                    f"{rel}:{line}: {module} ({mine[1]}) imports {target} ({theirs[1]}), "
                    "a higher layer"
                )
    for comp in find_cycles(graph):
        problems.append("import cycle: " + " <-> ".join(comp))
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--graph", action="store_true", help="print the layer-to-layer edges")
    args = parser.parse_args(argv)
    known = module_files()
    graph = build_graph(known)
    if args.graph:
        pairs: dict[tuple[str, str], int] = {}
        for module, edges in graph.items():
            a = layer_of(module)
            for target in edges:
                b = layer_of(target)
                if a and b and a[1] != b[1]:
                    pairs[(a[1], b[1])] = pairs.get((a[1], b[1]), 0) + 1
        for (a, b), n in sorted(pairs.items()):
            print(f"{a} -> {b}: {n}")
    problems = check(graph, known)
    for p in problems:
        print(p, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
