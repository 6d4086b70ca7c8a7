"""``scripts/check_imports.py`` (run by ``make lint``): the package's imports run down the
layers without cycles, and the checker itself catches both kinds of violation."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

SCRIPT = Path(__file__).parents[1] / "scripts" / "check_imports.py"


def _checker() -> ModuleType:
    spec = importlib.util.spec_from_file_location("check_imports", SCRIPT)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules["check_imports"] = mod
    spec.loader.exec_module(mod)
    return mod


def test_package_imports_are_layered_and_acyclic() -> None:
    ci = _checker()
    known = ci.module_files()
    graph = ci.build_graph(known)
    assert ci.check(graph, known) == []
    # Every module is in a layer, and the graph saw the real modules.
    assert "hybridkv.serving.simulate" in graph and "hybridkv.cache.manager" in graph
    assert graph["hybridkv.serving.sim_run"].keys() >= {"hybridkv.serving.scheduler"}
    assert ci.main([]) == 0


def test_checker_reports_upward_imports_and_cycles() -> None:
    ci = _checker()
    known = {m: SCRIPT for m in ("hybridkv.models.a", "hybridkv.planning.b", "hybridkv.cache.c")}
    graph = {
        "hybridkv.models.a": {"hybridkv.planning.b": 3},  # models -> planning: upward
        "hybridkv.planning.b": {"hybridkv.models.a": 7},
        "hybridkv.cache.c": {},
    }
    problems = ci.check(graph, known)
    assert any("hybridkv.models.a (models) imports hybridkv.planning.b" in p for p in problems)
    assert any(p.startswith("import cycle:") and "hybridkv.models.a" in p for p in problems)
    assert ci.find_cycles({"x": {"y": 1}, "y": {"z": 1}, "z": {}}) == []
    assert ci.find_cycles({"x": {"y": 1}, "y": {"z": 1}, "z": {"x": 1}}) == [["x", "y", "z"]]


def test_lazy_and_relative_imports_are_counted(tmp_path: Path) -> None:
    ci = _checker()
    src = tmp_path / "m.py"
    src.write_text(
        "def f():\n    from hybridkv.serving import scheduler\n    from . import units\n"
        "import hybridkv.cli\n"
    )
    known = {"hybridkv.serving.scheduler": src, "hybridkv.units": src, "hybridkv.cli": src}
    found = {t for t, _ in ci.imports_of("hybridkv.x", src, known)}
    assert found == {"hybridkv.serving.scheduler", "hybridkv.units", "hybridkv.cli"}
