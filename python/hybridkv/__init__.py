"""hybridkv: the KV-cache manager for hybrid LLMs.

Every KV-cache group keeps its natural page size in a pool of its own; bounded groups
(state, sliding window, chunked local, cross attention) get fixed right-sized pools,
and only groups that grow with the sequence share the rest.

Layers (imports run downward): ``cli`` -> ``serving`` (scheduler, simulator, traces)
-> ``planning`` / ``cache`` (pools, arena, manager) -> ``models`` (specs, configs)
-> ``_core`` (the Rust bindings). The flat paths of 0.1 (``hybridkv.planner``, ...)
still import: see :mod:`hybridkv._aliases`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from hybridkv import _aliases

_aliases.install()

from hybridkv import errors  # noqa: E402
from hybridkv._core import __version__  # noqa: E402
from hybridkv.cache.block_pool import BlockPool, PoolRegistry  # noqa: E402
from hybridkv.cache.manager import (  # noqa: E402
    KVCacheManager,
    ManagerConfig,
    ManagerGroup,
    ManagerStats,
)
from hybridkv.cache.pool_events import EventBatch, EventKind, PoolEvent  # noqa: E402
from hybridkv.cache.prefix_hash import hash_token_blocks  # noqa: E402
from hybridkv.errors import HybridKVError  # noqa: E402
from hybridkv.models import ModelSpec, list_models, load_model, specs  # noqa: E402
from hybridkv.planning.planner import (  # noqa: E402
    GroupPlan,
    MemoryPlan,
    plan_memory,
    plan_with_blocks,
)

if not TYPE_CHECKING:

    def __getattr__(name: str) -> object:
        # `import hybridkv; hybridkv.planner` as in 0.1, without importing every layer.
        if name in _aliases.MOVED:
            return _aliases.resolve(name)
        raise AttributeError(f"module 'hybridkv' has no attribute {name!r}")


__all__ = [
    "BlockPool",
    "EventBatch",
    "EventKind",
    "GroupPlan",
    "HybridKVError",
    "KVCacheManager",
    "ManagerConfig",
    "ManagerGroup",
    "ManagerStats",
    "MemoryPlan",
    "ModelSpec",
    "PoolEvent",
    "PoolRegistry",
    "__version__",
    "errors",
    "hash_token_blocks",
    "list_models",
    "load_model",
    "plan_memory",
    "plan_with_blocks",
    "specs",
]
