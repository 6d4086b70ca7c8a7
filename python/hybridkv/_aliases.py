"""The flat module paths of hybridkv 0.1 (``hybridkv.scheduler``, ``hybridkv.planner``, ...)
kept as names for the modules' homes in the subpackages.

One meta-path finder maps each old dotted name to the very module object of its new home,
so ``hybridkv.scheduler is hybridkv.serving.scheduler``: state, monkeypatches and
``isinstance`` checks are shared, and nothing is imported twice.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
from collections.abc import Sequence
from types import ModuleType

#: old name under ``hybridkv.`` -> its home under ``hybridkv.``
MOVED: dict[str, str] = {
    "block_pool": "cache.block_pool",
    "arena_plan": "cache.arena_plan",
    "arena_backend": "cache.arena_backend",
    "manager": "cache.manager",
    "prefix_hash": "cache.prefix_hash",
    "hashes": "cache.hashes",
    "events": "cache.pool_events",
    "kv_events": "cache.manager_events",
    "specs": "models.specs",
    "planner": "planning.planner",
    "scheduler": "serving.scheduler",
    "simulate": "serving.simulate",
    "cost_model": "serving.cost_model",
    "traces": "serving.traces",
    "mooncake_trace": "serving.mooncake_trace",
    "sharegpt_trace": "serving.sharegpt_trace",
    "trace_sources": "serving.trace_sources",
    "ideal_hit": "serving.ideal_hit",
}

_PREFIX = "hybridkv."


class _AliasLoader(importlib.abc.Loader):
    """Hands the import system the already-imported module of the new home."""

    def __init__(self, target: str) -> None:
        self._target = target
        self._spec: importlib.machinery.ModuleSpec | None = None

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        module = importlib.import_module(self._target)
        self._spec = module.__spec__
        return module

    def exec_module(self, module: ModuleType) -> None:
        # module_from_spec pointed the shared module's __spec__ at the alias; give it back
        # its own (its real name and file), so reloads and tracebacks stay true.
        module.__spec__ = self._spec


class _AliasFinder(importlib.abc.MetaPathFinder):
    def find_spec(
        self,
        fullname: str,
        path: Sequence[str] | None,
        target: ModuleType | None = None,
    ) -> importlib.machinery.ModuleSpec | None:
        if not fullname.startswith(_PREFIX):
            return None
        home = MOVED.get(fullname[len(_PREFIX) :])
        if home is None:
            return None
        return importlib.machinery.ModuleSpec(fullname, _AliasLoader(_PREFIX + home))


def install() -> None:
    """Put the finder first on ``sys.meta_path`` (once)."""
    if not any(isinstance(f, _AliasFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _AliasFinder())


def resolve(name: str) -> ModuleType:
    """The module an old flat name stands for (``resolve("planner")``)."""
    return importlib.import_module(_PREFIX + MOVED[name])
