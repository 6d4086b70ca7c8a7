//! hybridkv-core: the KV-cache bookkeeping of hybrid LLMs, with no Python in it.
//!
//! - [`arena`]: elastic memory: one arena, regions owned by one group at a time.
//! - [`block_pool`]: the pool of one KV-cache group (free/LRU queue, ref counts, hashes).
//! - [`registry`]: one pool per group, addressed by group index.
//! - [`error`]: the one error type every operation returns.
//! - [`prefix_hash`]: deterministic chained 128-bit block hashes (layout documented there).
//! - [`group_policy`]: per-kind rules (full, sliding window, chunked local, state, cross).
//! - [`request`]: per-request state and block tables.
//! - [`manager`]: the KV-cache manager (`manager/prefix_hit.rs`, `manager/allocation.rs`,
//!   `manager/tables.rs` hold its prefix hits, batched allocation and outputs).
//! - [`stats`], [`kv_events`]: its counters and KV events.

// A panic in library code would reach Python as a PanicException (or abort the
// process): outside tests every failure is an Error. Clippy enforces it.
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::todo,
        clippy::unimplemented,
        clippy::unreachable
    )
)]

pub mod arena;
pub mod block_pool;
pub mod error;
pub mod group_policy;
pub mod kv_events;
pub mod manager;
pub mod prefix_hash;
pub mod registry;
pub mod request;
pub mod sched_step;
pub mod stats;
#[cfg(test)]
mod test_rng;

pub use arena::{Arena, ArenaConfig};
pub use block_pool::{BlockHash, BlockId, BlockPool, PoolEvent, NULL_BLOCK};
pub use error::{Error, Result};
pub use group_policy::{CheckpointPolicy, GroupConfig, GroupKind, MambaMode};
pub use kv_events::KvEvent;
pub use manager::{ElasticStats, Manager, ManagerConfig, NewRequest};
pub use prefix_hash::{ExtraKeys, MediaItem};
pub use registry::PoolRegistry;
pub use stats::Stats;
