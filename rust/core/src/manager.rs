//! The KV-cache manager: one pool per group, per-request positional block tables, and
//! prefix caching that every group must agree on.
//!
//! ## Shared-pool mode (vLLM's runtime layout)
//! With `shared_pool` every group draws its blocks from ONE pool (one id space, one
//! LRU free queue), as vLLM's hybrid coordinator does: a request fits when the sum of
//! its groups' new blocks is at most the pool's free count, and groups allocate in
//! group order. The pool's prefix index is keyed by (group, block hash) — each
//! group's hashes are XOR-ed with a per-group salt — so lookups never cross groups,
//! like vLLM's hash-with-group-id; events still carry the group and the plain hash.
//! Blocks that left a window are released only when their request is allocated again
//! (vLLM's `remove_skipped_blocks` inside `allocate_slots`), not at the start of every
//! step: that is what makes the same pool run out at the same moment vLLM's does.
//!
//! ## Pools per page class (elastic)
//! In an elastic arena the groups whose natural pages are equal (same bytes, same block
//! size; not state groups) share one pool the same way (salted index, one id space, one
//! LRU queue, a request fits when each pool's summed need does), and the arena's
//! regions, floors and moves work per pool (a pool's floor: the sum of its groups'), so
//! a sliding window's cached tails compete with full-attention blocks in one LRU
//! instead of being capped at the window's floor. Window blocks are still released at
//! the start of each step. The plan says which groups share (`ManagerConfig::pool_of`;
//! the planner keeps a window whose floor it capped in its own pool); without it, every
//! page class shares. Static pools may name such a sharing with `pool_of` too.
//!
//! ## Per step
//! A scheduler calls `get_computed_tokens` once for a request it admits (prefix hit),
//! then `allocate_slots` once per step for all requests it schedules. Each request is
//! all-or-nothing across groups: if any group's pool lacks blocks, nothing changes for
//! that request and it reports `false`.
//!
//! ## When blocks are released
//! Blocks that left a sliding window or a local-attention chunk, and superseded state
//! blocks, are released (table entry -> null block) based on *finished* tokens only:
//! - a request being allocated first releases what its already-computed tokens no longer
//!   need (its previous step has finished, or the scheduler would not schedule it again);
//! - at the start of an `allocate_slots` call with `new_step = true` (the default), every
//!   request that advanced in an earlier call does the same, scheduled this step or not,
//!   since that earlier step has finished. A scheduler that calls again within the same
//!   step (a retry after preempting) passes `new_step = false`.
//!
//! So between steps a sliding-window request holds at most the blocks covering its last
//! `window - 1` computed tokens, and during a step additionally the blocks of the tokens
//! scheduled now: the planner's tight pool bound relies on exactly this.
//!
//! ## Prefix hits
//! Each group answers "the longest prefix `h <= limit` I can serve" (full attention:
//! every block before `h` cached; sliding window: the blocks covering the `window - 1`
//! tokens before `h`; chunked local: the blocks of `h`'s chunk before `h`; state: a
//! checkpoint at exactly `h`; cross attention: no constraint). Starting from the
//! shortest of the groups' own answers, the groups are asked again until they agree:
//! the result is the longest `h` every group can serve. The hit never covers the whole
//! prompt: at most `num_tokens - 1`, so the last token is computed and yields logits.
//!
//! ## State hits within a step
//! A state checkpoint cached by an allocation is written by that step's forward, in
//! the same kernel launch that would read it as another request's initial state. So a
//! request whose prefix hit starts from a state checkpoint cached since the step began
//! (the last `allocate_slots` with `new_step = true`) does not fit an `allocate_slots`
//! call with `new_step = false`: it reports `false`, keeps its hit, and fits in the
//! next step (as vLLM does with `cached_blocks_this_step`). Attention blocks need no
//! such rule: every layer writes the whole batch's K/V before attending.

use std::hash::BuildHasherDefault;

use crate::arena::{Arena, ArenaConfig};
use crate::block_pool::{BlockHash, BlockId, BlockPool, FoldHasher};
use crate::error::{Error, Result};
use crate::group_policy::{CheckpointPolicy, GroupConfig, MambaMode};
use crate::kv_events::KvEvent;
use crate::prefix_hash::ExtraKeys;
use crate::request::{Request, Requests, Resolve};
use crate::stats::Stats;

mod allocation;
mod checkpoints;
mod construct;
mod elastic;
mod events;
mod invariants;
mod lifecycle;
mod prefix_hit;
mod tables;

pub use elastic::ElasticStats;

/// Memo marker: this block's hash was not looked up yet.
const UNKNOWN: i32 = -2;

/// Everything the manager is built from.
#[derive(Debug, Clone)]
pub struct ManagerConfig {
    pub groups: Vec<GroupConfig>,
    pub mamba_mode: MambaMode,
    pub enable_caching: bool,
    pub hash_seed: u64,
    /// Token ids must be below this (when given).
    pub vocab_size: Option<u64>,
    /// Record KV events (drain them with `take_events` every step).
    pub record_events: bool,
    /// Every group draws from one pool (module docs); all groups must have the same
    /// `num_blocks`, which is that pool's size.
    pub shared_pool: bool,
    /// Per group, the pool it draws from (pools numbered in the order of their first
    /// group; no state group shares). Static pools: groups sharing one need the same
    /// `num_blocks`; empty: one pool per group. An elastic arena: groups sharing one need
    /// the same page and block size; empty: the arena pools each page class
    /// (`construct::page_classes`). A shared pool is all pool 0 (and takes none).
    pub pool_of: Vec<usize>,
    /// One shared arena for all groups (elastic memory, `arena.rs`); `None`: one fixed
    /// pool per group of `num_blocks`. With an arena each group's `num_blocks` is its
    /// view of the whole arena, whatever the config says.
    pub arena: Option<ArenaConfig>,
    /// Which cached state checkpoints go first (align mode, `manager/checkpoints.rs`);
    /// a shared pool (vLLM's layout) needs `Lru`.
    pub checkpoint_policy: CheckpointPolicy,
}

/// A request to add.
#[derive(Debug, Clone, Default)]
pub struct NewRequest {
    pub id: i64,
    pub extra: ExtraKeys,
    pub encoder_len: usize,
}

pub struct Manager {
    groups: Vec<GroupConfig>,
    pools: Vec<BlockPool>,
    /// Group -> its pool in `pools`: the identity for static pools, all 0 with a shared
    /// pool, in an elastic arena the plan's pools (else one per page class:
    /// `construct::page_classes`).
    pool_of: Vec<usize>,
    /// Pool -> its groups, in group order.
    pool_groups: Vec<Vec<usize>>,
    /// vLLM's layout (`shared_pool`): one pool, window blocks released per request.
    shared: bool,
    /// Per group: XOR-ed into its block hashes to key its pool's prefix index (0 for a
    /// group alone in its pool).
    salt: Vec<BlockHash>,
    /// Per pool serving several groups: the group whose hash each block carries (for
    /// `Removed` events); empty for a pool of one group.
    owner: Vec<Vec<u32>>,
    mode: MambaMode,
    caching: bool,
    root: BlockHash,
    vocab: Option<u64>,
    /// Distinct block sizes, and which one each group uses.
    sizes: Vec<usize>,
    size_of: Vec<usize>,
    /// Groups in the order prefix lookups ask them (cheapest, most limiting first).
    hit_order: Vec<usize>,
    /// Whether any group releases blocks as requests advance.
    trims: bool,
    reqs: Requests,
    /// Requests to release window blocks for at the next step: `(slot, id)` (the id
    /// guards against a slot reused by another request since).
    dirty: Vec<(u32, i64)>,
    stats: Stats,
    events: Vec<KvEvent>,
    record_events: bool,
    buf: Vec<u8>,
    memo: Vec<Vec<i32>>,
    /// Scratch for releasing a table's blocks in one `free` call.
    release_buf: Vec<BlockId>,
    /// Per group: state blocks cached since the step began (not computed yet).
    states_this_step: Vec<BlockSet>,
    arena: Option<Arena>,
    /// Elastic, align mode: the attention group whose blocks anchor state checkpoints,
    /// and per state group and block the anchoring attention hash (`elastic.rs`).
    anchor_group: Option<usize>,
    anchors: Vec<Vec<Option<BlockHash>>>,
    /// Per pool: takes regions from the bottom of the arena (else the top).
    bottom: Vec<bool>,
    elastic: ElasticStats,
    /// Where the next bounded orphan sweep resumes (state group, block id).
    orphan_cursor: (usize, usize),
    /// Elastic managers: requests released so far, the clock every pool stamps a cached
    /// block with when it becomes free (`make_room` compares recency across groups).
    clock: u64,
    /// Per group: checkpoint retention of a state group under `CheckpointPolicy::Reuse`
    /// in align mode with caching (`None` otherwise).
    ckpt: Vec<Option<checkpoints::GroupCheckpoints>>,
    /// Elastic arena: a prompt's last checkpoint is kept only when the prompt's
    /// uncached part up to it is at least this many tokens (`checkpoints.rs`); 0 for
    /// static pools.
    prompt_keep_min: usize,
    /// Per group: its planned floor (0 for growing groups and static pools).
    group_floor: Vec<usize>,
    /// Per pool: its effective floor, at most the arena's planned floor: what its
    /// running requests can still need (`elastic.rs`, `set_floor_needs`). Other pools
    /// take its regions only above it; the pool always holds at least this many blocks.
    eff_floor: Vec<usize>,
}

/// A set of block ids of one pool.
type BlockSet = std::collections::HashSet<BlockId, BuildHasherDefault<FoldHasher>>;

fn unresolved(r: Resolve) -> Error {
    match r {
        Resolve::Unknown(id) => Error::UnknownRequest {
            req_id: id.to_string(),
        },
        Resolve::Duplicate(id) => Error::DuplicateRequest {
            req_id: id.to_string(),
            in_call: true,
        },
    }
}

impl Manager {
    // --- accessors -----------------------------------------------------------------

    pub fn num_groups(&self) -> usize {
        self.groups.len()
    }
    pub fn groups(&self) -> &[GroupConfig] {
        &self.groups
    }
    pub fn pools(&self) -> &[BlockPool] {
        &self.pools
    }
    /// The pool `group` draws from (with a shared pool, the same one for every group).
    pub fn pool(&self, group: usize) -> Result<&BlockPool> {
        match self.pool_of.get(group) {
            Some(&p) => Ok(&self.pools[p]),
            None => Err(Error::UnknownGroup {
                group: group as i64,
                num_groups: self.groups.len(),
            }),
        }
    }
    /// Whether every group draws from one shared pool.
    pub fn shared_pool(&self) -> bool {
        self.shared
    }
    /// Per group: the index of the pool it draws from (arena regions are owned by pools).
    pub fn pool_of(&self) -> &[usize] {
        &self.pool_of
    }
    pub fn stats(&self) -> &Stats {
        &self.stats
    }
    pub fn num_requests(&self) -> usize {
        self.reqs.len()
    }
    pub fn mamba_mode(&self) -> MambaMode {
        self.mode
    }
    pub fn caching(&self) -> bool {
        self.caching
    }
    pub fn request_ids(&self) -> Vec<i64> {
        let mut v: Vec<i64> = self.reqs.iter().map(|r| r.id).collect();
        v.sort_unstable();
        v
    }
    pub fn contains(&self, id: i64) -> bool {
        self.reqs.contains(id)
    }
    fn request(&self, id: i64) -> Result<&Request> {
        self.reqs.by_id(id).ok_or_else(|| Error::UnknownRequest {
            req_id: id.to_string(),
        })
    }
    fn check_group(&self, group: usize) -> Result<()> {
        if group >= self.groups.len() {
            return Err(Error::UnknownGroup {
                group: group as i64,
                num_groups: self.groups.len(),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod elastic_tests;
#[cfg(test)]
mod tests;
