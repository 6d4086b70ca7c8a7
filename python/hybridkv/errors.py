"""The exceptions hybridkv raises, from Python and from the Rust core alike.

Every one is a :class:`HybridKVError`, itself a :class:`ValueError`, so callers can
catch the whole family at once or one specific problem. Messages name the offending
value. An operation that raises leaves its object exactly as it was.
"""

from __future__ import annotations


class HybridKVError(ValueError):
    """Base class of every hybridkv error."""


class InvalidArgumentError(HybridKVError, TypeError):
    """An argument of the wrong dtype, shape, length or value (also a ``TypeError``)."""


class InvalidBlockIdError(HybridKVError):
    """A block id outside the pool's range, or the null block where a real block is needed."""


class DoubleFreeError(HybridKVError):
    """A block freed more times than it was referenced."""


class OutOfBlocksError(HybridKVError):
    """More blocks were requested than the pool has free."""


class BlockStateError(HybridKVError):
    """A block in the wrong state for the operation (caching a free block, re-hashing one)."""


class PoolInUseError(HybridKVError):
    """An operation that needs an idle pool (``reset_prefix_cache``) found blocks in use."""


class UnknownGroupError(HybridKVError):
    """A KV-cache group index that does not exist."""


class UnknownRequestError(HybridKVError):
    """A request id the manager does not hold."""


class DuplicateRequestError(HybridKVError):
    """A request id the manager already holds."""


class InvalidTokenError(HybridKVError):
    """A token id out of range."""


class RequestStateError(HybridKVError):
    """A request in the wrong phase for the call (a prefix lookup while it is running)."""


class PlanError(HybridKVError):
    """A memory plan that cannot be made: what does not fit, and by how much."""


class ModelConfigError(HybridKVError):
    """A model config that cannot be turned into KV-cache specs."""


class ModelConfigWarning(UserWarning):
    """A model config read with assumptions (an unknown ``model_type`` planned as a
    plain attention decoder); the message names what was assumed."""


class OffloadConfigError(HybridKVError):
    """An offload spec or tier setting that cannot be used (bad size, path, URL or policy)."""


__all__ = [
    "BlockStateError",
    "DoubleFreeError",
    "DuplicateRequestError",
    "HybridKVError",
    "InvalidArgumentError",
    "InvalidBlockIdError",
    "InvalidTokenError",
    "ModelConfigError",
    "ModelConfigWarning",
    "OffloadConfigError",
    "OutOfBlocksError",
    "PlanError",
    "PoolInUseError",
    "RequestStateError",
    "UnknownGroupError",
    "UnknownRequestError",
]
