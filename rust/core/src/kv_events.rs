//! KV-cache events the manager records for cache-aware routers, shaped like vLLM's
//! (`BlockStored`, `BlockRemoved`, `AllBlocksCleared`), each tagged with its group, plus
//! the cross-group prefix disagreements.

use crate::block_pool::BlockHash;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KvEvent {
    /// Consecutive blocks of one request were cached in `group`: `hashes[i]` covers
    /// `tokens[i * block_size..(i + 1) * block_size]`, chained from `parent`
    /// (`None` for the first block of a sequence).
    Stored {
        group: usize,
        hashes: Vec<BlockHash>,
        parent: Option<BlockHash>,
        tokens: Vec<i32>,
        block_size: usize,
        lora_id: Option<i64>,
    },
    /// These hashes are no longer served by `group` (their blocks were reused).
    Removed {
        group: usize,
        hashes: Vec<BlockHash>,
    },
    /// `group`'s whole prefix cache was cleared.
    AllCleared { group: usize },
    /// A lookup where some group holds cached blocks for more than the agreed `hit`
    /// (`group_hits`: each group's own longest hit, cached or not).
    Disagreement {
        req_id: i64,
        hit: usize,
        group_hits: Vec<usize>,
    },
}
