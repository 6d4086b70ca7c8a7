//! Prefix hits: each group's longest servable prefix, the fixed point where all agree,
//! and taking the hit blocks.

use std::time::Instant;

use super::{unresolved, Manager, UNKNOWN};
use crate::block_pool::NULL_BLOCK;
use crate::error::{Error, Result};
use crate::group_policy::{GroupKind, MambaMode};
use crate::kv_events::KvEvent;
use crate::prefix_hash::{hash_plain_pair, is_plain};
use crate::request::{Phase, Request};

/// Most index slots a lookup prefetches per group: the blocks just below its limit,
/// where sliding-window and state groups look from (a prompt of up to this many blocks
/// is covered whole).
const PREFETCH_BLOCKS: usize = 512;

impl Manager {
    // --- prefix hits ---------------------------------------------------------------

    /// For each request: the longest prefix every group can serve from the cache. The
    /// request takes a reference on those blocks and its computed count becomes the hit.
    /// A request must not be running (preempt it first); a repeated query replaces the
    /// previous hit.
    pub fn get_computed_tokens(&mut self, ids: &[i64]) -> Result<Vec<i64>> {
        let slots = self.reqs.resolve(ids).map_err(unresolved)?;
        self.reqs.prefetch(&slots);
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
        // The clock is read once per phase of the call, not per request: hash every
        // request's prompt blocks first (pure: only its tokens decide them), then look
        // the prefixes up.
        let t0 = Instant::now();
        if self.caching {
            self.hash_prompts(&slots);
        }
        let t1 = Instant::now();
        self.stats.ns_hash += (t1 - t0).as_nanos() as u64;
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
            r.hit_tokens = h;
            r.phase = Phase::Queried;
            out.push(h as i64);
            self.reqs.put(s, r);
        }
        self.stats.ns_lookup += t1.elapsed().as_nanos() as u64;
        Ok(out)
    }

    /// Hash the blocks of the requests' known tokens but the last (what a lookup can
    /// hit). Requests with plain extra keys go two at a time (`hash_plain_pair`: two
    /// independent chains overlap their latencies); the rest one by one. The same
    /// hashes either way.
    fn hash_prompts(&mut self, slots: &[u32]) {
        for (si, &bs) in self.sizes.iter().enumerate() {
            let mut waiting: Option<(u32, Box<Request>)> = None;
            for &s in slots {
                let Some(mut r) = self.reqs.take(s) else {
                    continue;
                };
                let cap = r.tokens.len().saturating_sub(1);
                if cap / bs <= r.hashes[si].len() {
                    self.reqs.put(s, r);
                    continue;
                }
                if !is_plain(&r.extra, bs) {
                    r.ensure_hashes(si, bs, cap, self.root, &mut self.buf);
                    self.reqs.put(s, r);
                    continue;
                }
                match waiting.take() {
                    None => waiting = Some((s, r)),
                    Some((s0, mut r0)) => {
                        let cap0 = r0.tokens.len().saturating_sub(1);
                        hash_plain_pair(
                            r0.plain_chain(si, bs, cap0, self.root),
                            r.plain_chain(si, bs, cap, self.root),
                            bs,
                        );
                        self.reqs.put(s0, r0);
                        self.reqs.put(s, r);
                    }
                }
            }
            if let Some((s, mut r)) = waiting {
                let cap = r.tokens.len().saturating_sub(1);
                r.ensure_hashes(si, bs, cap, self.root, &mut self.buf);
                self.reqs.put(s, r);
            }
        }
    }

    /// The agreed hit of `r` (its blocks hashed up to `num_tokens - 1` already).
    fn find_and_take_hit(&mut self, r: &mut Request) -> usize {
        let n = r.tokens.len();
        self.stats.queries += 1;
        self.stats.query_tokens += n as u64;
        if !self.caching || n <= 1 {
            return 0;
        }
        let cap = n - 1;
        for g in 0..self.groups.len() {
            let m = &mut self.memo[g];
            m.clear();
            m.resize(cap / self.groups[g].block_size, UNKNOWN);
            // The lookups below probe one index slot per block, one after another:
            // start loading the slots first, so their cache misses overlap.
            if !matches!(self.groups[g].kind, GroupKind::CrossAttention { .. }) {
                let pool = &self.pools[self.pool_of[g]];
                let hs = &r.hashes[self.size_of[g]];
                let k = m.len().min(hs.len());
                for &h in &hs[k.saturating_sub(PREFETCH_BLOCKS)..k] {
                    pool.prefetch_index(h ^ self.salt[g]);
                }
            }
        }
        let ng = self.groups.len();
        let mut own = vec![0usize; ng];
        for i in 0..ng {
            let g = self.hit_order[i];
            own[g] = self.serve(g, r, cap, false);
        }
        let mut h = own.iter().copied().min().unwrap_or(0);
        loop {
            let mut nh = h;
            for i in 0..ng {
                let g = self.hit_order[i];
                nh = self.serve(g, r, nh, false);
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
        // The boundary only counts prefixes a group holds cached blocks for: a chunked
        // local group serves a chunk start, and cross attention any prefix, with nothing
        // cached, which is no evidence that an earlier request shared the prefix.
        // Backed claims never exceed plain ones, so they are only needed past `h`.
        let mut longest = 0;
        if own.iter().any(|&o| o > h) {
            for g in 0..ng {
                longest = longest.max(self.serve(g, r, cap, true));
            }
        }
        r.prefix_boundary = if longest > h { longest } else { 0 };
        if r.prefix_boundary > 0 {
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
        let b = self.pools[self.pool_of[g]]
            .lookup_one(h ^ self.salt[g])
            .unwrap_or(-1);
        self.memo[g][k] = b;
        b
    }

    /// The longest prefix `h <= limit` group `g` alone can serve for `r`. With `backed`,
    /// only prefixes whose last block (the one ending at `h`) the group holds cached.
    fn serve(&mut self, g: usize, r: &Request, limit: usize, backed: bool) -> usize {
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
                let lo_of = |k: usize| {
                    let lo = cfg.first_needed_token(k * bs) / bs;
                    if backed {
                        lo.min(k - 1)
                    } else {
                        lo
                    }
                };
                longest_window(kmax, lo_of, |j| self.look(g, r, j) >= 0) * bs
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
            // Encoder outputs are not prefix-cached: any prefix, none of it backed.
            GroupKind::CrossAttention { .. } => {
                if backed {
                    0
                } else {
                    limit
                }
            }
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
            // looked-up block exists (>= 1); touch validates ids anyway. A state group
            // touches only the checkpoint it consumes (entry `k - 1`), never its
            // ancestors: they are not refreshed by a hit past them.
            let _ = self.pools[self.pool_of[g]].touch(&table[lo..]);
            r.tables[g] = table;
            r.first_live[g] = lo;
            r.num_cached[g] = k;
            if cfg.kind == GroupKind::State && k >= 1 && self.ckpt[g].is_some() {
                self.checkpoint_hit(r, g, k);
            }
        }
    }

    /// Per request, from its last prefix lookup: the longest prefix some single group
    /// could serve from blocks it holds cached (the block ending there among them) when
    /// it is longer than the agreed hit (else 0). A scheduler that
    /// ends a prefill chunk exactly there lets the lagging group (a state group in
    /// align mode, a sliding window) cache that position, so later requests sharing the
    /// prefix hit all of it.
    pub fn shared_prefix_boundary(&self, ids: &[i64]) -> Result<Vec<i64>> {
        ids.iter()
            .map(|&id| self.request(id).map(|r| r.prefix_boundary as i64))
            .collect()
    }
}

/// The largest `k <= kmax` whose window, blocks `[lo(k), k)`, are all cached (`hit`),
/// or 0. `lo` must never decrease with `k` (a sliding window's or a local chunk's first
/// needed block), so a miss at block `j` rules out every candidate whose window holds
/// it: all of `(j, k]`. Each candidate's window is probed at its lowest block first (a
/// miss there rules out a whole window's worth of candidates at once: an uncached tail
/// costs one probe per window, not one per block), then at its highest; a hit below a
/// miss is narrowed by bisection to a miss just above a hit, which rules out every
/// candidate down to it. Only a window hit at both ends is checked block by block. The
/// answer is that of a plain top-down scan (`hit` is a pure lookup: only the number of
/// probes changes; `tests::window_scan_matches_a_plain_scan`).
fn longest_window(
    kmax: usize,
    lo: impl Fn(usize) -> usize,
    mut hit: impl FnMut(usize) -> bool,
) -> usize {
    let mut k = kmax;
    'candidates: while k > 0 {
        let lo = lo(k);
        if lo < k && !hit(lo) {
            k = lo;
            continue;
        }
        if k - 1 > lo && !hit(k - 1) {
            // hit(a), miss at b, a < b.
            let (mut a, mut b) = (lo, k - 1);
            while b - a > 1 {
                let m = a + (b - a) / 2;
                if hit(m) {
                    a = m;
                } else {
                    b = m;
                }
            }
            k = b;
            continue;
        }
        let mut j = k - 1;
        while j > lo + 1 {
            j -= 1;
            if !hit(j) {
                // Every candidate whose window holds block j fails too.
                k = j;
                continue 'candidates;
            }
        }
        return k;
    }
    0
}

#[cfg(test)]
mod window_tests {
    use super::longest_window;

    /// The plain scan `longest_window` replaces: every candidate from the top, its
    /// window checked block by block.
    fn plain(kmax: usize, lo: impl Fn(usize) -> usize, hit: impl Fn(usize) -> bool) -> usize {
        (1..=kmax)
            .rev()
            .find(|&k| (lo(k)..k).all(&hit))
            .unwrap_or(0)
    }

    #[test]
    fn window_scan_matches_a_plain_scan() {
        let mut rnd = crate::test_rng::xorshift(0x2545_F491);
        for _ in 0..20_000 {
            let kmax = rnd(80) as usize;
            let w = 1 + rnd(12) as usize;
            let chunked = rnd(3) == 0;
            let backed = rnd(2) == 0;
            let density = rnd(101);
            let cached: Vec<bool> = (0..kmax).map(|_| rnd(100) < density).collect();
            // A window of `w` blocks, or local chunks of `w` blocks; `backed` keeps at
            // least the block below `k`.
            let lo = |k: usize| {
                let l = if chunked {
                    k / w * w
                } else {
                    k.saturating_sub(w)
                };
                if backed {
                    l.min(k - 1)
                } else {
                    l
                }
            };
            let mut probes = 0;
            let fast = longest_window(kmax, lo, |j| {
                probes += 1;
                cached[j]
            });
            assert_eq!(fast, plain(kmax, lo, |j| cached[j]), "{cached:?} w={w}");
            assert!(probes <= 3 * kmax + 8, "{probes} probes for {kmax} blocks");
        }
    }
}
