//! Elastic memory: one arena shared by every KV-cache group, each group at its natural
//! page size. The manager builds it over POOLS (`manager/construct.rs`: groups with
//! equal pages share one pool): below, "group" is an arena group, i.e. a pool.
//!
//! ## Mechanism: regions owned by one group at a time
//! The KV-cache memory is one byte arena of `bytes` bytes. Group `g` has page size
//! `p_g` (all of its layers' bytes for one block) and a base `base_g < bytes`: it sees
//! the arena from its base as an array of `(bytes - base_g) / p_g` blocks, block id `b`
//! being the bytes `[base_g + b * p_g, base_g + (b + 1) * p_g)`. Each of the group's
//! layers is then a plain strided view over the arena (storage offset `base_g` plus
//! the layer's offset inside the page, block id x fixed stride `p_g`), exactly what
//! paged-attention kernels take (`[num_blocks, block_size, heads, head_dim]` with an
//! arbitrary block stride); no page size is unified or padded.
//!
//! The arena is cut into regions with explicit bounds, lowest first:
//! - the null area `[0, null_bytes)` (no region) holds the null block 0 (never
//!   written; tables point at it for released slots) of every group whose null block
//!   a kernel may read: every attention kind (the manager checks it). A state group's
//!   block 0 is never read or written (a state kernel reads a checkpoint and writes a
//!   running state, never a null entry), so it may lie anywhere, over other groups'
//!   ids, and its pages, often the largest, cost no null area;
//! - the grid: `[null_bytes, S)` cut every `region_bytes` (the first and last regions
//!   may be shorter). The cuts fall on page edges of the first group without a span
//!   (the growing one; its pages tile from the null area) and, when a span exists, on
//!   page edges of the first span's group too: that span is lowered by under
//!   `gcd(p_anchor, p_span)` bytes so that such common edges exist, and the first cut
//!   is the latest common edge within one region of the null area. With `region_bytes`
//!   a multiple of both pages, every full region holds whole pages of both;
//! - floor spans `[S, bytes)`: per bounded pool whose groups all have floors and whose
//!   null block is never read (a state pool), ONE region of exactly its floor pages,
//!   stacked down from the top in pool order and pinned to it (see "Floors").
//!
//! Bases: a span pool's base is `span_start mod p_g`, so its pages tile its span
//! exactly; every other group's is `null_bytes mod p_g` (its block 0 inside the null
//! area, its pages tiling the grid from the null area on). A region is owned by at
//! most one group at a time, and a group uses only the ids whose bytes lie wholly
//! inside ONE region it owns (never block 0), so no byte ever belongs to two live
//! blocks. Memory moves between groups a grid region at a time, and only when the
//! region holds no block in use: nothing live is ever copied or remapped. A region is
//! granted to a group (its ids join that pool's free queue) and released by it (all
//! its blocks free; cached ones are evicted with `Removed` events). `ArenaRoles` says
//! which groups get spans and whose null blocks may be read (the manager derives
//! both from the groups' kinds, `manager/construct.rs`); `hybridkv plan --json` and
//! the manager's `arena_info` expose the bases and spans.
//!
//! ## What it costs (measured by `hybridkv plan --json`, `arena` key)
//! Waste is only at region edges and in the null area: in a region owned by `g`, the
//! bytes before its first whole page and after its last, less than `2 * p_g` per
//! region, `0` when the region's start and size are multiples of `p_g` from `base_g`.
//! The planner picks `region_bytes` among multiples of the growing group's page (its
//! pages tile every grid region: it wastes nothing but the end of the short last
//! one), then among those where a state pool's whole pages cover at least 95 % of a
//! full grid region (its checkpoints beyond its floor live there: regions of 1.1
//! state pages, most holding none, cut Nemotron-Nano-9B-v2's chat hit rate from 0.78
//! to 0.37), on a tie the coarsest giving at least 64 regions (`arena_plan.py`). A
//! state floor span wastes at most the few bytes it is lowered by (under one growing
//! page), whatever its page, so incommensurate pages cost the growing group nothing:
//! capacity is the physical limit (memory minus floors over growing bytes per token)
//! in whole blocks less the null block on every bundled state hybrid (Kimi-Linear at
//! 80 GiB gained 114 blocks, Zamba2 at 32 GiB 48, over the earlier grid of regions at
//! multiples of the state page). A state pool's memory beyond its floor (checkpoints)
//! comes from grid regions, with edge waste below one state page per region (none
//! when the region size is a multiple of its page). Coarser regions move memory in
//! bigger steps; finer ones the reverse.
//! Against CUDA virtual memory (reserve per group, map 2 MiB granules) this wastes a
//! little more but runs on any allocator (CPU tensors in tests included) and keeps one
//! base pointer for all groups; against unified large pages (vLLM, Jenga) no page is
//! inflated.
//!
//! ## Floors
//! A bounded group (state, sliding window, chunked local, cross attention) has a floor:
//! blocks it can always get (the planner's bound for `max_num_seqs` running requests).
//! A state pool holds its floor in its span, granted at construction and never moved
//! (the manager skips pinned regions when it reclaims memory). Any other pool with a
//! floor is granted grid regions until it holds its floor, from the bottom for a pool
//! with a growing group, else from the top (whole regions first); another group may
//! take a grid region from it only while it keeps its floor. So every floor is always
//! obtainable, whatever the other groups do. The manager may lower a pool's floor to an
//! *effective* floor (`Manager::set_floor_needs`, never above this planned one: what
//! its running requests can still hold, set by the scheduler every step); other groups
//! then take its regions above that, and raising it takes unowned or idle regions back
//! at once (or is refused, changing nothing). Growing groups take regions from the
//! bottom, bounded groups from the top, so contested regions sit in the middle;
//! allocation packs each group's live blocks into its preferred end (see
//! `block_pool/regions.rs`), so its frontier regions are the ones that empty.
//!
//! A window pool gets no span, measured across the bundled models: its null block is
//! read, so it must lie in the null area (which then holds one window page, more than
//! the growing page) or at the start of its own span (one window page more: never
//! better, since the null area then still holds the growing null block); its span
//! would start at a multiple of its page from its base, wasting up to a page at its
//! top; and the planner caps a window floor at what the growing groups hold, so a
//! cheaper floor raises the cap and lowers capacity (Gemma-3-27B at 16 GiB: 33,856
//! tokens with a span, 34,080 on the grid). The window null page is why the window
//! models stay a few blocks short of issue 11's capacity goal (`benches/RESULTS.md`). `Arena` supports null-read spans (block 0
//! kept in the null area), tested below; the manager does not use them.

use std::collections::BTreeSet;

use crate::error::{Error, Result};

/// No owner / no region.
pub const NONE: u32 = u32::MAX;

/// What the arena is built from (one entry per group in `page_bytes`/`floor_blocks`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArenaConfig {
    /// Bytes of the whole arena (the KV-cache memory).
    pub bytes: u64,
    /// Bytes of one grid region (the last one may be shorter).
    pub region_bytes: u64,
    /// Bytes of the null area before the first region (at least the largest page of
    /// a group whose null block may be read: see the module docs).
    pub null_bytes: u64,
    /// Per group: bytes of one block (all of the group's layers).
    pub page_bytes: Vec<u64>,
    /// Per group: non-null blocks it can always get (0 for growing groups).
    pub floor_blocks: Vec<usize>,
}

/// Per group, how it lives in the arena (the manager derives both from the kinds of
/// the groups in each pool: `manager/construct.rs`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArenaRoles {
    /// The group's floor is one floor span of exactly `floor_blocks` pages at the top
    /// (a bounded pool with no growing group); otherwise floors come from the grid.
    pub span: Vec<bool>,
    /// A kernel may read the group's null block (every attention kind): block 0 must
    /// lie in the null area.
    pub null_read: Vec<bool>,
}

impl ArenaRoles {
    /// Every group with a floor gets a span, every null block may be read.
    pub fn default_for(cfg: &ArenaConfig) -> Self {
        ArenaRoles {
            span: cfg.floor_blocks.iter().map(|&f| f > 0).collect(),
            null_read: vec![true; cfg.page_bytes.len()],
        }
    }
}

/// Region ownership and the id <-> byte mapping of every group's view.
#[derive(Debug, Clone)]
pub struct Arena {
    cfg: ArenaConfig,
    /// Per group: byte offset of its block 0 (its view's base).
    bases: Vec<u64>,
    /// Bytes `[start, end)` of every region, lowest first: the grid, then the spans.
    bounds: Vec<(u64, u64)>,
    /// Grid regions (`0..num_grid`); the others are floor spans.
    num_grid: usize,
    /// Per group: its floor span's region, or `NONE`.
    span_of: Vec<u32>,
    owner: Vec<u32>,
    /// Regions with no owner, in order (the manager takes the lowest or the highest).
    unowned: BTreeSet<u32>,
    /// Per group, per region: `ids_in` (computed once; read at every region scan).
    ids: Vec<Vec<(u32, u32)>>,
    /// Per group: the fewest ids it has in any grid region holding some, and the most.
    min_ids: Vec<usize>,
    max_ids: Vec<usize>,
}

impl Arena {
    /// An arena with [`ArenaRoles::default_for`] roles.
    pub fn new(cfg: ArenaConfig) -> Result<Self> {
        let roles = ArenaRoles::default_for(&cfg);
        Self::with_roles(cfg, roles)
    }

    pub fn with_roles(cfg: ArenaConfig, roles: ArenaRoles) -> Result<Self> {
        let ng = cfg.page_bytes.len();
        if ng == 0
            || cfg.floor_blocks.len() != ng
            || roles.span.len() != ng
            || roles.null_read.len() != ng
        {
            return Err(Error::InvalidArgument(format!(
                "arena needs one page size, one floor and one role per group, got {}, {} \
                 and {}/{}",
                ng,
                cfg.floor_blocks.len(),
                roles.span.len(),
                roles.null_read.len()
            )));
        }
        if let Some(g) = cfg.page_bytes.iter().position(|&p| p == 0) {
            return Err(Error::InvalidArgument(format!(
                "group {g}: page size must be positive"
            )));
        }
        let biggest = cfg.page_bytes.iter().copied().max().unwrap_or(0);
        let null = cfg.null_bytes;
        if cfg.region_bytes < biggest || null == 0 {
            return Err(Error::InvalidArgument(format!(
                "region_bytes {} must hold the largest page ({biggest} bytes) and null_bytes \
                 {null} must be positive",
                cfg.region_bytes
            )));
        }
        if cfg.bytes <= null {
            return Err(Error::InvalidArgument(format!(
                "arena of {} bytes holds nothing beyond its null area of {null} bytes",
                cfg.bytes
            )));
        }
        if let Some(g) = (0..ng).find(|&g| roles.null_read[g] && cfg.page_bytes[g] > null) {
            return Err(Error::InvalidArgument(format!(
                "null_bytes {null} cannot hold the null block of group {g} ({}-byte pages)",
                cfg.page_bytes[g]
            )));
        }
        // Floor spans, stacked down from the top in group order, each exactly its floor
        // pages (plus, for a group whose null block is read, the few bytes above that
        // put block 0 in the null area: its base must be at most `null - p`).
        let spanned = |g: usize| roles.span[g] && cfg.floor_blocks[g] > 0;
        // The grid's pages tile from the null area for the first group without a span
        // (the growing one); the first span is lowered by under gcd(its page, that
        // page) bytes so that some grid boundary lies on a page edge of both (`phase`).
        let anchor = (0..ng).find(|&g| !spanned(g)).map(|g| cfg.page_bytes[g]);
        let mut bases: Vec<u64> = cfg.page_bytes.iter().map(|&p| null % p).collect();
        let mut spans: Vec<(usize, u64, u64)> = Vec::new();
        let mut top = cfg.bytes;
        let mut phase = null;
        let mut period: Option<u64> = None;
        for (g, base_g) in bases.iter_mut().enumerate() {
            let f = cfg.floor_blocks[g] as u64;
            if !spanned(g) {
                continue;
            }
            let p = cfg.page_bytes[g];
            let first = spans.is_empty();
            let fits = f
                .checked_mul(p)
                .and_then(|need| top.checked_sub(need))
                .map(|s| match anchor {
                    Some(a) if first => s.saturating_sub((s.saturating_sub(null)) % gcd(a, p)),
                    _ => s,
                })
                .filter(|&s| s >= null);
            let Some(s0) = fits else {
                return Err(Error::InvalidArgument(format!(
                    "floors do not fit: group {g} needs {f} blocks of {p} bytes but only {} \
                     bytes lie between the null area and the other floors",
                    top - null
                )));
            };
            let (s, base) = if roles.null_read[g] && s0 % p > null - p {
                let lim = null - p;
                (s0 - (s0 % p - lim), lim)
            } else {
                (s0, s0 % p)
            };
            if s < null {
                return Err(Error::InvalidArgument(format!(
                    "floors do not fit: group {g}'s span would start at {s}, inside the null \
                     area"
                )));
            }
            *base_g = base;
            if let (Some(a), true) = (anchor, spans.is_empty()) {
                phase = common_edge(null, a, s, p);
                period = u64::try_from(a as u128 / gcd(a, p) as u128 * p as u128).ok();
            }
            spans.push((g, s, top));
            top = s;
        }
        // The grid: `[null, top)` cut at `phase + i * region_bytes`: every boundary is a
        // page edge of the anchor group, and of the first span's group where the region
        // size is a multiple of both pages.
        let r = cfg.region_bytes;
        let c1 = match null + (phase - null) % r {
            c if c == null => null + r,
            c => c,
        };
        // The latest common edge within one region of the null area (edges repeat
        // every `period` bytes): the first region as long as it can be.
        let c1 = match period {
            Some(l) if l <= r => c1 + (null + r - c1) / l * l,
            _ => c1,
        };
        let num_grid = 1 + if c1 < top { (top - c1).div_ceil(r) } else { 0 };
        if num_grid + spans.len() as u64 >= NONE as u64 {
            return Err(Error::InvalidArgument(format!(
                "{num_grid} regions are too many (raise region_bytes)"
            )));
        }
        for (g, &p) in cfg.page_bytes.iter().enumerate() {
            if (cfg.bytes - bases[g]) / p > i32::MAX as u64 {
                return Err(Error::InvalidArgument(format!(
                    "group {g}: {} blocks of {p} bytes exceed the int32 block-id space",
                    cfg.bytes / p
                )));
            }
        }
        let num_grid = num_grid as usize;
        let cut = |i: usize| match i {
            0 => null,
            i => c1 + (i as u64 - 1) * r,
        };
        let mut bounds: Vec<(u64, u64)> = (0..num_grid)
            .map(|i| (cut(i), if i + 1 < num_grid { cut(i + 1) } else { top }))
            .collect();
        let mut span_of = vec![NONE; ng];
        for &(g, s, e) in spans.iter().rev() {
            span_of[g] = bounds.len() as u32;
            bounds.push((s, e));
        }
        let n = bounds.len();
        let mut arena = Arena {
            cfg,
            bases,
            bounds,
            num_grid,
            span_of,
            owner: vec![NONE; n],
            unowned: (0..n as u32).collect(),
            ids: Vec::new(),
            min_ids: Vec::new(),
            max_ids: Vec::new(),
        };
        arena.ids = (0..ng)
            .map(|g| (0..n).map(|r| arena.compute_ids_in(g, r)).collect())
            .collect();
        let grid_counts = |g: usize| {
            arena.ids[g][..num_grid]
                .iter()
                .map(|&(lo, hi)| (hi - lo) as usize)
                .collect::<Vec<_>>()
        };
        arena.min_ids = (0..ng)
            .map(|g| {
                grid_counts(g)
                    .into_iter()
                    .filter(|&c| c > 0)
                    .min()
                    .unwrap_or(0)
            })
            .collect();
        arena.max_ids = (0..ng)
            .map(|g| grid_counts(g).into_iter().max().unwrap_or(0))
            .collect();
        Ok(arena)
    }

    pub fn config(&self) -> &ArenaConfig {
        &self.cfg
    }
    pub fn num_regions(&self) -> usize {
        self.bounds.len()
    }
    /// Regions of the grid (`0..num_grid_regions()`); the rest are floor spans.
    pub fn num_grid_regions(&self) -> usize {
        self.num_grid
    }
    pub fn num_groups(&self) -> usize {
        self.cfg.page_bytes.len()
    }
    /// Bytes of the null area (block 0 of every group whose null block may be read
    /// lies in it).
    pub fn null_bytes(&self) -> u64 {
        self.cfg.null_bytes
    }
    pub fn page(&self, g: usize) -> u64 {
        self.cfg.page_bytes[g]
    }
    pub fn floor(&self, g: usize) -> usize {
        self.cfg.floor_blocks[g]
    }
    /// Byte offset of group `g`'s block 0: block `b` is `[base + b * p, base + (b + 1) * p)`.
    pub fn base(&self, g: usize) -> u64 {
        self.bases[g]
    }
    pub fn bases(&self) -> &[u64] {
        &self.bases
    }
    /// Group `g`'s floor span (a region pinned to it), if it has one.
    pub fn floor_span(&self, g: usize) -> Option<usize> {
        match self.span_of[g] {
            NONE => None,
            r => Some(r as usize),
        }
    }
    /// Whether region `r` is a floor span (it never changes owner once granted).
    pub fn pinned(&self, r: usize) -> bool {
        r >= self.num_grid
    }

    /// Ids in group `g`'s view of the arena from its base (null block included).
    pub fn view_blocks(&self, g: usize) -> usize {
        ((self.cfg.bytes - self.bases[g]) / self.cfg.page_bytes[g]) as usize
    }

    /// Bytes `[start, end)` of region `r`.
    pub fn span(&self, r: usize) -> (u64, u64) {
        self.bounds[r]
    }

    /// Group `g`'s ids `[lo, hi)` whose bytes lie wholly inside region `r`.
    #[inline]
    pub fn ids_in(&self, g: usize, r: usize) -> (u32, u32) {
        self.ids[g][r]
    }

    /// The fewest ids group `g` has in any grid region that holds some (a grid region
    /// it owns backs at least this many blocks).
    pub fn min_region_ids(&self, g: usize) -> usize {
        self.min_ids[g]
    }

    /// The most ids group `g` has in one grid region (a whole region of its pages).
    pub fn max_region_ids(&self, g: usize) -> usize {
        self.max_ids[g]
    }

    fn compute_ids_in(&self, g: usize, r: usize) -> (u32, u32) {
        let p = self.cfg.page_bytes[g];
        let base = self.bases[g];
        let (s, e) = self.span(r);
        if e <= base {
            return (1, 1);
        }
        // Block 0 is the null block: never an id of a region.
        let lo = (s.saturating_sub(base)).div_ceil(p).max(1);
        let hi = ((e - base) / p).max(lo);
        (lo as u32, hi as u32)
    }

    /// Per id of group `g`'s view: its region, or `NONE` (null area, region edge).
    pub fn region_map(&self, g: usize) -> Vec<u32> {
        let mut out = vec![NONE; self.view_blocks(g)];
        for r in 0..self.num_regions() {
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
        self.cfg.null_bytes
            + (0..self.num_regions())
                .filter_map(|r| self.owner(r).map(|g| self.edge_waste(g, r)))
                .sum::<u64>()
    }

    /// The most bytes any ownership can waste: the null area plus, per grid region,
    /// the largest edge waste of a group that can own it (one with an id in it; all of
    /// it if none can), and per floor span its own group's.
    pub fn worst_waste_bytes(&self) -> u64 {
        let span_owner = |r: usize| self.span_of.iter().position(|&s| s as usize == r);
        self.cfg.null_bytes
            + (0..self.num_regions())
                .map(|r| match span_owner(r) {
                    Some(g) => self.edge_waste(g, r),
                    None => {
                        let (s, e) = self.span(r);
                        (0..self.num_groups())
                            .filter(|&g| self.ids_in(g, r).1 > self.ids_in(g, r).0)
                            .map(|g| self.edge_waste(g, r))
                            .max()
                            .unwrap_or(e - s)
                    }
                })
                .sum::<u64>()
    }
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// The least `x >= null` with `x = null (mod a)` and `x = s (mod p)`, or `null` when
/// there is none (`s - null` not a multiple of `gcd(a, p)`).
fn common_edge(null: u64, a: u64, s: u64, p: u64) -> u64 {
    let g = gcd(a, p);
    let d = (s as i128 - null as i128).rem_euclid(p as i128);
    if d % g as i128 != 0 {
        return null;
    }
    // k * a = d (mod p): k = (d / g) * inverse(a / g) mod (p / g).
    let (a2, m) = ((a / g) as i128, (p / g) as i128);
    let (mut r0, mut r1, mut t0, mut t1) = (a2.rem_euclid(m.max(1)), m, 1i128, 0i128);
    while r1 != 0 {
        let q = r0 / r1;
        (r0, r1) = (r1, r0 - q * r1);
        (t0, t1) = (t1, t0 - q * t1);
    }
    let k = ((d / g as i128) % m.max(1) * t0.rem_euclid(m.max(1))).rem_euclid(m.max(1));
    null + (k as u64) * a
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

    /// Every id of every group lies wholly inside the region it is mapped to, every
    /// id whose bytes fit one region is mapped, and the null block is never mapped.
    fn check_mapping(a: &Arena) {
        for g in 0..a.num_groups() {
            let (p, base) = (a.page(g), a.base(g));
            let map = a.region_map(g);
            assert_eq!(map[0], NONE);
            for b in 1..a.view_blocks(g) as u64 {
                let (s, e) = (base + b * p, base + (b + 1) * p);
                let inside = (0..a.num_regions()).find(|&r| {
                    let (rs, re) = a.span(r);
                    s >= rs && e <= re
                });
                assert_eq!(
                    inside.map_or(NONE, |r| r as u32),
                    map[b as usize],
                    "group {g} id {b}"
                );
            }
        }
    }

    #[test]
    fn ids_lie_inside_their_region() {
        let a = arena(1000, 96, &[7, 30]);
        assert_eq!(a.null_bytes(), 30);
        // The grid starts at the null area: [30, 126), [126, 222), ..., [990, 1000).
        assert_eq!(a.num_regions(), 11);
        assert_eq!(a.span(0), (30, 126));
        assert_eq!(a.span(10), (990, 1000));
        // Pages tile from the null area: base = null mod page.
        assert_eq!(a.bases(), &[2, 0]);
        check_mapping(&a);
        // Edge waste is below two pages per region, and zero where aligned.
        for r in 0..a.num_regions() {
            assert!(a.edge_waste(0, r) < 14);
            assert!(a.edge_waste(1, r) < 60);
        }
        let b = arena(90 + 90 * 4, 90, &[30, 90]);
        assert_eq!(b.worst_waste_bytes(), 90);
    }

    #[test]
    fn the_grid_is_cut_where_growing_and_state_page_edges_meet() {
        // Growing page 10 (from the null area, 40), state page 36 with a floor of 3:
        // the span [892, 1000) (base 28); 10 B edges (40 + 10k) meet 36 B ones
        // (28 + 36j) at 100, so the grid is cut at 100 + 180i: full regions of 180 B
        // (the least common multiple) hold exactly 18 growing pages and 5 state pages.
        let cfg = ArenaConfig {
            bytes: 1000,
            region_bytes: 180,
            null_bytes: 40,
            page_bytes: vec![10, 36],
            floor_blocks: vec![0, 3],
        };
        let roles = ArenaRoles {
            span: vec![false, true],
            null_read: vec![true, false],
        };
        let a = Arena::with_roles(cfg, roles.clone()).unwrap();
        check_mapping(&a);
        assert_eq!(a.bases(), &[0, 28]);
        assert_eq!(a.span(a.floor_span(1).unwrap()), (892, 1000));
        assert_eq!((a.span(0), a.span(1)), ((40, 100), (100, 280)));
        assert_eq!(a.num_grid_regions(), 6);
        assert_eq!(a.span(5), (820, 892));
        for r in 1..5 {
            assert_eq!(a.edge_waste(0, r), 0);
            assert_eq!(a.edge_waste(1, r), 0);
        }
        // Regions of two common periods: the first cut is the latest common edge within
        // one region of the null area, 280 (not 100).
        let mut c2 = a.config().clone();
        c2.region_bytes = 360;
        let b = Arena::with_roles(c2, roles.clone()).unwrap();
        check_mapping(&b);
        assert_eq!(
            (b.span(0), b.span(1), b.span(2)),
            ((40, 280), (280, 640), (640, 892))
        );
        // No common edge unless the span start is lowered to the null area's residue
        // mod gcd(4, 6) = 2: 1001 - 30 = 971 becomes 970 (1 byte lost above the span).
        let odd = Arena::with_roles(
            ArenaConfig {
                bytes: 1001,
                region_bytes: 24,
                null_bytes: 40,
                page_bytes: vec![4, 6],
                floor_blocks: vec![0, 5],
            },
            roles,
        )
        .unwrap();
        check_mapping(&odd);
        let sp = odd.floor_span(1).unwrap();
        assert_eq!(odd.span(sp), (970, 1001));
        assert_eq!(odd.ids_in(1, sp).1 - odd.ids_in(1, sp).0, 5);
        assert_eq!((odd.span(1).0 - odd.base(1)) % 6, 0);
    }

    #[test]
    fn common_edge_matches_a_search() {
        for a in 1..12u64 {
            for p in 1..15u64 {
                for s in 40..40 + 2 * p {
                    let want = (0..a * p)
                        .map(|k| 40 + k * a)
                        .find(|&x| (x + p * 100 - s) % p == 0)
                        .unwrap_or(40);
                    assert_eq!(common_edge(40, a, s, p), want, "a {a} p {p} s {s}");
                }
            }
        }
    }

    #[test]
    fn floor_spans_hold_exactly_their_floor() {
        // Group 0 grows (page 20, null read), group 1 is state (page 33, floor 5),
        // group 2 a window (page 30, floor 3, null read).
        let cfg = ArenaConfig {
            bytes: 1000,
            region_bytes: 60,
            null_bytes: 40,
            page_bytes: vec![20, 33, 30],
            floor_blocks: vec![0, 5, 3],
        };
        let roles = ArenaRoles {
            span: vec![false, true, true],
            null_read: vec![true, false, true],
        };
        let a = Arena::with_roles(cfg.clone(), roles.clone()).unwrap();
        check_mapping(&a);
        // State span: exactly 5 pages at the top, its pages tiling it (base 835 mod 33).
        let s1 = a.floor_span(1).unwrap();
        assert_eq!(a.span(s1), (835, 1000));
        assert_eq!(a.base(1), 835 % 33);
        assert_eq!(a.ids_in(1, s1).1 - a.ids_in(1, s1).0, 5);
        assert_eq!(a.edge_waste(1, s1), 0);
        // Window span below it: 3 pages, lowered so block 0 stays in the null area
        // (base <= null - page = 10): [745, 835) has base 745 mod 30 = 25 > 10, so
        // the span starts at 730 (base 10) and wastes 15 bytes at its top.
        let s2 = a.floor_span(2).unwrap();
        assert_eq!(a.span(s2), (730, 835));
        assert_eq!(a.base(2), 10);
        assert_eq!(a.ids_in(2, s2).1 - a.ids_in(2, s2).0, 3);
        assert_eq!(a.edge_waste(2, s2), 15);
        assert!(a.pinned(s1) && a.pinned(s2) && !a.pinned(0));
        assert_eq!(a.num_grid_regions(), a.num_regions() - 2);
        // The grid covers [40, 730) in regions of 60 (multiples of the growing page):
        // the growing group wastes nothing at any full grid region.
        assert_eq!(a.span(0), (40, 100));
        assert_eq!(a.span(a.num_grid_regions() - 1), (700, 730));
        for r in 0..a.num_grid_regions() - 1 {
            assert_eq!(a.edge_waste(0, r), 0);
        }
        assert_eq!(a.base(0), 0);
        assert_eq!(a.max_region_ids(1), 1); // a whole grid region holds 1 state page
                                            // Waste counts the null area and the edges of owned regions only.
        let mut w = a.clone();
        w.set_owner(s1, Some(1));
        w.set_owner(s2, Some(2));
        assert_eq!(w.waste_bytes(), 40 + 15);
        // Floors that do not fit above the null area are refused.
        let mut big = cfg.clone();
        big.floor_blocks[1] = 30;
        assert!(Arena::with_roles(big, roles.clone()).is_err());
        // A read null block larger than the null area is refused.
        let mut r = roles;
        r.null_read[1] = true;
        assert!(Arena::with_roles(cfg.clone(), r.clone()).is_ok());
        let mut c = cfg;
        c.page_bytes[1] = 41;
        assert!(Arena::with_roles(c, r).is_err());
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
