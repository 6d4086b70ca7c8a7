//! `allocate_slots`: releasing blocks finished tokens no longer need, the per-request
//! all-or-nothing allocation across groups, and caching the blocks a step completes.

use std::time::Instant;

use super::{unresolved, Manager};
use crate::block_pool::{prefetch_read, NULL_BLOCK};
use crate::error::{Error, Result};
use crate::group_policy::{cdiv, GroupKind, MambaMode};
use crate::kv_events::KvEvent;
use crate::request::{Phase, Request};

impl Manager {
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
        // A one-token step (decode) reads a request's token, table and hash-list ends
        // only next to a block boundary (it allocates, caches, releases or hashes a
        // block there); elsewhere it touches the record alone.
        let sizes = &self.sizes;
        self.reqs.prefetch_where(&slots, |i, r| {
            num_new.get(i) != Some(&1)
                || lookahead.get(i) != Some(&0)
                || sizes.iter().any(|&bs| {
                    let m = r.num_computed % bs.max(1);
                    m <= 1 || m + 1 == bs
                })
        });
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
                // Saturating: num_new[i] may be anything up to i64::MAX.
                if (r.num_computed as i64).saturating_add(num_new[i]) > r.tokens.len() as i64 {
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
        // Hash first, every request at once (the clock read once per phase, not per
        // request): the blocks this call can complete, `[.., computed + num_new)`. Pure
        // (only the request's tokens decide them), so a request that then does not fit
        // loses nothing; its hashes are kept for later.
        let t0 = Instant::now();
        if self.caching {
            for (i, &s) in slots.iter().enumerate() {
                let Some(r) = self.reqs.get_mut(s) else {
                    continue;
                };
                if num_new[i] == 0 {
                    continue;
                }
                let e = r.num_computed + num_new[i] as usize;
                for (si, &bs) in self.sizes.iter().enumerate() {
                    if e / bs > r.hashes[si].len() {
                        r.ensure_hashes(si, bs, e, self.root, &mut self.buf);
                    }
                }
            }
        }
        let t1 = Instant::now();
        self.stats.ns_hash += (t1 - t0).as_nanos() as u64;
        if new_step {
            // The previous step's forward has run: its checkpoints are written.
            self.states_this_step.iter_mut().for_each(|s| s.clear());
        }
        // A shared pool releases per request, at its own allocation (module docs).
        if new_step && !self.shared {
            self.release_finished_windows();
        }
        let mut out = Vec::with_capacity(ids.len());
        for (i, &s) in slots.iter().enumerate() {
            let Some(mut r) = self.reqs.take(s) else {
                out.push(false);
                continue;
            };
            let ok = self.allocate_one(&mut r, s, num_new[i] as usize, lookahead[i] as usize);
            self.reqs.put(s, r);
            self.stats.alloc_requests += 1;
            if !ok {
                self.stats.alloc_failures += 1;
            }
            out.push(ok);
        }
        self.stats.ns_alloc += t1.elapsed().as_nanos() as u64;
        Ok(out)
    }

    /// Release, for every request that advanced in an earlier call, the blocks its
    /// computed tokens no longer need.
    fn release_finished_windows(&mut self) {
        let dirty = std::mem::take(&mut self.dirty);
        self.prefetch_releases(&dirty);
        for &(s, id) in &dirty {
            // By slot, no id lookup; a slot freed since holds nothing or another
            // request (whose id differs: left alone, as a lookup by id would have).
            let Some(mut r) = self.reqs.take(s) else {
                continue;
            };
            if r.id != id {
                self.reqs.put(s, r);
                continue;
            }
            r.dirty = false;
            let c = r.num_computed;
            self.release_unneeded(&mut r, c);
            r.released_in = self.reqs.epoch();
            self.reqs.put(s, r);
        }
        self.dirty = dirty;
        self.dirty.clear();
    }

    /// A hint before `release_finished_windows`: in a decode step most requests
    /// release nothing, and the few that do (a window slid past a block boundary, a
    /// state superseded) read a table entry far from the table's end and the record
    /// of the block it holds, both cold at long contexts. Their entries are loaded
    /// for every releasing request first, then the records of the blocks in them, so
    /// these misses overlap instead of following one another request by request. No
    /// effect on results (reads only).
    fn prefetch_releases(&self, dirty: &[(u32, i64)]) {
        if !self.trims {
            return;
        }
        let mut pending: Vec<(u32, usize, usize, usize)> = Vec::new();
        for &(s, id) in dirty {
            let Some(r) = self.reqs.get(s).filter(|r| r.id == id) else {
                continue;
            };
            for g in 0..self.groups.len() {
                let target = self.groups[g]
                    .first_live_block(r.num_computed, self.mode)
                    .min(r.tables[g].len());
                let start = r.first_live[g];
                if target > start {
                    prefetch_read(&r.tables[g][start]);
                    pending.push((s, g, start, target));
                }
            }
        }
        for &(s, g, start, target) in &pending {
            let Some(r) = self.reqs.get(s) else {
                continue;
            };
            let pool = &self.pools[self.pool_of[g]];
            for &b in &r.tables[g][start..target] {
                if b != NULL_BLOCK {
                    pool.prefetch_block(b);
                }
            }
        }
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
            if self.ckpt[g].is_some() {
                self.checkpoints_passed(r, g, start, target);
            }
            let pool = &mut self.pools[self.pool_of[g]];
            let table = &mut r.tables[g];
            // Latest first, in one call (the pool's queue order is then vLLM's).
            let mut batch = std::mem::take(&mut self.release_buf);
            batch.clear();
            for b in table[start..target].iter_mut().rev() {
                if *b != NULL_BLOCK {
                    batch.push(*b);
                    *b = NULL_BLOCK;
                }
            }
            // The request holds one reference on each non-null entry.
            pool.free_held(&batch);
            self.release_buf = batch;
            r.first_live[g] = target;
        }
    }

    #[allow(clippy::needless_range_loop)] // `g` indexes groups, pools, tables and `need`
    fn allocate_one(&mut self, r: &mut Request, slot: u32, n: usize, la: usize) -> bool {
        let c = r.num_computed;
        // Released at `c` already in this call (`release_finished_windows`, with
        // nothing changed since): a second release would find nothing.
        if r.released_in != self.reqs.epoch() {
            self.release_unneeded(r, c);
        }
        if n == 0 && la == 0 {
            return true;
        }
        if r.phase == Phase::Queried && self.reads_state_of_this_step(r) {
            return false;
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
        }
        // Blocks each pool gives: the sum over its groups (the request fits a pool
        // several groups share when the sum does, vLLM's check for its shared pool).
        let np = self.pools.len();
        let mut pneed = [0usize; 8];
        let mut pneed_vec;
        let pneed: &mut [usize] = if np <= 8 {
            &mut pneed[..np]
        } else {
            pneed_vec = vec![0usize; np];
            &mut pneed_vec
        };
        for g in 0..ng {
            pneed[self.pool_of[g]] += need[g];
        }
        for p in 0..np {
            // Static pools: a count check. Elastic: may move whole free regions here.
            if pneed[p] > 0 && !self.make_room(p, pneed[p], pneed) {
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
            // Checked above: the pool has `need[g]` free blocks (with a shared pool,
            // the sum over groups), taken in group order.
            let _ = self.pools[self.pool_of[g]].allocate_into(need[g], table);
        }
        if self.record_events {
            self.drain_pool_events();
        }
        r.num_computed = e;
        r.phase = Phase::Running;
        if self.trims && n > 0 && !r.dirty && !self.shared {
            r.dirty = true;
            self.dirty.push((slot, r.id));
        }
        if self.caching && n > 0 {
            self.cache_full_blocks(r, c, e);
        }
        true
    }

    /// Whether `r`'s prefix hit (not run yet) starts from a state checkpoint that an
    /// allocation of this step cached: this step's forward has not written it yet.
    fn reads_state_of_this_step(&self, r: &Request) -> bool {
        r.num_computed > 0
            && self.groups.iter().enumerate().any(|(g, cfg)| {
                cfg.kind == GroupKind::State
                    && !self.states_this_step[g].is_empty()
                    && (r.num_computed / cfg.block_size)
                        .checked_sub(1)
                        .and_then(|k| r.tables[g].get(k))
                        .is_some_and(|b| self.states_this_step[g].contains(b))
            })
    }

    /// Cache the blocks that the tokens `[c, e)` of this step complete.
    fn cache_full_blocks(&mut self, r: &mut Request, c: usize, e: usize) {
        for s in 0..self.sizes.len() {
            // `allocate_slots` hashed these blocks already; this only guards the rule
            // that every block cached here has its hash.
            if e / self.sizes[s] > r.hashes[s].len() {
                r.ensure_hashes(s, self.sizes[s], e, self.root, &mut self.buf);
            }
        }
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
            if to > from + 1 {
                // Many blocks (a prefill chunk): their index slots load together.
                let pool = &self.pools[self.pool_of[g]];
                let hs = &r.hashes[self.size_of[g]];
                for k in from..to {
                    if let Some(&h) = hs.get(k) {
                        pool.prefetch_index(h ^ self.salt[g]);
                    }
                }
            }
            let mut run_start = usize::MAX;
            let check = cfg.kind == GroupKind::State && self.mode == MambaMode::Align;
            for k in from..to {
                let b = r.tables[g][k];
                // Entries from `num_cached` on were allocated by this request and never
                // cached (only this function caches, and it advances `num_cached`); an
                // align-mode state entry may be a checkpoint taken from a hit.
                let pool = &mut self.pools[self.pool_of[g]];
                let fresh = b != NULL_BLOCK && (!check || matches!(pool.block_hash(b), Ok(None)));
                debug_assert!(!fresh || pool.block_hash(b) == Ok(None));
                if fresh {
                    let h = r.hashes[self.size_of[g]][k];
                    // In use (held by this request) and unhashed. A shared pool's index
                    // is keyed per group (the group's salt).
                    pool.cache_held(b, h ^ self.salt[g]);
                    if let Some(o) = self.owner[self.pool_of[g]].get_mut(b as usize) {
                        *o = g as u32;
                    }
                    if cfg.kind == GroupKind::State {
                        self.states_this_step[g].insert(b);
                    }
                    if self.arena.is_some() {
                        // Recompute a hit on it saves: a state checkpoint unlocks its
                        // whole prefix, an attention block its own tokens.
                        let v = if cfg.kind == GroupKind::State {
                            (k + 1) * bs
                        } else {
                            bs
                        };
                        let v = v.min(u32::MAX as usize) as u32;
                        let _ = self.pools[self.pool_of[g]].set_block_value(b, v);
                        if cfg.kind == GroupKind::State {
                            self.anchor_checkpoint(r, g, b, (k + 1) * bs);
                        }
                    }
                    if cfg.kind == GroupKind::State {
                        self.checkpoint_cached(r, g, b, (k + 1) * bs);
                    }
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
}
