//! The KV-cache manager: one pool per group, per-request positional block tables, and
//! prefix caching that every group must agree on.
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

use std::time::Instant;

use crate::block_pool::{BlockHash, BlockId, BlockPool, PoolEvent, NULL_BLOCK};
use crate::error::{Error, Result};
use crate::group_policy::{cdiv, GroupConfig, GroupKind, MambaMode};
use crate::kv_events::KvEvent;
use crate::prefix_hash::{root_hash, ExtraKeys};
use crate::request::{first_repeat, Phase, Request, Requests, Resolve};
use crate::stats::Stats;

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
}

fn unresolved(r: Resolve) -> Error {
    match r {
        Resolve::Unknown(id) => Error::UnknownRequest {
            req_id: id.to_string(),
        },
        Resolve::Duplicate(id) => Error::DuplicateRequest {
            req_id: id.to_string(),
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
        let mut pools = Vec::with_capacity(cfg.groups.len());
        let mut sizes: Vec<usize> = Vec::new();
        let mut size_of = Vec::with_capacity(cfg.groups.len());
        for g in &cfg.groups {
            g.validate()?;
            let mut p = BlockPool::new(g.num_blocks)?;
            p.set_record_events(cfg.record_events);
            pools.push(p);
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
        Ok(Manager {
            groups: cfg.groups,
            pools,
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
        })
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
    pub fn pool(&self, group: usize) -> Result<&BlockPool> {
        self.pools.get(group).ok_or(Error::UnknownGroup {
            group: group as i64,
            num_groups: self.pools.len(),
        })
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
        for i in 0..n {
            let d = offsets[i + 1] - offsets[i];
            if d < 0 || (d == 0 && !empty_ok) {
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
        let ids: Vec<i64> = new.iter().map(|r| r.id).collect();
        if let Some(id) = first_repeat(&ids) {
            return Err(Error::DuplicateRequest {
                req_id: id.to_string(),
            });
        }
        if let Some(&id) = ids.iter().find(|&&id| self.reqs.contains(id)) {
            return Err(Error::DuplicateRequest {
                req_id: id.to_string(),
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
        for (i, r) in new.into_iter().enumerate() {
            let toks = tokens[offsets[i] as usize..offsets[i + 1] as usize].to_vec();
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
        for (g, table) in r.tables.iter_mut().enumerate() {
            let pool = &mut self.pools[g];
            // Tail first: a request's last blocks are the least likely to be shared, so
            // they should be evicted first.
            for &b in table.iter().rev() {
                if b != NULL_BLOCK {
                    // Every non-null entry holds one reference taken by this request.
                    let _ = pool.free(&[b]);
                }
            }
            table.clear();
            r.first_live[g] = 0;
            r.num_cached[g] = 0;
        }
        if self.record_events {
            self.drain_pool_events();
        }
    }

    // --- prefix hits ---------------------------------------------------------------

    /// For each request: the longest prefix every group can serve from the cache. The
    /// request takes a reference on those blocks and its computed count becomes the hit.
    /// A request must not be running (preempt it first); a repeated query replaces the
    /// previous hit.
    pub fn get_computed_tokens(&mut self, ids: &[i64]) -> Result<Vec<i64>> {
        let slots = self.reqs.resolve(ids).map_err(unresolved)?;
        for &s in &slots {
            if let Some(r) = self.reqs.get(s) {
                if r.phase == Phase::Running {
                    return Err(Error::RequestState {
                        req_id: r.id,
                        msg:
                            "is running; a prefix lookup needs a waiting request (preempt it first)"
                                .into(),
                    });
                }
            }
        }
        let mut out = Vec::with_capacity(slots.len());
        for &s in &slots {
            let Some(mut r) = self.reqs.take(s) else {
                continue;
            };
            if r.holds_blocks() {
                self.release_all(&mut r);
            }
            let h = self.find_and_take_hit(&mut r);
            r.num_computed = h;
            r.phase = Phase::Queried;
            out.push(h as i64);
            self.reqs.put(s, r);
        }
        Ok(out)
    }

    fn find_and_take_hit(&mut self, r: &mut Request) -> usize {
        let n = r.tokens.len();
        self.stats.queries += 1;
        self.stats.query_tokens += n as u64;
        if !self.caching || n <= 1 {
            return 0;
        }
        let cap = n - 1;
        let t0 = Instant::now();
        for s in 0..self.sizes.len() {
            r.ensure_hashes(s, self.sizes[s], cap, self.root, &mut self.buf);
        }
        let t1 = Instant::now();
        self.stats.ns_hash += (t1 - t0).as_nanos() as u64;
        for g in 0..self.groups.len() {
            let m = &mut self.memo[g];
            m.clear();
            m.resize(cap / self.groups[g].block_size, UNKNOWN);
        }
        let ng = self.groups.len();
        let mut own = vec![0usize; ng];
        for i in 0..ng {
            let g = self.hit_order[i];
            own[g] = self.serve(g, r, cap);
        }
        let mut h = own.iter().copied().min().unwrap_or(0);
        loop {
            let mut nh = h;
            for i in 0..ng {
                let g = self.hit_order[i];
                nh = self.serve(g, r, nh);
            }
            if nh == h {
                break;
            }
            h = nh;
        }
        for (g, &o) in own.iter().enumerate() {
            self.stats.group_hit_tokens[g] += o as u64;
        }
        self.stats.hit_tokens += h as u64;
        if own.iter().any(|&o| o != h) {
            self.stats.disagreements += 1;
            if self.record_events {
                self.events.push(KvEvent::Disagreement {
                    req_id: r.id,
                    hit: h,
                    group_hits: own,
                });
            }
        }
        if h > 0 {
            self.take_hit_blocks(r, h);
        }
        self.stats.ns_lookup += t1.elapsed().as_nanos() as u64;
        h
    }

    /// The memoised lookup of block `k` of group `g` (-1 when not cached).
    #[inline]
    fn look(&mut self, g: usize, r: &Request, k: usize) -> i32 {
        let v = self.memo[g][k];
        if v != UNKNOWN {
            return v;
        }
        let h = r.hashes[self.size_of[g]][k];
        let b = self.pools[g].lookup_one(h).unwrap_or(-1);
        self.memo[g][k] = b;
        b
    }

    /// The longest prefix `h <= limit` group `g` alone can serve for `r`.
    fn serve(&mut self, g: usize, r: &Request, limit: usize) -> usize {
        let cfg = self.groups[g];
        let bs = cfg.block_size;
        let kmax = limit / bs;
        match cfg.kind {
            GroupKind::Full => {
                let mut k = 0;
                while k < kmax && self.look(g, r, k) >= 0 {
                    k += 1;
                }
                k * bs
            }
            GroupKind::SlidingWindow { .. } | GroupKind::ChunkedLocal { .. } => {
                let mut k = kmax;
                'candidates: while k > 0 {
                    let lo = cfg.first_needed_token(k * bs) / bs;
                    let mut j = k;
                    while j > lo {
                        j -= 1;
                        if self.look(g, r, j) < 0 {
                            // Every candidate whose window holds block j fails too.
                            k = j;
                            continue 'candidates;
                        }
                    }
                    return k * bs;
                }
                0
            }
            GroupKind::State => {
                if self.mode == MambaMode::None {
                    return 0;
                }
                let mut k = kmax;
                while k > 0 {
                    if self.look(g, r, k - 1) >= 0 {
                        return k * bs;
                    }
                    k -= 1;
                }
                0
            }
            GroupKind::CrossAttention { .. } => limit,
        }
    }

    /// Fill `r`'s tables with the cached blocks serving a hit of `h` tokens and take a
    /// reference on each.
    fn take_hit_blocks(&mut self, r: &mut Request, h: usize) {
        for g in 0..self.groups.len() {
            let cfg = self.groups[g];
            let bs = cfg.block_size;
            let k = h / bs;
            let lo = match cfg.kind {
                GroupKind::Full => 0,
                GroupKind::SlidingWindow { .. } | GroupKind::ChunkedLocal { .. } => {
                    cfg.first_needed_token(h) / bs
                }
                GroupKind::State => k.saturating_sub(1),
                GroupKind::CrossAttention { .. } => continue,
            };
            let mut table = std::mem::take(&mut r.tables[g]);
            table.clear();
            table.resize(lo, NULL_BLOCK);
            for j in lo..k {
                let b = self.look(g, r, j);
                table.push(b);
            }
            // The fixed point only stops at positions every group serves, so each
            // looked-up block exists (>= 1); touch validates ids anyway.
            let _ = self.pools[g].touch(&table[lo..]);
            r.tables[g] = table;
            r.first_live[g] = lo;
            r.num_cached[g] = k;
        }
    }

    // --- allocation ----------------------------------------------------------------

    /// One call per scheduler step. `num_new[i]` tokens of request `ids[i]` are computed
    /// this step (they must be known: `computed + num_new <= num_tokens`), plus
    /// `lookahead[i]` speculative slots. Returns per request whether it fitted.
    pub fn allocate_slots(
        &mut self,
        ids: &[i64],
        num_new: &[i64],
        lookahead: &[i64],
        new_step: bool,
    ) -> Result<Vec<bool>> {
        if num_new.len() != ids.len() {
            return Err(Error::LengthMismatch {
                what: "num_new_tokens vs request ids",
                left: num_new.len(),
                right: ids.len(),
            });
        }
        if lookahead.len() != ids.len() {
            return Err(Error::LengthMismatch {
                what: "num_lookahead_tokens vs request ids",
                left: lookahead.len(),
                right: ids.len(),
            });
        }
        let slots = self.reqs.resolve(ids).map_err(unresolved)?;
        for (i, &s) in slots.iter().enumerate() {
            if num_new[i] < 0 {
                return Err(Error::NegativeCount {
                    what: "num_new_tokens",
                    value: num_new[i],
                });
            }
            if lookahead[i] < 0 {
                return Err(Error::NegativeCount {
                    what: "num_lookahead_tokens",
                    value: lookahead[i],
                });
            }
            if let Some(r) = self.reqs.get(s) {
                if r.num_computed as i64 + num_new[i] > r.tokens.len() as i64 {
                    return Err(Error::InvalidArgument(format!(
                        "request {}: {} computed + {} new tokens exceeds its {} known tokens",
                        r.id,
                        r.num_computed,
                        num_new[i],
                        r.tokens.len()
                    )));
                }
            }
        }
        let t0 = Instant::now();
        let ns_hash0 = self.stats.ns_hash;
        if new_step {
            self.release_finished_windows();
        }
        let mut out = Vec::with_capacity(ids.len());
        for (i, &s) in slots.iter().enumerate() {
            let Some(mut r) = self.reqs.take(s) else {
                out.push(false);
                continue;
            };
            let ok = self.allocate_one(&mut r, num_new[i] as usize, lookahead[i] as usize);
            self.reqs.put(s, r);
            self.stats.alloc_requests += 1;
            if !ok {
                self.stats.alloc_failures += 1;
            }
            out.push(ok);
        }
        let spent = t0.elapsed().as_nanos() as u64;
        self.stats.ns_alloc += spent.saturating_sub(self.stats.ns_hash - ns_hash0);
        Ok(out)
    }

    /// Release, for every request that advanced in an earlier call, the blocks its
    /// computed tokens no longer need.
    fn release_finished_windows(&mut self) {
        let dirty = std::mem::take(&mut self.dirty);
        for &id in &dirty {
            let Some(s) = self.reqs.slot_of(id) else {
                continue;
            };
            let Some(mut r) = self.reqs.take(s) else {
                continue;
            };
            r.dirty = false;
            let c = r.num_computed;
            self.release_unneeded(&mut r, c);
            self.reqs.put(s, r);
        }
        self.dirty = dirty;
        self.dirty.clear();
    }

    /// Turn the entries `r`'s first `c` tokens no longer need into null blocks.
    fn release_unneeded(&mut self, r: &mut Request, c: usize) {
        if !self.trims {
            return;
        }
        for g in 0..self.groups.len() {
            let target = self.groups[g]
                .first_live_block(c, self.mode)
                .min(r.tables[g].len());
            let start = r.first_live[g];
            if target <= start {
                continue;
            }
            let pool = &mut self.pools[g];
            let table = &mut r.tables[g];
            for b in &mut table[start..target] {
                if *b != NULL_BLOCK {
                    // The request holds one reference on each non-null entry.
                    let _ = pool.free(&[*b]);
                    *b = NULL_BLOCK;
                }
            }
            r.first_live[g] = target;
        }
    }

    #[allow(clippy::needless_range_loop)] // `g` indexes groups, pools, tables and `need`
    fn allocate_one(&mut self, r: &mut Request, n: usize, la: usize) -> bool {
        let c = r.num_computed;
        self.release_unneeded(r, c);
        if n == 0 && la == 0 {
            return true;
        }
        let e = c + n;
        let ng = self.groups.len();
        // Blocks each group needs; nothing changes until all of them fit.
        let mut need = [0usize; 8];
        let mut need_vec;
        let need: &mut [usize] = if ng <= 8 {
            &mut need[..ng]
        } else {
            need_vec = vec![0usize; ng];
            &mut need_vec
        };
        for g in 0..ng {
            let cfg = self.groups[g];
            let bs = cfg.block_size;
            let len = r.tables[g].len();
            need[g] = match cfg.kind {
                GroupKind::Full
                | GroupKind::SlidingWindow { .. }
                | GroupKind::ChunkedLocal { .. } => cdiv(e + la, bs).saturating_sub(len),
                GroupKind::State => match self.mode {
                    MambaMode::All => cdiv(e, bs).saturating_sub(len),
                    MambaMode::None | MambaMode::Align => {
                        let w = cdiv(e, bs);
                        usize::from(w > 0 && len < w)
                    }
                },
                GroupKind::CrossAttention { .. } => {
                    if len == 0 && n > 0 {
                        cdiv(r.encoder_len, bs)
                    } else {
                        0
                    }
                }
            };
            if need[g] > self.pools[g].num_free() {
                return false;
            }
        }
        for g in 0..ng {
            if need[g] == 0 {
                continue;
            }
            let table = &mut r.tables[g];
            if self.groups[g].kind == GroupKind::State && self.mode != MambaMode::All {
                // The new running state goes to the entry of the step's last token.
                let w = cdiv(e, self.groups[g].block_size) - 1;
                table.resize(w, NULL_BLOCK);
            }
            // Checked above: the pool has `need[g]` free blocks.
            let _ = self.pools[g].allocate_into(need[g], table);
        }
        if self.record_events {
            self.drain_pool_events();
        }
        r.num_computed = e;
        r.phase = Phase::Running;
        if self.trims && n > 0 && !r.dirty {
            r.dirty = true;
            self.dirty.push(r.id);
        }
        if self.caching && n > 0 {
            self.cache_full_blocks(r, c, e);
        }
        true
    }

    /// Cache the blocks that the tokens `[c, e)` of this step complete.
    fn cache_full_blocks(&mut self, r: &mut Request, c: usize, e: usize) {
        let t0 = Instant::now();
        for s in 0..self.sizes.len() {
            if e / self.sizes[s] > r.hashes[s].len() {
                r.ensure_hashes(s, self.sizes[s], e, self.root, &mut self.buf);
            }
        }
        self.stats.ns_hash += t0.elapsed().as_nanos() as u64;
        for g in 0..self.groups.len() {
            let cfg = self.groups[g];
            if !cfg.caches(self.mode) {
                continue;
            }
            let bs = cfg.block_size;
            let (from, to) = match cfg.kind {
                GroupKind::State if self.mode == MambaMode::Align => {
                    // A checkpoint only where this step ends on a block boundary.
                    if e % bs != 0 || e / bs <= c / bs {
                        continue;
                    }
                    (e / bs - 1, e / bs)
                }
                _ => (r.num_cached[g], e / bs),
            };
            let mut run_start = usize::MAX;
            let check = cfg.kind == GroupKind::State && self.mode == MambaMode::Align;
            for k in from..to {
                let b = r.tables[g][k];
                // Entries from `num_cached` on were allocated by this request and never
                // cached (only this function caches, and it advances `num_cached`); an
                // align-mode state entry may be a checkpoint taken from a hit.
                let fresh =
                    b != NULL_BLOCK && (!check || matches!(self.pools[g].block_hash(b), Ok(None)));
                debug_assert!(!fresh || self.pools[g].block_hash(b) == Ok(None));
                if fresh {
                    let h = r.hashes[self.size_of[g]][k];
                    // In use (held by this request) and unhashed: cannot fail.
                    let _ = self.pools[g].cache_blocks(&[b], &[h]);
                    if run_start == usize::MAX {
                        run_start = k;
                    }
                }
                if self.record_events && run_start != usize::MAX && (!fresh || k + 1 == to) {
                    let end = if fresh { k + 1 } else { k };
                    self.push_stored(r, g, run_start, end);
                    run_start = usize::MAX;
                }
            }
            if to > r.num_cached[g] {
                r.num_cached[g] = to;
            }
        }
        if self.record_events {
            // The rich `Stored` events were recorded above; drop the pool's copies.
            for p in &mut self.pools {
                let _ = p.take_events();
            }
        }
    }

    fn push_stored(&mut self, r: &Request, g: usize, k0: usize, k1: usize) {
        let bs = self.groups[g].block_size;
        let hs = &r.hashes[self.size_of[g]];
        self.events.push(KvEvent::Stored {
            group: g,
            hashes: hs[k0..k1].to_vec(),
            parent: if k0 == 0 { None } else { Some(hs[k0 - 1]) },
            tokens: r.tokens[k0 * bs..k1 * bs].to_vec(),
            block_size: bs,
            lora_id: r.extra.lora_id,
        });
    }

    /// Move the pools' `Removed` / `AllCleared` events into the manager's log.
    fn drain_pool_events(&mut self) {
        for (g, p) in self.pools.iter_mut().enumerate() {
            for ev in p.take_events() {
                match ev {
                    PoolEvent::Removed { hash, .. } => match self.events.last_mut() {
                        Some(KvEvent::Removed { group, hashes }) if *group == g => {
                            hashes.push(hash)
                        }
                        _ => self.events.push(KvEvent::Removed {
                            group: g,
                            hashes: vec![hash],
                        }),
                    },
                    PoolEvent::AllCleared => self.events.push(KvEvent::AllCleared { group: g }),
                    PoolEvent::Stored { .. } => {}
                }
            }
        }
    }

    // --- outputs -------------------------------------------------------------------

    /// Block tables of `group` for `ids`, row-major `(ids.len(), width)`, zero padded.
    /// `width = None` uses the longest table; a table longer than a given width fails.
    pub fn block_table(
        &self,
        group: usize,
        ids: &[i64],
        width: Option<usize>,
    ) -> Result<(Vec<i32>, usize)> {
        self.check_group(group)?;
        let mut rows: Vec<&[BlockId]> = Vec::with_capacity(ids.len());
        for &id in ids {
            rows.push(&self.request(id)?.tables[group]);
        }
        Self::pack_rows(&rows, width)
    }

    /// Rows of a block table packed row-major with zero padding.
    fn pack_rows(rows: &[&[BlockId]], width: Option<usize>) -> Result<(Vec<i32>, usize)> {
        let longest = rows.iter().map(|t| t.len()).max().unwrap_or(0);
        let w = match width {
            None => longest,
            Some(w) if w >= longest => w,
            Some(w) => {
                return Err(Error::InvalidArgument(format!(
                    "max_blocks {w} is smaller than the longest block table ({longest})"
                )))
            }
        };
        let mut out = Vec::with_capacity(rows.len() * w);
        for t in rows {
            out.extend_from_slice(t);
            out.resize(out.len() + (w - t.len()), NULL_BLOCK);
        }
        Ok((out, w))
    }

    /// Block tables of every group for `ids` (one id resolution for all groups).
    pub fn block_tables(&self, ids: &[i64]) -> Result<Vec<(Vec<i32>, usize)>> {
        let mut reqs: Vec<&Request> = Vec::with_capacity(ids.len());
        for &id in ids {
            reqs.push(self.request(id)?);
        }
        (0..self.groups.len())
            .map(|g| {
                let rows: Vec<&[BlockId]> = reqs.iter().map(|r| r.tables[g].as_slice()).collect();
                Self::pack_rows(&rows, None)
            })
            .collect()
    }

    /// The slot (`block * block_size + offset`) of each `(ids[i], positions[i])` in
    /// `group`'s address space; -1 where the entry is the null block.
    pub fn slot_mapping(&self, group: usize, ids: &[i64], positions: &[i64]) -> Result<Vec<i64>> {
        self.check_group(group)?;
        if ids.len() != positions.len() {
            return Err(Error::LengthMismatch {
                what: "slot_mapping request ids vs positions",
                left: ids.len(),
                right: positions.len(),
            });
        }
        let bs = self.groups[group].block_size as i64;
        let mut out = Vec::with_capacity(ids.len());
        let mut last: Option<(i64, &[BlockId])> = None;
        for (&id, &p) in ids.iter().zip(positions) {
            let table = match last {
                Some((lid, t)) if lid == id => t,
                _ => {
                    let t: &[BlockId] = &self.request(id)?.tables[group];
                    last = Some((id, t));
                    t
                }
            };
            if p < 0 || (p / bs) as usize >= table.len() {
                return Err(Error::InvalidArgument(format!(
                    "position {p} of request {id} is outside its {} allocated blocks in group {group}",
                    table.len()
                )));
            }
            let b = table[(p / bs) as usize];
            out.push(if b == NULL_BLOCK {
                -1
            } else {
                b as i64 * bs + p % bs
            });
        }
        Ok(out)
    }

    pub fn num_computed_tokens(&self, ids: &[i64]) -> Result<Vec<i64>> {
        ids.iter()
            .map(|&id| self.request(id).map(|r| r.num_computed as i64))
            .collect()
    }

    pub fn num_tokens(&self, ids: &[i64]) -> Result<Vec<i64>> {
        ids.iter()
            .map(|&id| self.request(id).map(|r| r.tokens.len() as i64))
            .collect()
    }

    /// The request's full-block hashes at `group`'s block size (all known tokens).
    pub fn block_hashes(&mut self, group: usize, id: i64) -> Result<Vec<BlockHash>> {
        self.check_group(group)?;
        let s = self.size_of[group];
        let bs = self.sizes[s];
        let slot = self.reqs.slot_of(id).ok_or_else(|| Error::UnknownRequest {
            req_id: id.to_string(),
        })?;
        let root = self.root;
        let buf = &mut self.buf;
        let r = self
            .reqs
            .get_mut(slot)
            .ok_or_else(|| Error::UnknownRequest {
                req_id: id.to_string(),
            })?;
        let n = r.tokens.len();
        r.ensure_hashes(s, bs, n, root, buf);
        Ok(r.hashes[s].clone())
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
        for (g, pool) in self.pools.iter().enumerate() {
            pool.check_invariants()
                .map_err(|m| format!("group {g}: {m}"))?;
            let mut refs = vec![0u32; pool.num_blocks()];
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
            if refs != pool.ref_counts() {
                return Err(format!(
                    "group {g}: pool reference counts differ from the block tables"
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
#[path = "manager_tests.rs"]
mod tests;
