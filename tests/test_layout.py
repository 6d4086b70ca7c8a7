"""The package layout's promises: the public surface of ``hybridkv`` and the flat module
paths of 0.1 as names for the very modules of their new homes."""

from __future__ import annotations

import importlib
import subprocess
import sys

import hybridkv
import pytest
from hybridkv._aliases import MOVED

PUBLIC = {
    "BlockPool": "hybridkv.cache.block_pool",
    "EventBatch": "hybridkv.cache.pool_events",
    "EventKind": "hybridkv.cache.pool_events",
    "GroupPlan": "hybridkv.planning.planner",
    "HybridKVError": "hybridkv.errors",
    "KVCacheManager": "hybridkv.cache.manager",
    "ManagerConfig": "hybridkv.cache.manager",
    "ManagerGroup": "hybridkv.cache.manager",
    "ManagerStats": "hybridkv.cache.manager",
    "MemoryPlan": "hybridkv.planning.planner",
    "ModelSpec": "hybridkv.models.model_spec",
    "PoolEvent": "hybridkv.cache.pool_events",
    "PoolRegistry": "hybridkv.cache.block_pool",
    "hash_token_blocks": "hybridkv.cache.prefix_hash",
    "list_models": "hybridkv.models.registry",
    "load_model": "hybridkv.models.registry",
    "plan_memory": "hybridkv.planning.planner",
    "plan_with_blocks": "hybridkv.planning.planner",
}


def test_public_surface_is_pinned() -> None:
    assert sorted(hybridkv.__all__) == sorted([*PUBLIC, "__version__", "errors", "specs"])
    for name, home in PUBLIC.items():
        obj = getattr(hybridkv, name)
        assert obj is getattr(importlib.import_module(home), name), name
    assert hybridkv.errors is importlib.import_module("hybridkv.errors")
    assert hybridkv.specs is importlib.import_module("hybridkv.models.specs")
    assert isinstance(hybridkv.__version__, str) and hybridkv.__version__


@pytest.mark.parametrize("old", sorted(MOVED))
def test_old_path_is_the_new_module(old: str) -> None:
    new = importlib.import_module(f"hybridkv.{MOVED[old]}")
    assert importlib.import_module(f"hybridkv.{old}") is new
    assert sys.modules[f"hybridkv.{old}"] is new
    assert getattr(hybridkv, old) is new
    # The module keeps its own identity: name, spec and file of its new home.
    assert new.__name__ == f"hybridkv.{MOVED[old]}"
    assert new.__spec__ is not None and new.__spec__.name == new.__name__


def test_old_paths_first_in_a_fresh_interpreter() -> None:
    # Importing through an old name before the new one loads each module once.
    code = (
        "import sys\n"
        "import hybridkv.scheduler, hybridkv.simulate, hybridkv.traces, hybridkv.manager\n"
        "from hybridkv.planner import plan_memory\n"
        "from hybridkv.specs import FullAttentionSpec\n"
        "import hybridkv.serving.scheduler as s, hybridkv.planning.planner as p\n"
        "assert hybridkv.scheduler is s and plan_memory is p.plan_memory\n"
        "assert hybridkv.scheduler.__spec__.name == 'hybridkv.serving.scheduler'\n"
        "import hybridkv.testing.tiny_model\n"
        "print(sorted(m for m in sys.modules if m.startswith('hybridkv.scheduler')))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "['hybridkv.scheduler']"


def test_unknown_names_still_fail() -> None:
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("hybridkv.no_such_module")
    with pytest.raises(AttributeError):
        _ = hybridkv.no_such_attribute  # type: ignore[attr-defined]
