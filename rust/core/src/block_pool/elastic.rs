//! The elastic side of `BlockPool`: a pool over a group's view of the arena whose ids
//! are backed region by region (`add_region` / `remove_region`), with the per-region
//! counts and cached-block values the manager uses to choose which region to empty
//! (the bookkeeping itself is in `regions.rs`).

use super::{try_vec, BlockId, BlockPool, HashIndex, Regions, FREE_META, NIL};
use crate::error::{Error, Result};

impl BlockPool {
    /// An elastic pool over a group's whole view of the arena: `region_of[b]` is the
    /// region holding id `b` (`u32::MAX` for the null block and ids that straddle a
    /// region edge). Every id starts absent; `add_region` backs a region's ids.
    pub fn new_elastic(region_of: Vec<u32>, num_regions: usize) -> Result<Self> {
        let n = region_of.len();
        if n == 0 || n > i32::MAX as usize {
            return Err(Error::InvalidArgument(format!(
                "an elastic pool needs 1..=2**31-1 block ids, got {n}"
            )));
        }
        if region_of[0] != NIL {
            return Err(Error::InvalidArgument(
                "the null block belongs to no region".into(),
            ));
        }
        if let Some(&r) = region_of
            .iter()
            .find(|&&r| r != NIL && r as usize >= num_regions)
        {
            return Err(Error::InvalidArgument(format!(
                "region {r} is outside the arena's {num_regions} regions"
            )));
        }
        let mut pool = BlockPool::new(1)?;
        pool.m = try_vec(n, FREE_META)?;
        pool.hash = try_vec(n, 0)?;
        pool.index = HashIndex::with_capacity(n - 1);
        pool.num_present = 0;
        pool.regions = Some(Box::new(Regions::new(region_of, num_regions)));
        Ok(pool)
    }

    /// Whether this pool's ids are backed region by region (an elastic pool).
    pub fn is_elastic(&self) -> bool {
        self.regions.is_some()
    }

    /// Elastic pools: the id range `[lo, hi)` of region `r` in this pool's view.
    pub fn region_range(&self, r: usize) -> Option<(u32, u32)> {
        self.regions.as_ref().and_then(|g| g.range.get(r).copied())
    }

    /// Elastic pools: blocks in use in region `r` (0 for a static pool or a bad region).
    pub fn region_in_use(&self, r: usize) -> u32 {
        self.regions
            .as_ref()
            .and_then(|g| g.in_use.get(r).copied())
            .unwrap_or(0)
    }

    /// Elastic pools: free uncached blocks in region `r` (0 for a static pool).
    pub fn region_uncached(&self, r: usize) -> u32 {
        self.regions
            .as_ref()
            .and_then(|g| g.ucount.get(r).copied())
            .unwrap_or(0)
    }

    /// Elastic pools: the regions this pool holds with no block in use, lowest first
    /// (none for a static pool).
    pub fn idle_regions(&self) -> impl Iterator<Item = usize> + '_ {
        self.regions.iter().flat_map(|g| g.idle_regions())
    }

    /// Elastic pools: `(cached value, region)` of the regions this pool holds with no
    /// block in use, cheapest first (lowest region on a tie).
    pub fn idle_regions_by_value(&self) -> impl Iterator<Item = (u64, usize)> + '_ {
        self.regions
            .iter()
            .flat_map(|g| g.idle_by_value.iter().map(|&(v, r)| (v, r as usize)))
    }

    /// Elastic pools: present blocks of region `r` (0 unless this pool holds it).
    pub fn region_blocks(&self, r: usize) -> u32 {
        self.regions
            .as_ref()
            .and_then(|g| g.blocks.get(r).copied())
            .unwrap_or(0)
    }

    /// Elastic pools: summed value of the cached blocks of region `r`.
    pub fn region_value(&self, r: usize) -> u64 {
        self.regions
            .as_ref()
            .and_then(|g| g.cached_value.get(r).copied())
            .unwrap_or(0)
    }

    /// Elastic pools: value of block `b`'s cached content (0 when uncached or static).
    pub fn block_value(&self, b: BlockId) -> u32 {
        self.regions
            .as_ref()
            .and_then(|g| g.value.get(b as usize).copied())
            .unwrap_or(0)
    }

    /// Value of the cached block allocation would evict next (the free queue's head),
    /// if the head is a cached block.
    pub fn next_victim_value(&self) -> Option<u32> {
        let b = self.head;
        if b == NIL || !self.m[b as usize].has_hash {
            return None;
        }
        Some(self.block_value(b as BlockId))
    }

    /// Elastic pools: the clock that stamps blocks becoming free while cached from now
    /// on (the manager's, shared by its pools, so recency compares across groups). It
    /// should not go back. No-op on a static pool.
    pub fn set_clock(&mut self, t: u64) {
        if let Some(g) = self.regions.as_mut() {
            g.clock = t;
        }
    }

    /// Elastic pools: when the cached block allocation would evict next (the free
    /// queue's head) became free, if the head is a cached block.
    pub fn next_victim_stamp(&self) -> Option<u64> {
        let b = self.head;
        if b == NIL || !self.m[b as usize].has_hash {
            return None;
        }
        self.regions.as_ref().map(|g| g.stamp[b as usize])
    }

    /// Elastic pools: free cached block `b` counts as used now (its stamp and its
    /// region's latest stamp become the clock). Anything else is left alone.
    pub fn restamp(&mut self, b: BlockId) {
        let ok = b > 0
            && self
                .m
                .get(b as usize)
                .is_some_and(|m| m.ref_cnt == 0 && m.has_hash);
        if let Some(g) = self.regions.as_mut().filter(|_| ok) {
            g.stamp[b as usize] = g.clock;
            if let Some(&r) = g.region_of.get(b as usize).filter(|&&r| r != NIL) {
                g.newest[r as usize] = g.clock;
            }
        }
    }

    /// Elastic pools: the clock when block `b` last became free while cached (0 when it
    /// never did, or for a static pool).
    pub fn block_stamp(&self, b: BlockId) -> u64 {
        self.regions
            .as_ref()
            .and_then(|g| g.stamp.get(b as usize).copied())
            .unwrap_or(0)
    }

    /// Elastic pools: the latest clock at which a block of region `r` became free while
    /// cached, since the region was granted (0: none did): no cached block of `r` is
    /// more recently used.
    pub fn region_newest(&self, r: usize) -> u64 {
        self.regions
            .as_ref()
            .and_then(|g| g.newest.get(r).copied())
            .unwrap_or(0)
    }

    /// Record what cached block `id` is worth (tokens of recompute a hit on it saves),
    /// for choosing which region to empty. No-op on a static pool or an uncached block.
    pub fn set_block_value(&mut self, id: BlockId, value: u32) -> Result<()> {
        let b = self.check_real(id)?;
        if !self.m[b as usize].has_hash {
            return Ok(());
        }
        if let Some(g) = self.regions.as_mut() {
            g.set_value(b, value);
        }
        Ok(())
    }

    /// Back region `r`'s ids with memory: they join the free queue, uncached. `rank`
    /// orders regions for allocation (lower first). Refused (nothing changes) unless
    /// the pool is elastic and every id of the region is absent.
    pub fn add_region(&mut self, r: usize, rank: u32) -> Result<usize> {
        let Some(g) = self.regions.as_mut() else {
            return Err(Error::InvalidArgument("not an elastic pool".into()));
        };
        let Some(&(lo, hi)) = g.range.get(r) else {
            return Err(Error::InvalidArgument(format!("no region {r}")));
        };
        if g.blocks[r] > 0 || (lo..hi).any(|b| g.present[b as usize]) {
            return Err(Error::InvalidArgument(format!(
                "region {r} is already backed in this pool"
            )));
        }
        g.rank[r] = rank;
        g.newest[r] = 0;
        for b in lo..hi {
            g.present[b as usize] = true;
        }
        g.blocks[r] = hi - lo;
        g.set_idle(r, hi > lo);
        for b in lo..hi {
            self.push_tail(b);
            if let Some(g) = self.regions.as_mut() {
                g.add_uncached(b);
            }
        }
        self.num_present += (hi - lo) as usize;
        Ok((hi - lo) as usize)
    }

    /// Give region `r`'s memory back: every block must be free; cached ones lose their
    /// hashes (`Removed` events). Refused (nothing changes) while any is in use.
    pub fn remove_region(&mut self, r: usize) -> Result<usize> {
        let Some(g) = self.regions.as_ref() else {
            return Err(Error::InvalidArgument("not an elastic pool".into()));
        };
        let Some(&(lo, hi)) = g.range.get(r) else {
            return Err(Error::InvalidArgument(format!("no region {r}")));
        };
        if g.blocks[r] == 0 {
            return Err(Error::InvalidArgument(format!(
                "region {r} is not backed in this pool"
            )));
        }
        if g.in_use[r] > 0 {
            return Err(Error::PoolInUse {
                in_use: g.in_use[r] as usize,
            });
        }
        // Out of the idle set first, so dropping each block's hash leaves it alone.
        if let Some(g) = self.regions.as_mut() {
            g.set_idle(r, false);
        }
        for b in lo..hi {
            self.drop_hash(b);
            self.unlink(b);
            if let Some(g) = self.regions.as_mut() {
                g.present[b as usize] = false;
            }
        }
        if let Some(g) = self.regions.as_mut() {
            g.blocks[r] = 0;
        }
        self.num_present -= (hi - lo) as usize;
        Ok((hi - lo) as usize)
    }
}
