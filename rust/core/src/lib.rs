//! hybridkv-core: the KV-cache bookkeeping of hybrid LLMs, with no Python in it.
//!
//! - [`block_pool`]: the pool of one KV-cache group (free/LRU queue, ref counts, hashes).
//! - [`registry`]: one pool per group, addressed by group index.
//! - [`error`]: the one error type every operation returns.

pub mod block_pool;
pub mod error;
pub mod registry;

pub use block_pool::{BlockHash, BlockId, BlockPool, PoolEvent, NULL_BLOCK};
pub use error::{Error, Result};
pub use registry::PoolRegistry;
