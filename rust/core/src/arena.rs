//! Elastic memory: one arena shared by every KV-cache group, each group at its natural
//! page size. The manager builds it over POOLS (`manager/construct.rs`: groups with
//! equal pages share one pool): below, "group" is an arena group, i.e. a pool.
//!
//! ## Mechanism: regions owned by one group at a time
//! The KV-cache memory is one byte arena of `bytes` bytes. Group `g` has page size
//! `p_g` (all of its layers' bytes for one block) and sees the WHOLE arena as an array
//! of `floor(bytes / p_g)` blocks: block id `b` of group `g` is the bytes
//! `[b * p_g, (b + 1) * p_g)`. Each of the group's layers is then a plain strided view
//! over the arena (block id x fixed stride `p_g`, plus the layer's offset inside the
//! page), exactly what paged-attention kernels take (`[num_blocks, block_size, heads,
//! head_dim]` with an arbitrary block stride); no page size is unified or padded.
//!
//! The bytes after a null area are cut into regions at multiples of `region_bytes`
//! (the first and last may be shorter). A region is owned by at most one group at a time, and a group uses only
//! the ids whose bytes lie wholly inside ONE region it owns, so no byte ever belongs to
//! two live blocks. The null area `[0, null_bytes)` belongs to no region and holds the
//! null block 0 (never written; tables point at it for released slots) of every group
//! whose null block a kernel may read: every attention kind (the manager checks it). A
//! state group's block 0 is never read or written (a state kernel reads a checkpoint
//! and writes a running state, never a null entry), so it may reach past the null
//! area over other groups' ids, and its pages, often the largest, cost no null area.
//! Memory moves between groups a region at a time, and only when the region holds no
//! block in use: nothing live is ever copied or remapped. A region is granted to a
//! group (its ids join that pool's free queue) and released by it (all its blocks free;
//! cached ones are evicted with `Removed` events).
//!
//! ## What it costs (measured by `hybridkv plan --json`, `arena` key)
//! Waste is only at region edges: in a region owned by `g`, the bytes before its first
//! whole page and after its last, less than `2 * p_g` per region (`0` when the region
//! start and size are multiples of `p_g`), plus the null area. The planner picks the
//! `region_bytes` (multiples of the growing group's page, of the largest page, of
//! every page) that leaves the growing groups the most blocks, on a tie the coarsest
//! giving at least 64 regions (`arena_plan.py`); e.g. Qwen3-Next-80B at 16 GiB: regions
//! of ~158 MB, a multiple of both pages, so nothing is wasted at the edges the floors
//! and the growing group own (0.4 % worst case, every region owned by the group
//! wasting most of it). Coarser regions waste less but move memory in bigger steps; finer ones the
//! reverse. Against CUDA virtual memory (reserve per group, map 2 MiB granules) this
//! wastes a little more but runs on any allocator (CPU tensors in tests included) and
//! keeps one base pointer for all groups; against unified large pages (vLLM, Jenga) no
//! page is inflated.
//!
//! ## Floors
//! A bounded group (state, sliding window, chunked local, cross attention) has a floor:
//! blocks it can always get (the planner's bound for `max_num_seqs` running requests).
//! At construction it is granted regions from the top of the arena until it holds its
//! floor; another group may take a region from it only while it keeps its floor. So
//! the floor is always obtainable, whatever the other groups do. Growing groups take
//! regions from the bottom, bounded groups from the top, so contested regions sit in
//! the middle; allocation packs each group's live blocks into its preferred end (see
//! `block_pool/regions.rs`), so its frontier regions are the ones that empty.

use std::collections::BTreeSet;

use crate::error::{Error, Result};

/// No owner / no region.
pub const NONE: u32 = u32::MAX;

/// What the arena is built from (one entry per group in `page_bytes`/`floor_blocks`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArenaConfig {
    /// Bytes of the whole arena (the KV-cache memory).
    pub bytes: u64,
    /// Bytes of one region (the last region may be shorter).
    pub region_bytes: u64,
    /// Bytes of the null area before the first region (at least the largest page of
    /// a group whose null block may be read: see the module docs).
    pub null_bytes: u64,
    /// Per group: bytes of one block (all of the group's layers).
    pub page_bytes: Vec<u64>,
    /// Per group: non-null blocks it can always get (0 for growing groups).
    pub floor_blocks: Vec<usize>,
}

/// Region ownership and the id <-> byte mapping of every group's view.
#[derive(Debug, Clone)]
pub struct Arena {
    cfg: ArenaConfig,
    base: u64,
    /// Index (in multiples of `region_bytes` from byte 0) of the first region.
    first: u64,
    num_regions: usize,
    owner: Vec<u32>,
    /// Regions with no owner, in order (the manager takes the lowest or the highest).
    unowned: BTreeSet<u32>,
    /// Per group, per region: `ids_in` (computed once; read at every region scan).
    ids: Vec<Vec<(u32, u32)>>,
    /// Per group: the fewest ids it has in any region holding some, and the most.
    min_ids: Vec<usize>,
    max_ids: Vec<usize>,
}

impl Arena {
    pub fn new(cfg: ArenaConfig) -> Result<Self> {
        let ng = cfg.page_bytes.len();
        if ng == 0 || cfg.floor_blocks.len() != ng {
            return Err(Error::InvalidArgument(format!(
                "arena needs one page size and one floor per group, got {} and {}",
                ng,
                cfg.floor_blocks.len()
            )));
        }
        if let Some(g) = cfg.page_bytes.iter().position(|&p| p == 0) {
            return Err(Error::InvalidArgument(format!(
                "group {g}: page size must be positive"
            )));
        }
        let biggest = cfg.page_bytes.iter().copied().max().unwrap_or(0);
        if cfg.region_bytes < biggest || cfg.null_bytes == 0 {
            return Err(Error::InvalidArgument(format!(
                "region_bytes {} must hold the largest page ({biggest} bytes) and null_bytes {} \
                 must be positive",
                cfg.region_bytes, cfg.null_bytes
            )));
        }
        let base = cfg.null_bytes;
        if cfg.bytes <= base {
            return Err(Error::InvalidArgument(format!(
                "arena of {} bytes holds nothing beyond its null area of {base} bytes",
                cfg.bytes
            )));
        }
        // Regions are aligned to multiples of `region_bytes` from byte 0 (so a region
        // size that is a multiple of every page wastes nothing at any edge); the first
        // one starts after the null area and may be shorter.
        let first = base / cfg.region_bytes;
        let num_regions = cfg.bytes.div_ceil(cfg.region_bytes) - first;
        if num_regions >= NONE as u64 {
            return Err(Error::InvalidArgument(format!(
                "{num_regions} regions are too many (raise region_bytes)"
            )));
        }
        for (g, &p) in cfg.page_bytes.iter().enumerate() {
            if cfg.bytes / p > i32::MAX as u64 {
                return Err(Error::InvalidArgument(format!(
                    "group {g}: {} blocks of {p} bytes exceed the int32 block-id space",
                    cfg.bytes / p
                )));
            }
        }
        let n = num_regions as usize;
        let mut arena = Arena {
            cfg,
            base,
            first,
            num_regions: n,
            owner: vec![NONE; n],
            unowned: (0..n as u32).collect(),
            ids: Vec::new(),
            min_ids: Vec::new(),
            max_ids: Vec::new(),
        };
        arena.ids = (0..ng)
            .map(|g| (0..n).map(|r| arena.compute_ids_in(g, r)).collect())
            .collect();
        arena.min_ids = arena
            .ids
            .iter()
            .map(|ids| {
                let counts = ids.iter().map(|&(lo, hi)| (hi - lo) as usize);
                counts.filter(|&c| c > 0).min().unwrap_or(0)
            })
            .collect();
        arena.max_ids = arena
            .ids
            .iter()
            .map(|ids| {
                ids.iter()
                    .map(|&(lo, hi)| (hi - lo) as usize)
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        Ok(arena)
    }

    pub fn config(&self) -> &ArenaConfig {
        &self.cfg
    }
    pub fn num_regions(&self) -> usize {
        self.num_regions
    }
    pub fn num_groups(&self) -> usize {
        self.cfg.page_bytes.len()
    }
    /// Bytes of the null area (block 0 of every group but state groups lies in it).
    pub fn null_bytes(&self) -> u64 {
        self.base
    }
    pub fn page(&self, g: usize) -> u64 {
        self.cfg.page_bytes[g]
    }
    pub fn floor(&self, g: usize) -> usize {
        self.cfg.floor_blocks[g]
    }

    /// Ids in group `g`'s view of the whole arena (null block included).
    pub fn view_blocks(&self, g: usize) -> usize {
        (self.cfg.bytes / self.cfg.page_bytes[g]) as usize
    }

    /// Bytes `[start, end)` of region `r`.
    pub fn span(&self, r: usize) -> (u64, u64) {
        let s = (self.first + r as u64) * self.cfg.region_bytes;
        (
            s.max(self.base),
            (s + self.cfg.region_bytes).min(self.cfg.bytes),
        )
    }

    /// Group `g`'s ids `[lo, hi)` whose bytes lie wholly inside region `r`.
    #[inline]
    pub fn ids_in(&self, g: usize, r: usize) -> (u32, u32) {
        self.ids[g][r]
    }

    /// The fewest ids group `g` has in any region that holds some (a region it owns
    /// backs at least this many blocks).
    pub fn min_region_ids(&self, g: usize) -> usize {
        self.min_ids[g]
    }

    /// The most ids group `g` has in one region (a whole region of its pages).
    pub fn max_region_ids(&self, g: usize) -> usize {
        self.max_ids[g]
    }

    fn compute_ids_in(&self, g: usize, r: usize) -> (u32, u32) {
        let p = self.cfg.page_bytes[g];
        let (s, e) = self.span(r);
        let lo = s.div_ceil(p);
        let hi = (e / p).max(lo);
        (lo as u32, hi as u32)
    }

    /// Per id of group `g`'s view: its region, or `NONE` (null area, region edge).
    pub fn region_map(&self, g: usize) -> Vec<u32> {
        let mut out = vec![NONE; self.view_blocks(g)];
        for r in 0..self.num_regions {
            let (lo, hi) = self.ids_in(g, r);
            for b in lo..hi {
                out[b as usize] = r as u32;
            }
        }
        out
    }

    /// Bytes of region `r` that group `g` cannot use (its edges).
    pub fn edge_waste(&self, g: usize, r: usize) -> u64 {
        let (s, e) = self.span(r);
        let (lo, hi) = self.ids_in(g, r);
        (e - s) - (hi - lo) as u64 * self.cfg.page_bytes[g]
    }

    pub fn owner(&self, r: usize) -> Option<usize> {
        match self.owner.get(r) {
            Some(&o) if o != NONE => Some(o as usize),
            _ => None,
        }
    }
    pub fn owners(&self) -> &[u32] {
        &self.owner
    }

    pub(crate) fn set_owner(&mut self, r: usize, g: Option<usize>) {
        let new = g.map_or(NONE, |g| g as u32);
        let old = std::mem::replace(&mut self.owner[r], new);
        match (old == NONE, new == NONE) {
            (true, false) => {
                self.unowned.remove(&(r as u32));
            }
            (false, true) => {
                self.unowned.insert(r as u32);
            }
            _ => {}
        }
    }

    /// Regions no group owns now.
    pub fn num_unowned(&self) -> usize {
        self.unowned.len()
    }

    /// The regions no group owns now, lowest first.
    pub fn unowned_regions(&self) -> impl DoubleEndedIterator<Item = usize> + '_ {
        self.unowned.iter().map(|&r| r as usize)
    }

    /// Bytes no group can use now: the null area plus the edges of owned regions.
    pub fn waste_bytes(&self) -> u64 {
        self.base
            + (0..self.num_regions)
                .filter_map(|r| self.owner(r).map(|g| self.edge_waste(g, r)))
                .sum::<u64>()
    }

    /// The most bytes any ownership can waste: the null area plus, per region, the
    /// largest edge waste of any group.
    pub fn worst_waste_bytes(&self) -> u64 {
        self.base
            + (0..self.num_regions)
                .map(|r| {
                    (0..self.num_groups())
                        .map(|g| self.edge_waste(g, r))
                        .max()
                        .unwrap_or(0)
                })
                .sum::<u64>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn arena(bytes: u64, region: u64, pages: &[u64]) -> Arena {
        Arena::new(ArenaConfig {
            bytes,
            region_bytes: region,
            null_bytes: pages.iter().copied().max().unwrap_or(1),
            page_bytes: pages.to_vec(),
            floor_blocks: vec![0; pages.len()],
        })
        .unwrap()
    }

    #[test]
    fn ids_lie_inside_their_region() {
        let a = arena(1000, 96, &[7, 30]);
        assert_eq!(a.null_bytes(), 30);
        assert_eq!(a.num_regions(), 11); // [30, 96), [96, 192), ..., [960, 1000)
        assert_eq!(a.span(0), (30, 96));
        for g in 0..2 {
            let p = a.page(g);
            let map = a.region_map(g);
            assert_eq!(map[0], NONE);
            for (b, &r) in map.iter().enumerate() {
                if r == NONE {
                    continue;
                }
                let (s, e) = a.span(r as usize);
                assert!(b as u64 * p >= s && (b as u64 + 1) * p <= e);
            }
            // Every id whose bytes fit inside one region is mapped to it.
            for b in 0..a.view_blocks(g) as u64 {
                let inside = (0..a.num_regions()).any(|r| {
                    let (s, e) = a.span(r);
                    b * p >= s && (b + 1) * p <= e
                });
                assert_eq!(inside, map[b as usize] != NONE, "group {g} id {b}");
            }
        }
        // Edge waste is below two pages per region, and zero where aligned.
        for r in 0..a.num_regions() {
            assert!(a.edge_waste(0, r) < 14);
        }
        let b = arena(90 + 90 * 4, 90, &[30, 90]);
        assert_eq!(b.worst_waste_bytes(), 90);
    }

    #[test]
    fn bad_configs_refused() {
        let ok = ArenaConfig {
            bytes: 1000,
            region_bytes: 100,
            null_bytes: 50,
            page_bytes: vec![10, 50],
            floor_blocks: vec![0, 0],
        };
        assert!(Arena::new(ok.clone()).is_ok());
        let mut c = ok.clone();
        c.region_bytes = 40;
        assert!(Arena::new(c).is_err());
        let mut c = ok.clone();
        c.page_bytes[0] = 0;
        assert!(Arena::new(c).is_err());
        let mut c = ok.clone();
        c.floor_blocks.pop();
        assert!(Arena::new(c).is_err());
        let mut c = ok;
        c.bytes = 50;
        assert!(Arena::new(c).is_err());
    }
}
