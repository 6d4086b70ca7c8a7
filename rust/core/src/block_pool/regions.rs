//! Region bookkeeping of an elastic pool (see `arena.rs` for the mechanism).
//!
//! In an elastic pool only the ids whose bytes lie inside an arena region this group
//! owns are *present*; the others are absent (reference count 0, no hash, not in the
//! free queue) until their region is granted. Per region the pool counts the blocks in
//! use and the value of its cached blocks (tokens of recompute they save), so the
//! manager can find whole regions to hand to another group, cheapest first. Free
//! uncached blocks are also kept on one list per region, and allocation takes them
//! from the best-ranked region first: live blocks pack into a group's preferred
//! regions and its frontier regions drain, so whole regions become free.

use std::collections::BTreeSet;

use super::NIL;

#[derive(Debug, Clone)]
pub(crate) struct Regions {
    /// Per block: its region (NIL: the null block, or an id straddling a region edge).
    pub region_of: Vec<u32>,
    /// Per block: backed by a region this group owns now.
    pub present: Vec<bool>,
    /// Per block: value of its cached content (0 when uncached).
    pub value: Vec<u32>,
    /// Per block: links in its region's list of free uncached blocks.
    pub uprev: Vec<u32>,
    pub unext: Vec<u32>,
    /// Per region: head of the free-uncached list, its length, blocks in use, present
    /// blocks, summed value of cached blocks, allocation rank (lower first) and id range.
    pub uhead: Vec<u32>,
    pub ucount: Vec<u32>,
    pub in_use: Vec<u32>,
    pub blocks: Vec<u32>,
    pub cached_value: Vec<u64>,
    pub rank: Vec<u32>,
    pub range: Vec<(u32, u32)>,
    /// `(rank, region)` of every region with a free uncached block.
    pub ready: BTreeSet<(u32, u32)>,
    pub num_uncached_free: usize,
    /// Bit `r`: region `r` is present with no block in use (the regions the manager may
    /// hand to another group), so a search for one reads only these.
    pub idle: Vec<u64>,
    /// `(cached value, region)` of every idle region: the cheapest to empty first.
    pub idle_by_value: BTreeSet<(u64, u32)>,
    /// The owner's clock (`BlockPool::set_clock`): release stamps are read from it.
    pub clock: u64,
    /// Per block: the clock when it last became free while cached (its recency).
    pub stamp: Vec<u64>,
    /// Per region: the latest such stamp of any of its blocks since it was granted (an
    /// upper bound on the recency of the cached blocks it holds).
    pub newest: Vec<u64>,
}

impl Regions {
    pub fn new(region_of: Vec<u32>, num_regions: usize) -> Self {
        let n = region_of.len();
        let mut range = vec![(0u32, 0u32); num_regions];
        let mut seen = vec![false; num_regions];
        for (b, &r) in region_of.iter().enumerate() {
            if r == NIL {
                continue;
            }
            let e = &mut range[r as usize];
            if !seen[r as usize] {
                *e = (b as u32, b as u32 + 1);
                seen[r as usize] = true;
            } else {
                e.1 = b as u32 + 1;
            }
        }
        Regions {
            region_of,
            present: vec![false; n],
            value: vec![0; n],
            uprev: vec![NIL; n],
            unext: vec![NIL; n],
            uhead: vec![NIL; num_regions],
            ucount: vec![0; num_regions],
            in_use: vec![0; num_regions],
            blocks: vec![0; num_regions],
            cached_value: vec![0; num_regions],
            rank: vec![0; num_regions],
            range,
            ready: BTreeSet::new(),
            num_uncached_free: 0,
            idle: vec![0; num_regions.div_ceil(64)],
            idle_by_value: BTreeSet::new(),
            clock: 0,
            stamp: vec![0; n],
            newest: vec![0; num_regions],
        }
    }

    pub fn is_idle(&self, r: usize) -> bool {
        self.idle[r / 64] >> (r % 64) & 1 == 1
    }

    /// Mark region `r` idle (present, nothing in use) or not.
    pub fn set_idle(&mut self, r: usize, idle: bool) {
        if self.is_idle(r) == idle {
            return;
        }
        let (w, bit) = (r / 64, 1u64 << (r % 64));
        let key = (self.cached_value[r], r as u32);
        if idle {
            self.idle[w] |= bit;
            self.idle_by_value.insert(key);
        } else {
            self.idle[w] &= !bit;
            self.idle_by_value.remove(&key);
        }
    }

    /// Region `r`'s cached value becomes `v` (its key in `idle_by_value` follows).
    fn set_cached_value(&mut self, r: usize, v: u64) {
        let old = std::mem::replace(&mut self.cached_value[r], v);
        if old != v && self.is_idle(r) {
            self.idle_by_value.remove(&(old, r as u32));
            self.idle_by_value.insert((v, r as u32));
        }
    }

    /// The idle regions, lowest first.
    pub fn idle_regions(&self) -> impl Iterator<Item = usize> + '_ {
        self.idle.iter().enumerate().flat_map(|(w, &bits)| {
            let mut rest = bits;
            std::iter::from_fn(move || {
                (rest != 0).then(|| {
                    let t = rest.trailing_zeros() as usize;
                    rest &= rest - 1;
                    w * 64 + t
                })
            })
        })
    }

    /// Put free uncached block `b` on its region's list.
    pub fn add_uncached(&mut self, b: u32) {
        let r = self.region_of[b as usize];
        if r == NIL {
            return;
        }
        let ri = r as usize;
        let h = self.uhead[ri];
        self.uprev[b as usize] = NIL;
        self.unext[b as usize] = h;
        if h != NIL {
            self.uprev[h as usize] = b;
        }
        self.uhead[ri] = b;
        if self.ucount[ri] == 0 {
            self.ready.insert((self.rank[ri], r));
        }
        self.ucount[ri] += 1;
        self.num_uncached_free += 1;
    }

    /// Take block `b` off its region's free-uncached list (it must be on it).
    pub fn remove_uncached(&mut self, b: u32) {
        let r = self.region_of[b as usize];
        if r == NIL {
            return;
        }
        let ri = r as usize;
        let (p, nx) = (self.uprev[b as usize], self.unext[b as usize]);
        if p == NIL {
            self.uhead[ri] = nx;
        } else {
            self.unext[p as usize] = nx;
        }
        if nx != NIL {
            self.uprev[nx as usize] = p;
        }
        self.uprev[b as usize] = NIL;
        self.unext[b as usize] = NIL;
        self.ucount[ri] -= 1;
        if self.ucount[ri] == 0 {
            self.ready.remove(&(self.rank[ri], r));
        }
        self.num_uncached_free -= 1;
    }

    /// The free uncached block allocation should take next: from the best-ranked region.
    pub fn best_uncached(&self) -> Option<u32> {
        self.ready
            .first()
            .map(|&(_, r)| self.uhead[r as usize])
            .filter(|&b| b != NIL)
    }

    pub fn used(&mut self, b: u32) {
        let r = self.region_of[b as usize];
        if r != NIL {
            let ri = r as usize;
            if self.in_use[ri] == 0 {
                self.set_idle(ri, false);
            }
            self.in_use[ri] += 1;
        }
    }

    /// Block `b` became free; `cached`: it keeps a hash (its release is stamped).
    pub fn released(&mut self, b: u32, cached: bool) {
        let r = self.region_of[b as usize];
        if cached {
            self.stamp[b as usize] = self.clock;
        }
        if r != NIL {
            let ri = r as usize;
            if cached {
                self.newest[ri] = self.clock;
            }
            self.in_use[ri] -= 1;
            if self.in_use[ri] == 0 {
                self.set_idle(ri, true);
            }
        }
    }

    /// Block `b` lost its hash: its value leaves its region's sum.
    pub fn uncache(&mut self, b: u32) {
        let r = self.region_of[b as usize];
        let v = std::mem::take(&mut self.value[b as usize]);
        if r != NIL {
            let ri = r as usize;
            self.set_cached_value(ri, self.cached_value[ri] - v as u64);
        }
    }

    /// Set the value of cached block `b`.
    pub fn set_value(&mut self, b: u32, v: u32) {
        let r = self.region_of[b as usize];
        let old = std::mem::replace(&mut self.value[b as usize], v);
        if r != NIL {
            let ri = r as usize;
            self.set_cached_value(ri, self.cached_value[ri] - old as u64 + v as u64);
        }
    }
}
