"""Tiered KV offload per group: CPU, disk and Redis, restart-safe.

Every group offloads at its own block size (no LCM across groups): a block is keyed by
``(model fingerprint, group, block hash)``; a state group's checkpoint is keyed by the
prefix hash at its position. Each tier has one byte budget and one LRU for all groups.
Stores run on a background thread; ``redis`` and ``torch`` are imported only when a
Redis tier or pinned memory is used. The fingerprint names the weights (``weights=``, a
revision or checksum); the disk and Redis tiers, whose blocks outlive the process,
refuse a fingerprint made without it.
"""

from __future__ import annotations

from hybridkv.offload.config import (
    CpuTierConfig,
    DiskTierConfig,
    OffloadConfig,
    RedisTierConfig,
    TierConfig,
    WritePolicy,
    format_size,
    parse_offload_spec,
    parse_size,
)
from hybridkv.offload.connector import ExternalLookup, OffloadConnector
from hybridkv.offload.cpu_tier import CpuTier
from hybridkv.offload.disk_tier import DiskTier
from hybridkv.offload.keys import (
    FORMAT_VERSION,
    BlockKey,
    ModelFingerprint,
    block_keys,
    model_fingerprint,
    weights_checksum,
)
from hybridkv.offload.pages import HostPages, PageIO, SyntheticPages
from hybridkv.offload.redis_tier import RedisTier
from hybridkv.offload.stack import TierStack
from hybridkv.offload.tier import ByteLRU, Tier, TierStats
from hybridkv.offload.worker import StoreWorker

__all__ = [
    "FORMAT_VERSION",
    "BlockKey",
    "ByteLRU",
    "CpuTier",
    "CpuTierConfig",
    "DiskTier",
    "DiskTierConfig",
    "ExternalLookup",
    "HostPages",
    "ModelFingerprint",
    "OffloadConfig",
    "OffloadConnector",
    "PageIO",
    "RedisTier",
    "RedisTierConfig",
    "StoreWorker",
    "SyntheticPages",
    "Tier",
    "TierConfig",
    "TierStack",
    "TierStats",
    "WritePolicy",
    "block_keys",
    "format_size",
    "model_fingerprint",
    "parse_offload_spec",
    "parse_size",
    "weights_checksum",
]
