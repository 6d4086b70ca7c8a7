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
use crate::block_pool::{BlockHash, BlockId, BlockPool, FoldHasher, PoolEvent, NULL_BLOCK};
use crate::error::{Error, Result};
use crate::group_policy::{CheckpointPolicy, GroupConfig, GroupKind, MambaMode};
use crate::kv_events::KvEvent;
use crate::prefix_hash::{root_hash, ExtraKeys};
use crate::request::{first_repeat, Phase, Request, Requests, Resolve};
use crate::stats::Stats;

mod allocation;
mod checkpoints;
mod elastic;
mod prefix_hit;

pub use elastic::ElasticStats;
mod tables;

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
    /// Group -> its pool in `pools` (the identity, or all 0 with a shared pool).
    pool_of: Vec<usize>,
    shared: bool,
    /// Per group: XOR-ed into its block hashes to key its pool's prefix index (all 0
    /// without a shared pool, where each pool serves one group).
    salt: Vec<BlockHash>,
    /// Shared pool: the group whose hash each block carries (for `Removed` events).
    owner: Vec<u32>,
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
    dirty: Vec<i64>,
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
    /// Per group: takes regions from the bottom of the arena (else the top).
    bottom: Vec<bool>,
    elastic: ElasticStats,
    /// Per group: checkpoint retention of a state group under `CheckpointPolicy::Reuse`
    /// in align mode with caching (`None` otherwise).
    ckpt: Vec<Option<checkpoints::GroupCheckpoints>>,
}

/// The salt of group `g` in a shared pool: a different 128-bit constant per group, so
/// (group, hash) pairs of different groups collide only with probability 2**-128.
fn group_salt(g: usize) -> BlockHash {
    const MIX: u128 = 0x9E37_79B9_7F4A_7C15_F39C_C060_5CED_C835;
    (g as u128).wrapping_mul(MIX)
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
    pub fn new(cfg: ManagerConfig) -> Result<Self> {
        if cfg.groups.is_empty() {
            return Err(Error::InvalidArgument(
                "a KV-cache manager needs at least one group".into(),
            ));
        }
        let mut cfg = cfg;
        let arena = match cfg.arena.take() {
            None => None,
            Some(a) => {
                if a.page_bytes.len() != cfg.groups.len() {
                    return Err(Error::InvalidArgument(format!(
                        "arena has {} page sizes for {} groups",
                        a.page_bytes.len(),
                        cfg.groups.len()
                    )));
                }
                let arena = Arena::new(a)?;
                for (g, gc) in cfg.groups.iter_mut().enumerate() {
                    gc.num_blocks = arena.view_blocks(g);
                }
                Some(arena)
            }
        };
        for g in &cfg.groups {
            g.validate()?;
        }
        let shared = cfg.shared_pool;
        if shared && cfg.checkpoint_policy != CheckpointPolicy::Lru {
            return Err(Error::InvalidArgument(
                "a shared pool evicts state checkpoints least recently used first, as vLLM \
                 does: use checkpoint_policy 'lru'"
                    .into(),
            ));
        }
        if shared && arena.is_some() {
            return Err(Error::InvalidArgument(
                "a shared pool and an elastic arena are two different layouts: pick one".into(),
            ));
        }
        if shared {
            let n0 = cfg.groups[0].num_blocks;
            if let Some((i, g)) = cfg
                .groups
                .iter()
                .enumerate()
                .find(|(_, g)| g.num_blocks != n0)
            {
                return Err(Error::InvalidArgument(format!(
                    "a shared pool needs every group to have the same num_blocks: group 0 has \
                     {n0}, group {i} has {}",
                    g.num_blocks
                )));
            }
            if cfg.groups.len() > u32::MAX as usize {
                return Err(Error::InvalidArgument(format!(
                    "{} groups are too many for a shared pool",
                    cfg.groups.len()
                )));
            }
            crate::block_pool::check_bookkeeping_fits([cfg.groups[0].num_blocks])?;
        } else {
            crate::block_pool::check_bookkeeping_fits(cfg.groups.iter().map(|g| g.num_blocks))?;
        }
        let n_pools = if shared { 1 } else { cfg.groups.len() };
        let mut pools = Vec::with_capacity(n_pools);
        let mut sizes: Vec<usize> = Vec::new();
        let mut size_of = Vec::with_capacity(cfg.groups.len());
        for (gi, g) in cfg.groups.iter().enumerate() {
            if gi < n_pools {
                let mut p = match arena.as_ref() {
                    None => BlockPool::new(g.num_blocks)?,
                    Some(a) => BlockPool::new_elastic(a.region_map(gi), a.num_regions())?,
                };
                p.set_record_events(cfg.record_events);
                pools.push(p);
            }
            let s = match sizes.iter().position(|&s| s == g.block_size) {
                Some(i) => i,
                None => {
                    sizes.push(g.block_size);
                    sizes.len() - 1
                }
            };
            size_of.push(s);
        }
        let rank = |k: &GroupKind| match k {
            GroupKind::Full => 0,
            GroupKind::SlidingWindow { .. } | GroupKind::ChunkedLocal { .. } => 1,
            GroupKind::State => 2,
            GroupKind::CrossAttention { .. } => 3,
        };
        let mut hit_order: Vec<usize> = (0..cfg.groups.len()).collect();
        hit_order.sort_by_key(|&g| rank(&cfg.groups[g].kind));
        let trims = cfg.groups.iter().any(|g| match g.kind {
            GroupKind::SlidingWindow { .. } | GroupKind::ChunkedLocal { .. } => true,
            GroupKind::State => cfg.mamba_mode != MambaMode::All,
            _ => false,
        });
        let n = cfg.groups.len();
        let pool_of = (0..n).map(|g| if shared { 0 } else { g }).collect();
        let salt = (0..n)
            .map(|g| if shared { group_salt(g) } else { 0 })
            .collect();
        let owner = if shared {
            vec![0u32; cfg.groups[0].num_blocks]
        } else {
            Vec::new()
        };
        let bottom = (0..n)
            .map(|g| elastic::from_bottom(arena.as_ref().map_or(0, |a| a.floor(g))))
            .collect();
        let anchor_group = cfg
            .groups
            .iter()
            .position(|g| g.kind == GroupKind::Full)
            .filter(|_| {
                arena.is_some() && cfg.mamba_mode == MambaMode::Align && cfg.enable_caching
            });
        let anchors = cfg
            .groups
            .iter()
            .map(|g| match (anchor_group, g.kind) {
                (Some(_), GroupKind::State) => vec![None; g.num_blocks],
                _ => Vec::new(),
            })
            .collect();
        let reuse = cfg.checkpoint_policy == CheckpointPolicy::Reuse
            && cfg.mamba_mode == MambaMode::Align
            && cfg.enable_caching;
        let ckpt = cfg
            .groups
            .iter()
            .map(|g| {
                (reuse && g.kind == GroupKind::State)
                    .then(|| checkpoints::GroupCheckpoints::new(g.num_blocks))
            })
            .collect();
        let mut m = Manager {
            groups: cfg.groups,
            pools,
            pool_of,
            shared,
            salt,
            owner,
            mode: cfg.mamba_mode,
            caching: cfg.enable_caching,
            root: root_hash(cfg.hash_seed),
            vocab: cfg.vocab_size,
            sizes,
            size_of,
            hit_order,
            trims,
            reqs: Requests::default(),
            dirty: Vec::new(),
            stats: Stats::new(n),
            events: Vec::new(),
            record_events: cfg.record_events,
            buf: Vec::with_capacity(256),
            memo: vec![Vec::new(); n],
            release_buf: Vec::new(),
            states_this_step: vec![BlockSet::default(); n],
            arena,
            anchor_group,
            anchors,
            bottom,
            elastic: ElasticStats::default(),
            ckpt,
        };
        m.grant_floors()?;
        Ok(m)
    }

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

    // --- requests ------------------------------------------------------------------

    fn check_tokens(&self, tokens: &[i32]) -> Result<()> {
        let hi = self.vocab.unwrap_or(i32::MAX as u64 + 1);
        if let Some(pos) = tokens.iter().position(|&t| t < 0 || t as u64 >= hi) {
            return Err(Error::InvalidToken {
                token: tokens[pos] as i64,
                position: pos,
            });
        }
        Ok(())
    }

    fn check_offsets(offsets: &[i64], n: usize, num_tokens: usize, empty_ok: bool) -> Result<()> {
        if offsets.len() != n + 1 {
            return Err(Error::LengthMismatch {
                what: "offsets (need one more than request ids)",
                left: offsets.len(),
                right: n + 1,
            });
        }
        if offsets[0] != 0 || offsets[n] != num_tokens as i64 {
            return Err(Error::InvalidArgument(format!(
                "offsets must start at 0 and end at the number of tokens ({num_tokens}), got {} .. {}",
                offsets[0], offsets[n]
            )));
        }
        // Compare, never subtract: a difference of two arbitrary i64s can overflow.
        for i in 0..n {
            let (a, b) = (offsets[i], offsets[i + 1]);
            if b < a || (b == a && !empty_ok) {
                return Err(Error::InvalidArgument(format!(
                    "offsets must increase{}: offsets[{}] = {} then {}",
                    if empty_ok {
                        ""
                    } else {
                        " strictly (every prompt needs a token)"
                    },
                    i,
                    offsets[i],
                    offsets[i + 1]
                )));
            }
        }
        Ok(())
    }

    /// Add requests: `tokens[offsets[i]..offsets[i+1]]` is request `i`'s prompt.
    /// `new` (one per id) carries the extra hash keys and encoder lengths.
    pub fn add_requests(
        &mut self,
        new: Vec<NewRequest>,
        tokens: &[i32],
        offsets: &[i64],
    ) -> Result<()> {
        let n = new.len();
        Self::check_offsets(offsets, n, tokens.len(), false)?;
        self.check_tokens(tokens)?;
        let prompts = (0..n)
            .map(|i| tokens[offsets[i] as usize..offsets[i + 1] as usize].to_vec())
            .collect();
        self.add_requests_owned(new, prompts)
    }

    /// `add_requests` with one prompt vector per request, moved in as they are (a
    /// caller that built them, e.g. from a list of arrays, copies the tokens once).
    pub fn add_requests_owned(
        &mut self,
        new: Vec<NewRequest>,
        prompts: Vec<Vec<i32>>,
    ) -> Result<()> {
        let n = new.len();
        if prompts.len() != n {
            return Err(Error::LengthMismatch {
                what: "prompts vs request ids",
                left: prompts.len(),
                right: n,
            });
        }
        let mut at = 0usize;
        for (i, p) in prompts.iter().enumerate() {
            if p.is_empty() {
                return Err(Error::InvalidArgument(format!(
                    "every prompt needs a token: prompt {i} of this call is empty"
                )));
            }
            // Positions count through the batch as if the prompts were concatenated
            // (what the flat form reports).
            self.check_tokens(p).map_err(|e| match e {
                Error::InvalidToken { token, position } => Error::InvalidToken {
                    token,
                    position: at + position,
                },
                e => e,
            })?;
            at += p.len();
        }
        let ids: Vec<i64> = new.iter().map(|r| r.id).collect();
        if let Some(id) = first_repeat(&ids) {
            return Err(Error::DuplicateRequest {
                req_id: id.to_string(),
                in_call: true,
            });
        }
        if let Some(&id) = ids.iter().find(|&&id| self.reqs.contains(id)) {
            return Err(Error::DuplicateRequest {
                req_id: id.to_string(),
                in_call: false,
            });
        }
        let max_enc = self
            .groups
            .iter()
            .filter_map(|g| match g.kind {
                GroupKind::CrossAttention { max_encoder_len } => Some(max_encoder_len),
                _ => None,
            })
            .min();
        for r in &new {
            if r.encoder_len > 0 {
                match max_enc {
                    None => {
                        return Err(Error::InvalidArgument(format!(
                            "request {}: encoder length {} given but the model has no cross-attention group",
                            r.id, r.encoder_len
                        )))
                    }
                    Some(m) if r.encoder_len > m => {
                        return Err(Error::InvalidArgument(format!(
                            "request {}: encoder length {} exceeds max_encoder_len {m}",
                            r.id, r.encoder_len
                        )))
                    }
                    _ => {}
                }
            }
            if let Some(m) = r.extra.media.iter().find(|m| m.start < 0) {
                return Err(Error::InvalidArgument(format!(
                    "request {}: multimodal item starts at negative position {}",
                    r.id, m.start
                )));
            }
        }
        let (ns, ng) = (self.sizes.len(), self.groups.len());
        for (r, toks) in new.into_iter().zip(prompts) {
            self.reqs
                .insert(Request::new(r.id, toks, r.extra, r.encoder_len, ns, ng));
        }
        Ok(())
    }

    /// Append generated tokens (ragged like `add_requests`; a request may get none).
    pub fn append_tokens(&mut self, ids: &[i64], tokens: &[i32], offsets: &[i64]) -> Result<()> {
        Self::check_offsets(offsets, ids.len(), tokens.len(), true)?;
        self.check_tokens(tokens)?;
        let slots = self.reqs.resolve(ids).map_err(unresolved)?;
        self.reqs.prefetch(&slots);
        for (i, &s) in slots.iter().enumerate() {
            if let Some(r) = self.reqs.get_mut(s) {
                r.tokens
                    .extend_from_slice(&tokens[offsets[i] as usize..offsets[i + 1] as usize]);
            }
        }
        Ok(())
    }

    /// Drop requests and release all their blocks (cached blocks stay findable).
    pub fn free(&mut self, ids: &[i64]) -> Result<()> {
        let slots = self.reqs.resolve(ids).map_err(unresolved)?;
        for (&s, &id) in slots.iter().zip(ids) {
            if let Some(mut r) = self.reqs.take(s) {
                self.release_all(&mut r);
                self.reqs.put(s, r);
            }
            self.reqs.remove(id);
        }
        Ok(())
    }

    /// Release all blocks of running requests and send them back to waiting; their
    /// tokens and hashes stay, so a later `get_computed_tokens` re-hits their prefix.
    pub fn preempt(&mut self, ids: &[i64]) -> Result<()> {
        let slots = self.reqs.resolve(ids).map_err(unresolved)?;
        for &s in &slots {
            if let Some(mut r) = self.reqs.take(s) {
                self.release_all(&mut r);
                r.num_computed = 0;
                r.phase = Phase::Waiting;
                self.stats.preemptions += 1;
                self.reqs.put(s, r);
            }
        }
        Ok(())
    }

    fn release_all(&mut self, r: &mut Request) {
        if self.arena.is_some() {
            self.drop_unreachable_blocks(r);
        }
        let mut batch = std::mem::take(&mut self.release_buf);
        for (g, table) in r.tables.iter_mut().enumerate() {
            let pool = &mut self.pools[self.pool_of[g]];
            // Tail first, in one call per group (so the pool's queue order is vLLM's): a
            // request's last blocks are the least likely to be shared, so they should be
            // evicted first.
            batch.clear();
            batch.extend(table.iter().rev().filter(|&&b| b != NULL_BLOCK));
            // Every non-null entry holds one reference taken by this request.
            pool.free_held(&batch);
            table.clear();
            r.first_live[g] = 0;
            r.num_cached[g] = 0;
            r.exported[g] = 0;
        }
        self.release_buf = batch;
        if self.record_events {
            self.drain_pool_events();
        }
    }

    /// Move the pools' `Removed` / `AllCleared` events into the manager's log.
    pub(crate) fn drain_pool_events(&mut self) {
        let ng = self.groups.len();
        for p in 0..self.pools.len() {
            for ev in self.pools[p].take_events() {
                match ev {
                    PoolEvent::Removed { block, hash } => {
                        // A shared pool's block names its group; the key had its salt.
                        let g = if self.shared {
                            self.owner.get(block as usize).map_or(0, |&o| o as usize)
                        } else {
                            p
                        };
                        let hash = hash ^ self.salt[g];
                        match self.events.last_mut() {
                            Some(KvEvent::Removed { group, hashes }) if *group == g => {
                                hashes.push(hash)
                            }
                            _ => self.events.push(KvEvent::Removed {
                                group: g,
                                hashes: vec![hash],
                            }),
                        }
                    }
                    PoolEvent::AllCleared => {
                        let gs = if self.shared { 0..ng } else { p..p + 1 };
                        for g in gs {
                            self.events.push(KvEvent::AllCleared { group: g });
                        }
                    }
                    PoolEvent::Stored { .. } => {}
                }
            }
        }
    }

    /// Forget every cached hash in every pool. Refused (returns false, nothing changes)
    /// while any block is in use.
    pub fn reset_prefix_cache(&mut self) -> bool {
        if self.pools.iter().any(|p| p.num_in_use() > 0) {
            return false;
        }
        for p in &mut self.pools {
            // Checked above: no pool has blocks in use.
            let _ = p.reset_prefix_cache();
        }
        self.states_this_step.iter_mut().for_each(BlockSet::clear);
        if self.record_events {
            self.drain_pool_events();
        }
        true
    }

    pub fn take_events(&mut self) -> Vec<KvEvent> {
        std::mem::take(&mut self.events)
    }

    /// Check that every pool's reference counts equal the references the live block
    /// tables hold, that tables only hold ids of their own pool, and the pools' own
    /// invariants. Returns the first violation.
    pub fn check_invariants(&self) -> std::result::Result<(), String> {
        self.check_arena()?;
        let mut refs: Vec<Vec<u32>> = self
            .pools
            .iter()
            .map(|p| vec![0u32; p.num_blocks()])
            .collect();
        for (p, pool) in self.pools.iter().enumerate() {
            pool.check_invariants()
                .map_err(|m| format!("pool {p}: {m}"))?;
        }
        for g in 0..self.groups.len() {
            let refs = &mut refs[self.pool_of[g]];
            for r in self.reqs.iter() {
                for (k, &b) in r.tables[g].iter().enumerate() {
                    if b < 0 || b as usize >= refs.len() {
                        return Err(format!(
                            "request {} group {g}: block {b} is not an id of this pool",
                            r.id
                        ));
                    }
                    if b != NULL_BLOCK {
                        if k < r.first_live[g] {
                            return Err(format!(
                                "request {} group {g}: block below first_live",
                                r.id
                            ));
                        }
                        refs[b as usize] += 1;
                    }
                }
            }
        }
        for (p, pool) in self.pools.iter().enumerate() {
            if refs[p] != pool.ref_counts() {
                return Err(format!(
                    "pool {p}: reference counts differ from the block tables"
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod elastic_tests;
#[cfg(test)]
mod tests;
