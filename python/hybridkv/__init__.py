"""hybridkv: the KV-cache manager for hybrid LLMs.

Every KV-cache group keeps its natural page size in a pool of its own; bounded groups
(state, sliding window, chunked local, cross attention) get fixed right-sized pools,
and only groups that grow with the sequence share the rest.
"""

from __future__ import annotations

from hybridkv import errors, specs
from hybridkv._core import __version__
from hybridkv.block_pool import BlockPool, PoolRegistry
from hybridkv.errors import HybridKVError
from hybridkv.events import EventBatch, EventKind, PoolEvent
from hybridkv.manager import KVCacheManager, ManagerConfig, ManagerGroup, ManagerStats
from hybridkv.models import ModelSpec, list_models, load_model
from hybridkv.planner import GroupPlan, MemoryPlan, plan_memory, plan_with_blocks
from hybridkv.prefix_hash import hash_token_blocks

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
