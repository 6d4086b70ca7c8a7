//! Elastic memory in the manager: granting floors, finding room for a group's blocks
//! (unowned regions first, then whole free regions of other groups: empty ones, ones
//! whose cached blocks are all less recently used than the group's own next victim
//! (the pools' release stamps, `tick_clock`), and, when the group cannot evict enough
//! of its own, the cheapest value per byte), and what an elastic manager reports. The mechanism and its trade-offs
//! are in `arena.rs`.

use super::Manager;
use crate::arena::Arena;
use crate::block_pool::NULL_BLOCK;
use crate::error::{Error, Result};
use crate::group_policy::{GroupKind, MambaMode};
use crate::request::Request;

/// Cumulative counters of an elastic manager.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ElasticStats {
    /// Regions handed to a group from the unowned remainder.
    pub grants: u64,
    /// Regions taken from one group and handed to another.
    pub moves: u64,
    /// Cached blocks evicted because their region changed owner.
    pub evicted_blocks: u64,
    /// State checkpoints dropped because the attention blocks they need were gone.
    pub orphans: u64,
}

/// State blocks a bounded orphan sweep looks at (see `make_room`).
const ORPHAN_SWEEP: usize = 64;

/// Growing groups (no floor) draw regions from the bottom of the arena, bounded groups
/// (floors granted first) from the top.
pub(super) fn from_bottom(floor: usize) -> bool {
    floor == 0
}

impl Manager {
    /// Grant every pool with a floor regions until it holds its floor (from the top, or
    /// from the bottom for a pool of a growing group). In this file `g`, `h` and
    /// `from` index pools (a pool serves one group, or every group of a page class).
    pub(super) fn grant_floors(&mut self) -> Result<()> {
        let floors: Vec<usize> = match self.arena.as_ref() {
            None => return Ok(()),
            Some(a) => (0..a.num_groups()).map(|g| a.floor(g)).collect(),
        };
        for (g, &floor) in floors.iter().enumerate() {
            // A bounded pool's floor span holds exactly its floor (`arena.rs`).
            if let Some(r) = self.arena.as_ref().and_then(|a| a.floor_span(g)) {
                self.grant(g, r);
            }
            while self.pools[g].num_present() < floor {
                let Some(r) = self.unowned_region(g) else {
                    return Err(Error::InvalidArgument(format!(
                        "arena cannot hold the floors: pool {g} gets {} of its {floor} blocks",
                        self.pools[g].num_present()
                    )));
                };
                self.grant(g, r);
            }
        }
        Ok(())
    }

    /// Set every pool's effective floor from per-group needs: `needs[g]` blocks that
    /// group `g`'s running requests (and those being admitted) can still hold at once,
    /// at most its planned floor (0 for a growing group). A pool's effective floor is
    /// the sum over its groups. Other pools take its grid regions only above it (the
    /// move rules of `make_room`), and it always holds at least that many blocks, so a
    /// request counted in it never starves for its blocks. A pool below its new floor
    /// takes unowned regions, then other pools' idle regions above their (new) floors,
    /// now (cached blocks there are evicted). Returns `Ok(false)`, changing nothing,
    /// when some pool cannot reach its new floor; bad input (wrong length, a need above
    /// the planned floor, a manager without an arena) is an error, nothing changed.
    pub fn set_floor_needs(&mut self, needs: &[usize]) -> Result<bool> {
        let Some(arena) = self.arena.as_ref() else {
            return Err(Error::InvalidArgument(
                "effective floors need an elastic manager (an arena)".into(),
            ));
        };
        let n = self.groups.len();
        if needs.len() != n {
            return Err(Error::InvalidArgument(format!(
                "set_floor_needs takes one need per group ({n}), got {}",
                needs.len()
            )));
        }
        if let Some(g) = (0..n).find(|&g| needs[g] > self.group_floor[g]) {
            return Err(Error::InvalidArgument(format!(
                "group {g}: need of {} blocks exceeds its planned floor of {}",
                needs[g], self.group_floor[g]
            )));
        }
        let np = self.pools.len();
        let mut want = vec![0usize; np];
        for (g, &need) in needs.iter().enumerate() {
            want[self.pool_of[g]] += need;
        }
        let present = |h: usize| self.pools[h].num_present();
        let short: Vec<usize> = (0..np).filter(|&h| present(h) < want[h]).collect();
        // Feasibility before anything changes: each short pool takes unowned regions
        // and idle grid regions of pools that are not short, above their new floors,
        // each region once.
        if !short.is_empty() {
            let mut spare: Vec<usize> = (0..np)
                .map(|h| present(h).saturating_sub(want[h]))
                .collect();
            let mut taken = vec![false; arena.num_regions()];
            for &p in &short {
                let mut gap = want[p] - present(p);
                for (r, took) in taken.iter_mut().enumerate() {
                    if gap == 0 {
                        break;
                    }
                    let (lo, hi) = arena.ids_in(p, r);
                    if *took || hi == lo || arena.pinned(r) {
                        continue;
                    }
                    match arena.owner(r) {
                        None => {}
                        Some(h) if h != p && !short.contains(&h) => {
                            let pool = &self.pools[h];
                            let blocks = pool.region_blocks(r) as usize;
                            if pool.region_in_use(r) > 0 || spare[h] < blocks {
                                continue;
                            }
                            spare[h] -= blocks;
                        }
                        Some(_) => continue,
                    }
                    *took = true;
                    gap = gap.saturating_sub((hi - lo) as usize);
                }
                if gap > 0 {
                    return Ok(false);
                }
            }
        }
        self.eff_floor = want;
        for &p in &short {
            while self.pools[p].num_present() < self.eff_floor[p] {
                if let Some(r) = self.unowned_region(p) {
                    self.grant(p, r);
                    self.elastic.grants += 1;
                    continue;
                }
                match self.best_reclaim(p, &[]) {
                    Some((h, r, _)) if self.move_region(h, p, r) => {}
                    _ => break,
                }
            }
            debug_assert!(self.pools[p].num_present() >= self.eff_floor[p]);
        }
        Ok(true)
    }

    /// Per pool: blocks it holds above its effective floor that no other pool could
    /// take now (free blocks in regions with a block in use, pinned regions, or beyond
    /// its slack): its floor may rise by this many blocks without taking memory from
    /// anyone. `obtainable_blocks` counts the rest of its slack for the other pools.
    pub fn held_spare(&self) -> Vec<usize> {
        let Some(arena) = self.arena.as_ref() else {
            return vec![0; self.pools.len()];
        };
        (0..self.pools.len())
            .map(|h| {
                let lent: usize = self
                    .lendable_regions(arena, h)
                    .iter()
                    .map(|&r| self.pools[h].region_blocks(r) as usize)
                    .sum();
                self.floor_slack(h) - lent
            })
            .collect()
    }

    /// Blocks pool `h` holds above its effective floor.
    fn floor_slack(&self, h: usize) -> usize {
        self.pools[h]
            .num_present()
            .saturating_sub(self.eff_floor[h])
    }

    /// The regions other pools may take from pool `h` now: idle (no block in use), not
    /// pinned, in its idle order, each while what it still holds above its effective
    /// floor covers the region's blocks.
    fn lendable_regions(&self, arena: &Arena, h: usize) -> Vec<usize> {
        let p = &self.pools[h];
        let mut spare = self.floor_slack(h);
        let mut out = Vec::new();
        for r in p.idle_regions().filter(|&r| !arena.pinned(r)) {
            let blocks = p.region_blocks(r) as usize;
            if spare >= blocks {
                spare -= blocks;
                out.push(r);
            }
        }
        out
    }

    /// Per pool: its effective floor (`set_floor_needs`; the planned floor until set).
    pub fn effective_floors(&self) -> &[usize] {
        &self.eff_floor
    }

    /// Rank of region `r` for group `g`'s allocation (lower is used first).
    fn rank_for(&self, g: usize, r: usize, n: usize) -> u32 {
        if self.bottom[g] {
            r as u32
        } else {
            (n - 1 - r) as u32
        }
    }

    /// The unowned region group `g` should take next (one holding at least one of its
    /// ids): the lowest for growing groups; for bounded ones the highest whole region
    /// (holding as many of its ids as any region), else the highest partial one, so a
    /// floor fills whole regions and a short top or bottom region stays with the
    /// growing groups (`arena_plan.py` plans the same).
    fn unowned_region(&self, g: usize) -> Option<usize> {
        let arena = self.arena.as_ref()?;
        let ids = |r: usize| {
            let (lo, hi) = arena.ids_in(g, r);
            (hi - lo) as usize
        };
        let got = if self.bottom[g] {
            arena.unowned_regions().find(|&r| ids(r) > 0)
        } else {
            let whole = arena.max_region_ids(g);
            let top = || arena.unowned_regions().rev();
            top()
                .find(|&r| ids(r) == whole)
                .or_else(|| top().find(|&r| ids(r) > 0))
        };
        #[cfg(debug_assertions)]
        {
            // The definition: the first such region in a scan of every region.
            let free = |r: &usize| arena.owner(*r).is_none();
            let mut all = 0..arena.num_regions();
            let want = if self.bottom[g] {
                all.find(|r| free(r) && ids(*r) > 0)
            } else {
                let whole = arena.max_region_ids(g);
                all.clone()
                    .rfind(|r| free(r) && ids(*r) == whole)
                    .or_else(|| all.rfind(|r| free(r) && ids(*r) > 0))
            };
            debug_assert_eq!(got, want);
        }
        got
    }

    fn grant(&mut self, g: usize, r: usize) {
        let Some(arena) = self.arena.as_ref() else {
            return;
        };
        let rank = self.rank_for(g, r, arena.num_regions());
        // The region is unowned, so none of its ids is present in any pool.
        if self.pools[g].add_region(r, rank).is_ok() {
            if let Some(a) = self.arena.as_mut() {
                a.set_owner(r, Some(g));
            }
        }
    }

    /// Take region `r` from its owner (all its blocks free) and give it to `g`.
    fn move_region(&mut self, from: usize, g: usize, r: usize) -> bool {
        let cached = {
            let p = &self.pools[from];
            match p.region_range(r) {
                Some((lo, hi)) => (lo..hi)
                    .filter(|&b| matches!(p.block_hash(b as i32), Ok(Some(_))))
                    .count() as u64,
                None => 0,
            }
        };
        if self.pools[from].remove_region(r).is_err() {
            return false;
        }
        if let Some(a) = self.arena.as_mut() {
            a.set_owner(r, None);
        }
        self.elastic.moves += 1;
        self.elastic.evicted_blocks += cached;
        self.grant(g, r);
        true
    }

    /// The region of another group that `g` may take now, with the lowest cached value
    /// per byte: every block free, the owner keeping its floor and the `keep` free
    /// blocks this request already counts on.
    fn best_reclaim(&self, g: usize, keep: &[usize]) -> Option<(usize, usize, f64)> {
        let arena = self.arena.as_ref()?;
        // Cheap test first (this runs at every allocation of a group whose pool is
        // full of cached blocks): some other group must hold blocks above its floor
        // and free blocks beyond the ones this request counts on.
        let gives = |h: usize| {
            let p = &self.pools[h];
            h != g
                && p.num_present() > self.eff_floor[h]
                && p.num_free() > keep.get(h).copied().unwrap_or(0)
        };
        if !(0..self.pools.len()).any(gives) {
            return None;
        }
        // Only regions with no block in use can move: each owner's idle regions,
        // cheapest cached value first (lowest id on a tie). The lowest value per byte
        // wins, the lowest region on a tie (as a scan of every region in order
        // chooses). A region holds at most `region_bytes`, so once a value over that
        // exceeds the best value per byte, no later region of that owner can match it.
        let full = arena.config().region_bytes as f64;
        let mut best: Option<(usize, usize, f64)> = None;
        for (h, p) in self.pools.iter().enumerate() {
            if !gives(h) {
                continue;
            }
            let floor = self.eff_floor[h];
            let kept = keep.get(h).copied().unwrap_or(0);
            // No region of `h` can go without breaking its floor or the kept blocks.
            let fewest = arena.min_region_ids(h);
            if p.num_present() < floor + fewest || p.num_free() < kept + fewest {
                continue;
            }
            for (value, r) in p.idle_regions_by_value() {
                if best.is_some_and(|(_, _, v)| value as f64 / full > v) {
                    break;
                }
                if arena.pinned(r) {
                    continue; // a floor span never moves
                }
                let (lo, hi) = arena.ids_in(g, r);
                if hi == lo {
                    continue;
                }
                let blocks = p.region_blocks(r) as usize;
                if p.num_present() < floor + blocks || p.num_free() < kept + blocks {
                    continue;
                }
                let (s, e) = arena.span(r);
                let vpb = value as f64 / (e - s) as f64;
                if best.is_none_or(|(_, br, v)| vpb < v || (vpb == v && r < br)) {
                    best = Some((h, r, vpb));
                }
                // A whole region (value per byte at its lower bound): every later one
                // of `h` holds more value (a larger quotient while values stay far
                // below 2^52), or as much at a higher id. Done with `h`.
                if vpb == value as f64 / full && value < 1 << 50 {
                    break;
                }
            }
        }
        #[cfg(debug_assertions)]
        debug_assert_eq!(best, self.best_reclaim_by_scan(g, keep));
        best
    }

    /// `best_reclaim` by reading every region in order (the definition it follows;
    /// debug builds check every answer against it).
    #[cfg(debug_assertions)]
    fn best_reclaim_by_scan(&self, g: usize, keep: &[usize]) -> Option<(usize, usize, f64)> {
        let arena = self.arena.as_ref()?;
        let mut best: Option<(usize, usize, f64)> = None;
        for r in 0..arena.num_regions() {
            let Some(h) = arena.owner(r) else { continue };
            if h == g || arena.pinned(r) {
                continue;
            }
            let (lo, hi) = arena.ids_in(g, r);
            if hi == lo {
                continue;
            }
            let p = &self.pools[h];
            if p.region_in_use(r) > 0 {
                continue;
            }
            let blocks = p.region_blocks(r) as usize;
            if p.num_present() < self.eff_floor[h] + blocks
                || p.num_free() < keep.get(h).copied().unwrap_or(0) + blocks
            {
                continue;
            }
            let (s, e) = arena.span(r);
            let vpb = p.region_value(r) as f64 / (e - s) as f64;
            if best.is_none_or(|(_, _, v)| vpb < v) {
                best = Some((h, r, vpb));
            }
        }
        best
    }

    /// Make `need` blocks of group `g` allocatable, moving memory if the arena allows:
    /// unowned regions first (so nothing cached is evicted while memory is idle), then
    /// whole free regions of other groups that hold nothing cached or only blocks less
    /// recently used than `g`'s next victim (the least recently used such region
    /// first); any region holding cached blocks when `g` cannot free enough blocks of
    /// its own (cheapest value per byte first). `keep[h]`: free blocks of group `h` this
    /// request already counts on. Returns whether `g` has them now.
    pub(super) fn make_room(&mut self, g: usize, need: usize, keep: &[usize]) -> bool {
        if self.arena.is_none() {
            return need <= self.pools[g].num_free();
        }
        if self.pools[g].num_uncached_free() >= need {
            return true;
        }
        // Slow path: first drop checkpoints that can no longer serve a hit anywhere
        // (their value is gone and their regions may empty). All of them when `g`
        // cannot even evict enough of its own cached blocks; otherwise the next
        // `ORPHAN_SWEEP` state blocks only: a group whose pool is full of cached blocks
        // comes here at every allocation, and a full sweep reads every state block.
        let limit = if self.pools[g].num_free() < need {
            usize::MAX
        } else {
            ORPHAN_SWEEP
        };
        self.drop_orphan_checkpoints(limit);
        while self.pools[g].num_uncached_free() < need {
            match self.unowned_region(g) {
                Some(r) => {
                    self.grant(g, r);
                    self.elastic.grants += 1;
                }
                None => break,
            }
        }
        loop {
            let pool = &self.pools[g];
            if pool.num_uncached_free() >= need {
                return true;
            }
            let short = pool.num_free() < need;
            // Not even an empty region moves while `g`'s next victim is uncached (`g`
            // has uncached free blocks left): early moves make the groups trade empty
            // regions back and forth (chat 0.860 vs 0.871 with the prompt-end rule of
            // `checkpoints.rs`). Decided before the search: no region changes it.
            if !short && pool.next_victim_value().unwrap_or(0) == 0 {
                break;
            }
            let Some((h, r, vpb)) = self.best_reclaim(g, keep) else {
                break;
            };
            // `g` can evict its own least recently used cached blocks instead: a region
            // holding anything cached stays with its owner. A move evicts the region's
            // cached blocks whatever their recency, and value per byte misprices them:
            // an attention block gates every hit deeper on its path (not just its own
            // tokens), and a checkpoint is worth nothing without the attention blocks
            // under it. Qwen3-Next, 16 GiB, whole traces: chat 0.726 -> 0.819, docqa
            // 0.953 -> 0.974 (the rule before: move when the region's value per byte
            // was under half of `g`'s next victim's; 192 moves evicted 17,224 blocks
            // on chat).
            let (h, r) = if short || vpb == 0.0 {
                (h, r)
            } else {
                // Unless every cached block of the region became free before `g`'s
                // next victim did: then the move evicts only blocks less recently used
                // than any `g` would evict instead. Both ways: a state region of
                // checkpoints nobody resumed goes to attention before attention cuts a
                // younger path; an attention region older than every free checkpoint
                // lies under none of them (a checkpoint's path is released with it or
                // later: a hit on it touches the path), so it serves no hybrid hit.
                // Qwen3-Next 16 GiB agentic --seed 1: 0.8585 -> 0.8958 (vllm 0.8860),
                // the state group no longer keeping half the arena; chat 0.8611 ->
                // 0.8597 (RESULTS.md, "Recency across groups").
                let before = pool.next_victim_stamp().unwrap_or(0);
                match self.stale_reclaim(g, keep, before) {
                    Some(hr) => hr,
                    None => break,
                }
            };
            // Nor an empty region whose free uncached blocks this request counts on in
            // `h` (a pool whose room was made first, or is made next): `h` would evict
            // cached blocks for them instead, or take the region straight back.
            let kept = keep.get(h).copied().unwrap_or(0);
            let (hp, lost) = (&self.pools[h], self.pools[h].region_uncached(r) as usize);
            if !short
                && kept > 0
                && hp.region_value(r) == 0
                && lost > 0
                && hp.num_uncached_free() < kept + lost
            {
                break;
            }
            if !self.move_region(h, g, r) {
                break;
            }
        }
        need <= self.pools[g].num_free()
    }

    /// Advance the clock the pools stamp released cached blocks with (once per request
    /// released: the blocks a request frees together share their recency).
    pub(super) fn tick_clock(&mut self) {
        self.clock += 1;
        for p in &mut self.pools {
            p.set_clock(self.clock);
        }
    }

    /// The idle region of another group that `g` may take now (the owner keeping its
    /// floor and the `keep` free blocks this request counts on) whose cached blocks all
    /// became free before `before` (`g`'s next victim did): the least recently used
    /// first, the lowest id on a tie.
    fn stale_reclaim(&self, g: usize, keep: &[usize], before: u64) -> Option<(usize, usize)> {
        let arena = self.arena.as_ref()?;
        let mut best: Option<(u64, usize, usize)> = None;
        for (h, p) in self.pools.iter().enumerate() {
            let kept = keep.get(h).copied().unwrap_or(0);
            if h == g || p.num_present() <= self.eff_floor[h] || p.num_free() <= kept {
                continue;
            }
            for r in p.idle_regions() {
                let t = p.region_newest(r);
                if t >= before || best.is_some_and(|(bt, _, _)| bt <= t) || arena.pinned(r) {
                    continue;
                }
                let (lo, hi) = arena.ids_in(g, r);
                let blocks = p.region_blocks(r) as usize;
                if hi == lo
                    || p.num_present() < self.eff_floor[h] + blocks
                    || p.num_free() < kept + blocks
                {
                    continue;
                }
                best = Some((t, h, r));
            }
        }
        best.map(|(_, h, r)| (h, r))
    }

    /// Before `r` releases its blocks: in a model with checkpointing state groups, its
    /// cached attention blocks at or beyond the deepest checkpoint every state group
    /// still caches on its prefix can never serve a hit (a hit needs a checkpoint at
    /// exactly its end, and a request that recomputes from that checkpoint writes blocks
    /// of its own), so the ones only `r` holds lose their hashes now and are the first
    /// memory reused: they cost nothing to evict, and their regions can empty.
    pub(super) fn drop_unreachable_blocks(&mut self, r: &Request) {
        if !self.caching || self.mode != MambaMode::Align {
            return;
        }
        let mut deepest = usize::MAX;
        for g in 0..self.groups.len() {
            let cfg = self.groups[g];
            if cfg.kind != GroupKind::State {
                continue;
            }
            let bs = cfg.block_size;
            let hs = &r.hashes[self.size_of[g]];
            let mut k = hs.len().min(r.num_computed / bs);
            let pool = &self.pools[self.pool_of[g]];
            while k > 0 && pool.lookup_one(hs[k - 1] ^ self.salt[g]).is_none() {
                k -= 1;
            }
            deepest = deepest.min(k * bs);
        }
        if deepest == usize::MAX {
            return;
        }
        for g in 0..self.groups.len() {
            let cfg = self.groups[g];
            if matches!(
                cfg.kind,
                GroupKind::State | GroupKind::CrossAttention { .. }
            ) {
                continue;
            }
            let from = deepest / cfg.block_size;
            let table = &r.tables[g];
            let pool = &mut self.pools[self.pool_of[g]];
            for &b in table.iter().skip(from) {
                // Only blocks this request alone holds: another holder may still grow
                // a checkpoint past them.
                if b != NULL_BLOCK && pool.ref_count(b) == Ok(1) {
                    let _ = pool.evict(&[b]);
                }
            }
        }
    }

    /// Remember, for the state checkpoint just cached in block `b` of group `g` after
    /// `tokens` tokens of `r`, the hash of the attention block that ends there: a hit
    /// at `tokens` needs it (and every block before it) cached.
    pub(super) fn anchor_checkpoint(&mut self, r: &Request, g: usize, b: i32, tokens: usize) {
        let Some(a) = self.anchor_group else {
            return;
        };
        let ba = self.groups[a].block_size;
        let hs = &r.hashes[self.size_of[a]];
        let k = tokens / ba;
        if tokens % ba == 0 && k >= 1 && k <= hs.len() {
            if let Some(slot) = self.anchors[g].get_mut(b as usize) {
                *slot = Some(hs[k - 1]);
            }
        }
    }

    /// Evict free cached state checkpoints whose anchoring attention block is no longer
    /// cached: they cannot produce a hybrid hit, so their memory is free for the taking
    /// (and their region may empty). Looks at up to `limit` state blocks, resuming where
    /// the previous sweep stopped (`usize::MAX`: all of them).
    fn drop_orphan_checkpoints(&mut self, limit: usize) {
        let Some(a) = self.anchor_group else {
            return;
        };
        let ng = self.groups.len();
        let total: usize = self.anchors.iter().map(Vec::len).sum();
        let mut budget = limit.min(total);
        let (mut g, mut b) = self.orphan_cursor;
        let mut dead = Vec::new();
        while budget > 0 {
            if g >= ng {
                g = 0;
                b = 0;
            }
            let n = self.anchors[g].len();
            if b >= n {
                if !dead.is_empty() {
                    let _ = self.pools[self.pool_of[g]].evict(&dead);
                    self.elastic.orphans += dead.len() as u64;
                    dead.clear();
                }
                g += 1;
                b = 0;
                continue;
            }
            budget -= 1;
            let i = b;
            b += 1;
            let Some(h) = self.anchors[g][i] else {
                continue;
            };
            let pool = &self.pools[self.pool_of[g]];
            if !matches!(pool.block_hash(i as i32), Ok(Some(_))) {
                self.anchors[g][i] = None; // the checkpoint itself is gone
                continue;
            }
            let anchor = self.pools[self.pool_of[a]].lookup_one(h ^ self.salt[a]);
            if pool.ref_count(i as i32) == Ok(0) && anchor.is_none() {
                dead.push(i as i32);
                self.anchors[g][i] = None;
            }
        }
        if !dead.is_empty() && g < ng {
            let _ = self.pools[self.pool_of[g]].evict(&dead);
            self.elastic.orphans += dead.len() as u64;
        }
        self.orphan_cursor = (g, b);
    }

    // --- reports -------------------------------------------------------------------

    /// The arena of an elastic manager (`None` for static pools).
    pub fn arena(&self) -> Option<&Arena> {
        self.arena.as_ref()
    }

    pub fn elastic_stats(&self) -> ElasticStats {
        self.elastic
    }

    /// Tokens a prompt must compute beyond its hit, up to its last checkpoint, for that
    /// checkpoint to be kept (elastic arenas, `checkpoints.rs`; 0: always kept). A
    /// scheduler need not end a prefill chunk there for a checkpoint otherwise.
    pub fn prompt_keep_min(&self) -> usize {
        self.prompt_keep_min
    }

    /// Per group: blocks it could allocate now, counting memory it could take from the
    /// unowned remainder and from other groups' whole free regions above their floors.
    /// Equal to the pool's free count for static pools.
    pub fn obtainable_blocks(&self) -> Vec<usize> {
        let Some(arena) = self.arena.as_ref() else {
            // Static or shared pools: what the pool each group draws from has free.
            return (0..self.groups.len())
                .map(|g| self.pools[self.pool_of[g]].num_free())
                .collect();
        };
        let ng = self.pools.len();
        // Another owner's regions count only with no block in use (its idle set; a
        // granted region always holds ids of its owner), lowest first while what it
        // holds above its floor lasts.
        let lendable: Vec<Vec<usize>> = (0..ng).map(|h| self.lendable_regions(arena, h)).collect();
        let per_pool: Vec<usize> = (0..ng)
            .map(|g| {
                let ids = |r: usize| {
                    let (lo, hi) = arena.ids_in(g, r);
                    (hi - lo) as usize
                };
                let mut n = self.pools[g].num_free();
                n += arena.unowned_regions().map(ids).sum::<usize>();
                for (h, regions) in lendable.iter().enumerate() {
                    if h != g {
                        n += regions.iter().map(|&r| ids(r)).sum::<usize>();
                    }
                }
                n
            })
            .collect();
        #[cfg(debug_assertions)]
        debug_assert_eq!(per_pool, self.obtainable_by_scan());
        self.pool_of.iter().map(|&p| per_pool[p]).collect()
    }

    /// `obtainable_blocks` per pool by reading every region in order (debug builds
    /// check it).
    #[cfg(debug_assertions)]
    fn obtainable_by_scan(&self) -> Vec<usize> {
        let Some(arena) = self.arena.as_ref() else {
            return vec![];
        };
        let ng = self.pools.len();
        let slack: Vec<usize> = (0..ng).map(|h| self.floor_slack(h)).collect();
        (0..ng)
            .map(|g| {
                let mut spare = slack.clone();
                let mut n = self.pools[g].num_free();
                for r in 0..arena.num_regions() {
                    let (lo, hi) = arena.ids_in(g, r);
                    let ids = (hi - lo) as usize;
                    match arena.owner(r) {
                        None => n += ids,
                        Some(h) if h != g => {
                            let blocks = self.pools[h].region_blocks(r) as usize;
                            if self.pools[h].region_in_use(r) == 0 && spare[h] >= blocks {
                                spare[h] -= blocks;
                                n += ids;
                            }
                        }
                        _ => {}
                    }
                }
                n
            })
            .collect()
    }

    /// Elastic invariants: pools hold exactly the regions the arena says they own, every
    /// present id lies inside a region its pool owns, floors (per pool) are held.
    pub(super) fn check_arena(&self) -> std::result::Result<(), String> {
        let Some(arena) = self.arena.as_ref() else {
            return Ok(());
        };
        for r in 0..arena.num_regions() {
            for (g, p) in self.pools.iter().enumerate() {
                let owns = arena.owner(r) == Some(g);
                let (lo, hi) = arena.ids_in(g, r);
                let backed = p.region_blocks(r) as usize;
                if owns != (backed > 0) && hi > lo {
                    return Err(format!(
                        "region {r}: owner {:?} but pool {g} backs {backed} blocks",
                        arena.owner(r)
                    ));
                }
                if owns && backed != (hi - lo) as usize {
                    return Err(format!("region {r}: pool {g} backs part of it"));
                }
            }
        }
        for (g, p) in self.pools.iter().enumerate() {
            if self.eff_floor[g] > arena.floor(g) {
                return Err(format!(
                    "pool {g}: effective floor {} above its planned floor {}",
                    self.eff_floor[g],
                    arena.floor(g)
                ));
            }
            if p.num_present() < self.eff_floor[g] {
                return Err(format!(
                    "pool {g} holds {} blocks, below its floor {}",
                    p.num_present(),
                    self.eff_floor[g]
                ));
            }
        }
        Ok(())
    }
}
