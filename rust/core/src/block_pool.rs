//! The block pool of one KV-cache group.
//!
//! Ids `0..num_blocks` are local to this pool; id 0 is the null block, which is never
//! handed out and never freed (sliding-window tables point at it for slots that left
//! the window). Every other block is either *in use* (reference count > 0) or *free*
//! (reference count 0, linked into the free queue). A free block may still carry its
//! block hash: it then stays findable by prefix lookup until allocation hands it out
//! again, which evicts it.
//!
//! The free queue is an intrusive doubly linked list over block indices, so a prefix
//! hit can pull a block out of the middle in O(1). Allocation pops from the head. A
//! freed block that carries a hash (a prefix hit may still reuse it) joins the tail,
//! so cached blocks are evicted least recently freed first; one without a hash can
//! never be hit, so it joins the head and is reused before any cached block (as vLLM's
//! pool does). Within one `free` call both kinds keep the order given: the first
//! unhashed block given becomes the new head.
//!
//! Every public operation validates its whole input before mutating anything, so an
//! error leaves the pool exactly as it was.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use crate::error::{Error, Result};

mod hash_index;
mod regions;
pub(crate) use hash_index::prefetch_read;
use hash_index::{HashIndex, Probe};
use regions::Regions;

/// A block id, local to one pool. `i32` because block tables cross into numpy as int32.
pub type BlockId = i32;
/// A 128-bit block hash (see `prefix_hash.rs` for how it is computed).
pub type BlockHash = u128;

/// The null block: placeholder in block tables, never allocated.
pub const NULL_BLOCK: BlockId = 0;

const NIL: u32 = u32::MAX;

/// Bytes of bookkeeping a pool keeps per block (reference count, 128-bit hash, hash
/// flag, free-queue and hash-chain links), rounded up.
pub const POOL_BYTES_PER_BLOCK: usize = 40;

/// The one rule every constructor that builds pools follows (`BlockPool::new`,
/// `PoolRegistry::new`, `Manager::new`): the bookkeeping of all the pools it is about
/// to build is reserved fallibly, in one piece, and released at once. A mistyped
/// `num_blocks` near 2**31 asks for ~80 GB; where the allocator cannot provide that,
/// the constructor returns an error instead of aborting the process halfway through
/// building the pools. Counts beyond the int32 id space are left to `BlockPool::new`
/// to refuse with its own message.
pub fn check_bookkeeping_fits(num_blocks: impl IntoIterator<Item = usize> + Clone) -> Result<()> {
    let total = num_blocks
        .clone()
        .into_iter()
        .filter(|&n| n <= i32::MAX as usize)
        .try_fold(0usize, |acc, n| {
            n.checked_mul(POOL_BYTES_PER_BLOCK)
                .and_then(|b| acc.checked_add(b))
        })
        .filter(|&bytes| Vec::<u8>::new().try_reserve_exact(bytes).is_ok());
    match total {
        Some(_) => Ok(()),
        None => Err(Error::InvalidArgument(format!(
            "the pools' bookkeeping ({} blocks in all, {POOL_BYTES_PER_BLOCK} bytes each) does not fit in memory",
            num_blocks
                .into_iter()
                .fold(0u128, |acc, n| acc + n as u128)
        ))),
    }
}

/// `n` copies of `value` in a vector allocated fallibly (an error, never an abort,
/// when the allocator refuses: the total was checked, but memory can run out between).
fn try_vec<T: Clone>(n: usize, value: T) -> Result<Vec<T>> {
    let mut v = Vec::new();
    v.try_reserve_exact(n).map_err(|_| {
        Error::InvalidArgument(format!(
            "a pool of {n} blocks: its bookkeeping does not fit in memory"
        ))
    })?;
    v.resize(n, value);
    Ok(v)
}
/// Marks an uncached block already seen earlier in the batch `cache_blocks` validates
/// (an uncached block's chain links are otherwise always `NIL`).
const SEEN: u32 = u32::MAX - 1;

/// Map hasher for keys that are already hashes. One folded 64x64->128 multiply mixes
/// every input bit into the high bits hashbrown uses for its control bytes, so even
/// structured keys (small integers in tests) spread well; SipHash would cost ~10x more.
#[derive(Default)]
pub struct FoldHasher(u64);

const FOLD_MUL: u64 = 0x9E37_79B9_7F4A_7C15;

#[inline]
fn fold_mix(x: u64) -> u64 {
    let m = (x as u128).wrapping_mul(FOLD_MUL as u128);
    (m as u64) ^ ((m >> 64) as u64)
}

impl Hasher for FoldHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut buf = [0u8; 8];
            buf[..chunk.len()].copy_from_slice(chunk);
            self.0 = fold_mix(self.0 ^ u64::from_le_bytes(buf));
        }
    }
    fn write_u128(&mut self, v: u128) {
        self.0 = fold_mix(self.0 ^ (v as u64) ^ ((v >> 64) as u64).rotate_left(32));
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = fold_mix(self.0 ^ v);
    }
    fn write_u32(&mut self, v: u32) {
        self.write_u64(v as u64);
    }
    fn write_i32(&mut self, v: i32) {
        self.write_u64(v as u32 as u64);
    }
    fn write_usize(&mut self, v: usize) {
        self.write_u64(v as u64);
    }
}

pub type FastMap<K, V> = HashMap<K, V, BuildHasherDefault<FoldHasher>>;

/// What happened to the prefix cache, recorded for KV-event consumers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolEvent {
    /// A full block was cached under `hash`.
    Stored { block: BlockId, hash: BlockHash },
    /// `block` no longer serves `hash` (evicted or reallocated).
    Removed { block: BlockId, hash: BlockHash },
    /// The whole prefix cache of this pool was cleared.
    AllCleared,
}

/// The pool of one KV-cache group. See the module docs for the invariants.
#[derive(Debug, Clone)]
pub struct BlockPool {
    ref_cnt: Vec<u32>,
    /// The block's hash; meaningful only where `has_hash` is set (otherwise scratch).
    hash: Vec<BlockHash>,
    has_hash: Vec<bool>,
    // Free-queue links (valid only while the block is free).
    prev: Vec<u32>,
    next: Vec<u32>,
    // Doubly linked chain of the blocks sharing one hash, oldest first, so appending
    // and removing from the middle are O(1) however many copies a hash has. The
    // chain's first block's `hash_prev` is its last block (the chain's tail).
    hash_prev: Vec<u32>,
    hash_next: Vec<u32>,
    head: u32,
    tail: u32,
    num_free: usize,
    num_cached_free: usize,
    /// hash -> first block of its chain (`hash_index.rs`).
    index: HashIndex,
    events: Vec<PoolEvent>,
    record_events: bool,
    /// Scratch for `free`: the unhashed blocks of one call, prepended in order.
    to_head: Vec<u32>,
    /// Non-null blocks backed by memory (all of them unless the pool is elastic).
    num_present: usize,
    /// Elastic pools only: which ids are backed now, per-region counts (`regions.rs`).
    regions: Option<Box<Regions>>,
}

impl BlockPool {
    /// A pool of `num_blocks` blocks, block 0 reserved as the null block.
    /// All other blocks start free, queued in id order.
    pub fn new(num_blocks: usize) -> Result<Self> {
        if num_blocks == 0 {
            return Err(Error::InvalidArgument(
                "num_blocks must be at least 1 (block 0 is the null block)".into(),
            ));
        }
        if num_blocks > i32::MAX as usize {
            return Err(Error::InvalidArgument(format!(
                "num_blocks {num_blocks} exceeds the int32 block-id space"
            )));
        }
        let n = num_blocks;
        check_bookkeeping_fits([n])?;
        // At most one chain per block: an index presized for every block never grows
        // (a rehash inside a step costs a page-faulting copy of the whole table).
        let index = HashIndex::with_capacity(n - 1);
        let mut pool = BlockPool {
            ref_cnt: try_vec(n, 0)?,
            hash: try_vec(n, 0)?,
            has_hash: try_vec(n, false)?,
            prev: try_vec(n, NIL)?,
            next: try_vec(n, NIL)?,
            hash_prev: try_vec(n, NIL)?,
            hash_next: try_vec(n, NIL)?,
            head: NIL,
            tail: NIL,
            num_free: 0,
            num_cached_free: 0,
            index,
            events: Vec::new(),
            record_events: true,
            to_head: Vec::new(),
            num_present: n - 1,
            regions: None,
        };
        for b in 1..n as u32 {
            pool.push_tail(b);
        }
        Ok(pool)
    }

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
        pool.ref_cnt = vec![0; n];
        pool.hash = vec![0; n];
        pool.has_hash = vec![false; n];
        pool.prev = vec![NIL; n];
        pool.next = vec![NIL; n];
        pool.hash_prev = vec![NIL; n];
        pool.hash_next = vec![NIL; n];
        pool.index = HashIndex::with_capacity(n - 1);
        pool.num_present = 0;
        pool.regions = Some(Box::new(Regions::new(region_of, num_regions)));
        Ok(pool)
    }

    /// Whether this pool's ids are backed region by region (an elastic pool).
    pub fn is_elastic(&self) -> bool {
        self.regions.is_some()
    }

    /// Non-null blocks backed by memory now (all of them in a static pool).
    pub fn num_present(&self) -> usize {
        self.num_present
    }

    /// Free blocks without a hash (allocating them evicts nothing).
    pub fn num_uncached_free(&self) -> usize {
        self.num_free - self.num_cached_free
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
        if b == NIL || !self.has_hash[b as usize] {
            return None;
        }
        Some(self.block_value(b as BlockId))
    }

    /// Record what cached block `id` is worth (tokens of recompute a hit on it saves),
    /// for choosing which region to empty. No-op on a static pool or an uncached block.
    pub fn set_block_value(&mut self, id: BlockId, value: u32) -> Result<()> {
        let b = self.check_real(id)?;
        if !self.has_hash[b as usize] {
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
        for b in lo..hi {
            g.present[b as usize] = true;
        }
        g.blocks[r] = hi - lo;
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

    /// Turn event recording on or off (a pool nobody drains should not grow without
    /// bound). Turning it off drops the events not yet taken.
    pub fn set_record_events(&mut self, on: bool) {
        self.record_events = on;
        if !on {
            self.events.clear();
        }
    }

    /// Whether events are being recorded.
    pub fn record_events(&self) -> bool {
        self.record_events
    }

    pub fn num_blocks(&self) -> usize {
        self.ref_cnt.len()
    }
    /// Free blocks, cached or not (the null block is never counted).
    pub fn num_free(&self) -> usize {
        self.num_free
    }
    /// Free blocks that still carry a hash (reusable by a prefix hit).
    pub fn num_cached(&self) -> usize {
        self.num_cached_free
    }
    /// Blocks with a reference count above zero.
    pub fn num_in_use(&self) -> usize {
        self.num_present - self.num_free
    }
    /// Fraction of the present non-null blocks in use.
    pub fn usage(&self) -> f64 {
        let total = self.num_present;
        if total == 0 {
            0.0
        } else {
            self.num_in_use() as f64 / total as f64
        }
    }

    pub fn ref_count(&self, id: BlockId) -> Result<u32> {
        let b = self.check_id(id)?;
        Ok(self.ref_cnt[b as usize])
    }

    pub fn block_hash(&self, id: BlockId) -> Result<Option<BlockHash>> {
        let b = self.check_id(id)? as usize;
        Ok(self.has_hash[b].then_some(self.hash[b]))
    }

    /// Hand out `n` blocks from the head of the free queue (least recently freed first),
    /// each with reference count 1. A cached block handed out loses its hash.
    pub fn allocate(&mut self, n: usize) -> Result<Vec<BlockId>> {
        let mut out = Vec::new();
        self.allocate_into(n, &mut out)?;
        Ok(out)
    }

    /// Like `allocate`, appending to `out` (lets batched callers reuse one buffer).
    pub fn allocate_into(&mut self, n: usize, out: &mut Vec<BlockId>) -> Result<()> {
        if n > self.num_free {
            return Err(Error::OutOfBlocks {
                requested: n,
                free: self.num_free,
            });
        }
        out.reserve(n);
        if self.regions.is_none() && n > 1 {
            self.allocate_static_batch(n, out);
            return Ok(());
        }
        for _ in 0..n {
            // `n <= num_free` and the queue holds exactly `num_free` blocks, so the
            // head is a real block here. An elastic pool packs: a free uncached block
            // of its best-ranked region first, and only then the LRU cached head.
            let b = match self.regions.as_ref().and_then(|g| g.best_uncached()) {
                Some(b) => b,
                None => self.head,
            };
            debug_assert_ne!(b, NIL);
            self.unlink(b);
            if let Some(g) = self.regions.as_mut() {
                g.used(b);
            }
            self.ref_cnt[b as usize] = 1;
            self.drop_hash(b);
            out.push(b as BlockId);
        }
        Ok(())
    }

    /// `allocate_into` for a static pool (`n <= num_free`): the queue's first `n` blocks,
    /// handed out in order exactly as one at a time, but in three passes so that their
    /// cache misses overlap instead of following one another: walk the queue (the only
    /// dependent loads) prefetching each block's bookkeeping, then prefetch the index
    /// slots of the hashes they lose, then hand them out.
    fn allocate_static_batch(&mut self, n: usize, out: &mut Vec<BlockId>) {
        let start = out.len();
        let mut b = self.head;
        for _ in 0..n {
            let Some(&nx) = self.next.get(b as usize) else {
                break; // `n <= num_free`: the queue holds `n` blocks (never reached)
            };
            let bi = b as usize;
            prefetch_read(&self.hash[bi]);
            prefetch_read(&self.has_hash[bi]);
            prefetch_read(&self.ref_cnt[bi]);
            prefetch_read(&self.hash_prev[bi]);
            prefetch_read(&self.hash_next[bi]);
            prefetch_read(&self.prev[bi]);
            out.push(b as BlockId);
            b = nx;
        }
        for &id in &out[start..] {
            let bi = id as usize;
            if self.has_hash[bi] {
                self.index.prefetch(self.hash[bi]);
            }
        }
        for &id in &out[start..] {
            let b = id as u32;
            self.unlink(b);
            self.ref_cnt[b as usize] = 1;
            self.drop_hash(b);
        }
    }

    /// Start loading the prefix-index slot `h` would be probed at (a hint for a caller
    /// about to cache or look up many hashes; no effect on results).
    #[inline]
    pub(crate) fn prefetch_index(&self, h: BlockHash) {
        self.index.prefetch(h);
    }

    /// Drop one reference from each id (an id may repeat). Blocks reaching zero keep
    /// their hashes; in the order they reach zero, hashed ones join the tail of the free
    /// queue and unhashed ones the head (the first of them becomes the head).
    pub fn free(&mut self, ids: &[BlockId]) -> Result<()> {
        // Validate by decrementing tentatively (sequential semantics for repeated ids,
        // no auxiliary map), then undo, then apply for real.
        for (i, &id) in ids.iter().enumerate() {
            let ok = match self.check_real(id) {
                Err(e) => Err(e),
                Ok(b) if self.ref_cnt[b as usize] == 0 => Err(Error::DoubleFree { id }),
                Ok(b) => Ok(b),
            };
            match ok {
                Ok(b) => self.ref_cnt[b as usize] -= 1,
                Err(e) => {
                    self.undo_decrements(&ids[..i]);
                    return Err(e);
                }
            }
        }
        self.undo_decrements(ids);
        self.release_refs(ids.iter().map(|&id| id as u32));
        Ok(())
    }

    /// Drop one reference of each block. In the order they reach zero, hashed ones join
    /// the free queue's tail and unhashed ones its head, the first of them becoming the
    /// head (vLLM's order). A block that is the null block, out of range or already at
    /// zero is skipped (`free` has refused such a batch before; `free_held` trusts it).
    fn release_refs(&mut self, blocks: impl Iterator<Item = u32>) {
        let mut to_head = std::mem::take(&mut self.to_head);
        to_head.clear();
        for b in blocks {
            let Some(r) = self
                .ref_cnt
                .get_mut(b as usize)
                .filter(|r| b != 0 && **r > 0)
            else {
                continue;
            };
            *r -= 1;
            if *r > 0 {
                continue;
            }
            if let Some(g) = self.regions.as_mut() {
                g.released(b);
                if !self.has_hash[b as usize] {
                    g.add_uncached(b);
                }
            }
            if self.has_hash[b as usize] {
                self.push_tail(b);
            } else {
                to_head.push(b);
            }
        }
        for &b in to_head.iter().rev() {
            self.push_head(b);
        }
        self.to_head = to_head;
    }

    /// Validate a `free` batch without changing anything: the error `free` would return.
    pub fn check_free(&self, ids: &[BlockId]) -> Result<()> {
        let mut seen: Option<FastMap<u32, u32>> = None;
        for (i, &id) in ids.iter().enumerate() {
            let b = self.check_real(id)?;
            let refs = self.ref_cnt[b as usize];
            if refs == 0 {
                return Err(Error::DoubleFree { id });
            }
            // A repeated id needs as many references as occurrences; the map is only
            // built once a batch has more than one id.
            if i > 0 {
                let map = seen.get_or_insert_with(|| {
                    let mut m = FastMap::default();
                    m.insert(ids[0] as u32, 1);
                    m
                });
                let c = map.entry(b).or_insert(0);
                *c += 1;
                if *c > refs {
                    return Err(Error::DoubleFree { id });
                }
            }
        }
        Ok(())
    }

    /// Add one reference to each id. A free block leaves the free queue (a prefix hit).
    pub fn touch(&mut self, ids: &[BlockId]) -> Result<()> {
        for &id in ids {
            self.check_real(id)?;
        }
        for &id in ids {
            let b = id as u32;
            if self.ref_cnt[b as usize] == 0 {
                self.unlink(b);
                if let Some(g) = self.regions.as_mut() {
                    g.used(b);
                }
            }
            // A u32 count cannot overflow in practice: it would take 2^32 references
            // to one block, each held by a live request.
            self.ref_cnt[b as usize] += 1;
        }
        Ok(())
    }

    /// Mark in-use full blocks as cached under the given hashes (`Stored` events).
    /// Re-caching a block under the hash it already has is a no-op (no event).
    pub fn cache_blocks(&mut self, ids: &[BlockId], hashes: &[BlockHash]) -> Result<()> {
        if ids.len() != hashes.len() {
            return Err(Error::LengthMismatch {
                what: "cache_blocks ids and hashes",
                left: ids.len(),
                right: hashes.len(),
            });
        }
        // Validate in order. An uncached block seen earlier in this batch is marked
        // `SEEN` in its (otherwise NIL) chain link, with the tentative hash in its
        // scratch hash slot, so a repeat with another hash is caught in O(1).
        for (i, (&id, &h)) in ids.iter().zip(hashes).enumerate() {
            let err = match self.check_real(id) {
                Err(e) => Some(e),
                Ok(b) => {
                    let b = b as usize;
                    if self.ref_cnt[b] == 0 {
                        Some(Error::NotInUse { id })
                    } else if self.has_hash[b] || self.hash_next[b] == SEEN {
                        // Cached already, or tentatively earlier in this batch.
                        (self.hash[b] != h).then_some(Error::AlreadyCached { id })
                    } else {
                        self.hash[b] = h;
                        self.hash_next[b] = SEEN;
                        None
                    }
                }
            };
            if let Some(e) = err {
                self.clear_seen(&ids[..i]);
                return Err(e);
            }
        }
        for (&id, &h) in ids.iter().zip(hashes) {
            let b = id as u32;
            if self.has_hash[b as usize] {
                continue;
            }
            // Validated in use above, so `num_cached` (free and hashed) is unchanged.
            self.link_hash(b, h);
            if self.record_events {
                self.events.push(PoolEvent::Stored { block: id, hash: h });
            }
        }
        Ok(())
    }

    /// Drop one reference from each block of `ids`, which the caller knows to be real
    /// and in use (the manager, for blocks its tables hold): `free(ids)` without the
    /// validation pass, with its queue order. Cheap guards keep a broken caller from
    /// corrupting the pool: an id `free` would refuse is skipped, as the manager ignored
    /// `free`'s error before.
    pub(crate) fn free_held(&mut self, ids: &[BlockId]) {
        debug_assert!(self.check_free(ids).is_ok());
        self.release_refs(ids.iter().map(|&id| id as u32));
    }

    /// Cache a block the caller knows to be real, in use and uncached (the manager, for
    /// blocks its request just filled) under `h`, recording no pool event (the manager
    /// records its own): `cache_blocks(&[id], &[h])` without the validation.
    /// A block that is not real, not in use or already cached is left alone, as
    /// `cache_blocks` would have refused it.
    pub(crate) fn cache_held(&mut self, id: BlockId, h: BlockHash) {
        debug_assert!(self.check_real(id).is_ok() && self.ref_cnt[id as usize] > 0);
        let b = id as u32;
        let ok = b != 0
            && self.ref_cnt.get(b as usize).is_some_and(|&r| r > 0)
            && !self.has_hash[b as usize];
        if ok {
            self.link_hash(b, h);
        }
    }

    /// The block caching `hash` (the oldest, when several do), if any.
    pub fn lookup_one(&self, hash: BlockHash) -> Option<BlockId> {
        self.index
            .get(hash, &self.hash)
            .map(|first| first as BlockId)
    }

    /// One block id per hash, `-1` for a miss.
    pub fn lookup(&self, hashes: &[BlockHash]) -> Vec<BlockId> {
        hashes
            .iter()
            .map(|h| self.lookup_one(*h).unwrap_or(-1))
            .collect()
    }

    /// Drop the hashes of the given blocks (`Removed` events). In-use blocks stay in
    /// use; free blocks stay free (in place in the queue) but can no longer be hit.
    /// Uncached blocks are a no-op.
    pub fn evict(&mut self, ids: &[BlockId]) -> Result<()> {
        for &id in ids {
            self.check_real(id)?;
        }
        for &id in ids {
            self.drop_hash(id as u32);
        }
        Ok(())
    }

    /// Forget every cached hash. Refused while any block is in use.
    pub fn reset_prefix_cache(&mut self) -> Result<()> {
        let in_use = self.num_in_use();
        if in_use > 0 {
            return Err(Error::PoolInUse { in_use });
        }
        if let Some(g) = self.regions.as_mut() {
            // Every cached block is free here: it becomes a free uncached block.
            for b in 0..self.has_hash.len() {
                if self.has_hash[b] {
                    g.uncache(b as u32);
                    g.add_uncached(b as u32);
                }
            }
        }
        self.index.clear();
        self.has_hash.iter_mut().for_each(|h| *h = false);
        self.hash_prev.iter_mut().for_each(|n| *n = NIL);
        self.hash_next.iter_mut().for_each(|n| *n = NIL);
        self.num_cached_free = 0;
        if self.record_events {
            self.events.push(PoolEvent::AllCleared);
        }
        Ok(())
    }

    /// Drain the recorded events, oldest first.
    pub fn take_events(&mut self) -> Vec<PoolEvent> {
        std::mem::take(&mut self.events)
    }

    /// The events recorded and not yet taken, oldest first (does not drain them).
    pub fn pending_events(&self) -> &[PoolEvent] {
        &self.events
    }

    /// The free queue from head (next to be allocated) to tail.
    pub fn free_queue(&self) -> Vec<BlockId> {
        let mut out = Vec::with_capacity(self.num_free);
        let mut cur = self.head;
        while cur != NIL && out.len() <= self.num_free {
            out.push(cur as BlockId);
            cur = self.next[cur as usize];
        }
        out
    }

    /// All reference counts, indexed by block id (entry 0 is the null block: 0).
    pub fn ref_counts(&self) -> &[u32] {
        &self.ref_cnt
    }

    /// `(block, hash)` for every cached block, in block-id order.
    pub fn cached_blocks(&self) -> Vec<(BlockId, BlockHash)> {
        (0..self.num_blocks())
            .filter(|&b| self.has_hash[b])
            .map(|b| (b as BlockId, self.hash[b]))
            .collect()
    }

    /// Every hash-map entry as `(hash, block)`: chains expanded oldest first, hashes
    /// in ascending order.
    pub fn hash_entries(&self) -> Vec<(BlockHash, BlockId)> {
        let mut keys: Vec<_> = self
            .index
            .blocks()
            .map(|first| (self.hash[first as usize], first))
            .collect();
        keys.sort_unstable();
        let mut out = Vec::with_capacity(keys.len());
        for (h, first) in keys {
            let mut cur = first;
            // Bounded so a corrupted (cyclic) chain cannot hang `check_invariants`.
            let mut steps = 0;
            while cur != NIL && steps < self.num_blocks() {
                out.push((h, cur as BlockId));
                cur = self.hash_next[cur as usize];
                steps += 1;
            }
        }
        out
    }

    /// Check every invariant; used by tests and fuzzers. Returns the first violation.
    #[allow(clippy::needless_range_loop)]
    pub fn check_invariants(&self) -> std::result::Result<(), String> {
        let n = self.num_blocks();
        if self.ref_cnt[0] != 0 || self.has_hash[0] {
            return Err("null block has a reference or a hash".into());
        }
        let q = self.free_queue();
        if q.len() != self.num_free {
            return Err(format!(
                "free queue has {} entries, num_free {}",
                q.len(),
                self.num_free
            ));
        }
        let mut in_queue = vec![false; n];
        let mut prev = NIL;
        for &b in &q {
            if b == 0 || in_queue[b as usize] {
                return Err(format!("block {b} queued twice or null in queue"));
            }
            if self.prev[b as usize] != prev {
                return Err(format!("block {b}: broken back link in the free queue"));
            }
            in_queue[b as usize] = true;
            prev = b as u32;
        }
        if self.tail != prev {
            return Err("free-queue tail is not its last block".into());
        }
        let present = |b: usize| self.regions.as_ref().is_none_or(|g| g.present[b]);
        let mut cached_free = 0;
        for b in 1..n {
            if !present(b) && (self.ref_cnt[b] != 0 || self.has_hash[b]) {
                return Err(format!("absent block {b} has a reference or a hash"));
            }
            if (self.ref_cnt[b] == 0 && present(b)) != in_queue[b] {
                return Err(format!(
                    "block {b}: ref {} but in_queue {}",
                    self.ref_cnt[b], in_queue[b]
                ));
            }
            if !in_queue[b] && (self.prev[b] != NIL || self.next[b] != NIL) {
                return Err(format!("block {b} is in use but keeps free-queue links"));
            }
            if !self.has_hash[b] && (self.hash_prev[b] != NIL || self.hash_next[b] != NIL) {
                return Err(format!("uncached block {b} keeps hash-chain links"));
            }
            if in_queue[b] && self.has_hash[b] {
                cached_free += 1;
            }
        }
        if cached_free != self.num_cached_free {
            return Err(format!(
                "num_cached {} but counted {cached_free}",
                self.num_cached_free
            ));
        }
        self.index.check(&self.hash)?;
        for first in self.index.blocks() {
            let h = self.hash[first as usize];
            let last = self.hash_prev[first as usize];
            if !self.has_hash[first as usize] || last == NIL || self.hash_next[last as usize] != NIL
            {
                return Err(format!("chain of hash {h:#x} has a dangling end"));
            }
            let mut cur = first;
            let mut steps = 0;
            while self.hash_next[cur as usize] != NIL {
                let nx = self.hash_next[cur as usize];
                if self.hash_prev[nx as usize] != cur || steps > n {
                    return Err(format!("chain of hash {h:#x} is broken at block {nx}"));
                }
                cur = nx;
                steps += 1;
            }
            if cur != last {
                return Err(format!("chain of hash {h:#x} does not end at its tail"));
            }
        }
        let entries = self.hash_entries();
        let carried = self.has_hash.iter().filter(|&&h| h).count();
        if entries.len() != carried {
            return Err(format!(
                "{} map entries but {carried} hashed blocks",
                entries.len()
            ));
        }
        for (h, b) in entries {
            if !self.has_hash[b as usize] || self.hash[b as usize] != h {
                return Err(format!("map entry for block {b} does not match its hash"));
            }
        }
        let counted = (1..n).filter(|&b| present(b)).count();
        if counted != self.num_present {
            return Err(format!(
                "num_present {} but counted {counted}",
                self.num_present
            ));
        }
        if let Some(g) = self.regions.as_ref() {
            self.check_regions(g)?;
        }
        Ok(())
    }

    /// The per-region counts and lists of an elastic pool agree with its blocks.
    fn check_regions(&self, g: &Regions) -> std::result::Result<(), String> {
        let nr = g.range.len();
        let (mut in_use, mut blocks, mut value, mut ucount) = (
            vec![0u32; nr],
            vec![0u32; nr],
            vec![0u64; nr],
            vec![0u32; nr],
        );
        for b in 1..self.num_blocks() {
            let r = g.region_of[b];
            if r == NIL {
                if g.present[b] {
                    return Err(format!("block {b} lies in no region but is present"));
                }
                continue;
            }
            let r = r as usize;
            if !g.present[b] {
                continue;
            }
            blocks[r] += 1;
            if self.ref_cnt[b] > 0 {
                in_use[r] += 1;
            } else if !self.has_hash[b] {
                ucount[r] += 1;
            }
            if self.has_hash[b] {
                value[r] += g.value[b] as u64;
            } else if g.value[b] != 0 {
                return Err(format!("uncached block {b} keeps a value"));
            }
        }
        for r in 0..nr {
            if blocks[r] != 0 && blocks[r] != g.range[r].1 - g.range[r].0 {
                return Err(format!("region {r} is partly present"));
            }
            if blocks[r] != g.blocks[r]
                || in_use[r] != g.in_use[r]
                || value[r] != g.cached_value[r]
                || ucount[r] != g.ucount[r]
            {
                return Err(format!("region {r}: counters differ from its blocks"));
            }
            let mut cur = g.uhead[r];
            let mut len = 0;
            while cur != NIL && len <= ucount[r] {
                let c = cur as usize;
                if self.ref_cnt[c] != 0 || self.has_hash[c] || g.region_of[c] as usize != r {
                    return Err(format!("region {r}: block {cur} wrongly on its free list"));
                }
                len += 1;
                cur = g.unext[c];
            }
            if len != ucount[r] {
                return Err(format!("region {r}: free-uncached list length {len}"));
            }
            if (ucount[r] > 0) != g.ready.contains(&(g.rank[r], r as u32)) {
                return Err(format!("region {r}: ready set out of date"));
            }
        }
        if g.ready.len() != ucount.iter().filter(|&&c| c > 0).count() {
            return Err("ready set holds stale regions".into());
        }
        Ok(())
    }

    // --- internals -------------------------------------------------------------

    fn check_id(&self, id: BlockId) -> Result<u32> {
        if id < 0 || id as usize >= self.num_blocks() {
            return Err(Error::InvalidBlockId {
                id: id as i64,
                num_blocks: self.num_blocks(),
            });
        }
        Ok(id as u32)
    }

    fn check_real(&self, id: BlockId) -> Result<u32> {
        let b = self.check_id(id)?;
        if b == 0 {
            return Err(Error::NullBlock);
        }
        if let Some(g) = self.regions.as_ref() {
            if !g.present[b as usize] {
                return Err(Error::InvalidArgument(format!(
                    "block {id} is not backed by memory: its bytes lie in no arena region this group owns"
                )));
            }
        }
        Ok(b)
    }

    /// Re-add the references `free`'s validation took from `ids` (all valid ids).
    fn undo_decrements(&mut self, ids: &[BlockId]) {
        for &id in ids {
            self.ref_cnt[id as usize] += 1;
        }
    }

    /// Clear the `SEEN` marks `cache_blocks`' validation left on `ids` (all valid ids).
    fn clear_seen(&mut self, ids: &[BlockId]) {
        for &id in ids {
            let b = id as usize;
            if !self.has_hash[b] {
                self.hash_next[b] = NIL;
            }
        }
    }

    fn push_tail(&mut self, b: u32) {
        self.prev[b as usize] = self.tail;
        self.next[b as usize] = NIL;
        if self.tail == NIL {
            self.head = b;
        } else {
            self.next[self.tail as usize] = b;
        }
        self.tail = b;
        self.num_free += 1;
        if self.has_hash[b as usize] {
            self.num_cached_free += 1;
        }
    }

    fn push_head(&mut self, b: u32) {
        self.next[b as usize] = self.head;
        self.prev[b as usize] = NIL;
        if self.head == NIL {
            self.tail = b;
        } else {
            self.prev[self.head as usize] = b;
        }
        self.head = b;
        self.num_free += 1;
        if self.has_hash[b as usize] {
            self.num_cached_free += 1;
        }
    }

    fn unlink(&mut self, b: u32) {
        let (p, nx) = (self.prev[b as usize], self.next[b as usize]);
        if p == NIL {
            self.head = nx;
        } else {
            self.next[p as usize] = nx;
        }
        if nx == NIL {
            self.tail = p;
        } else {
            self.prev[nx as usize] = p;
        }
        self.prev[b as usize] = NIL;
        self.next[b as usize] = NIL;
        self.num_free -= 1;
        if self.has_hash[b as usize] {
            self.num_cached_free -= 1;
        } else if let Some(g) = self.regions.as_mut() {
            g.remove_uncached(b);
        }
    }

    /// Give `b` the hash `h` and append it to the end of `h`'s chain, so the oldest
    /// copy is the one lookups find.
    fn link_hash(&mut self, b: u32, h: BlockHash) {
        let bi = b as usize;
        self.hash[bi] = h;
        self.has_hash[bi] = true;
        self.hash_next[bi] = NIL;
        // One probe: the hash either is new or extends its chain.
        match self.index.probe(h, &self.hash) {
            Probe::Vacant(slot) => {
                self.hash_prev[bi] = b;
                self.index.insert_vacant(slot, h, b);
            }
            Probe::Found(slot) => {
                let first = self.index.block_at(slot) as usize;
                let last = self.hash_prev[first];
                self.hash_prev[bi] = last;
                self.hash_next[last as usize] = b;
                self.hash_prev[first] = b;
            }
        }
    }

    /// Remove `b` from its hash chain (if cached) and record a `Removed` event.
    fn drop_hash(&mut self, b: u32) {
        let bi = b as usize;
        if !self.has_hash[bi] {
            return;
        }
        let h = self.hash[bi];
        let (p, nx) = (self.hash_prev[bi], self.hash_next[bi]);
        // The first block is the one whose `hash_prev` (the tail) does not link back.
        let first = self.hash_next[p as usize] != b;
        if first {
            if let Probe::Found(slot) = self.index.probe(h, &self.hash) {
                if nx == NIL {
                    self.index.remove_at(slot);
                } else {
                    self.index.set_block(slot, nx);
                    self.hash_prev[nx as usize] = p;
                }
            }
        } else {
            self.hash_next[p as usize] = nx;
            if nx != NIL {
                self.hash_prev[nx as usize] = p;
            } else if let Probe::Found(slot) = self.index.probe(h, &self.hash) {
                // `b` was the tail: the first block now points at the new one.
                let head = self.index.block_at(slot) as usize;
                self.hash_prev[head] = p;
            }
        }
        self.hash_prev[bi] = NIL;
        self.hash_next[bi] = NIL;
        self.has_hash[bi] = false;
        // A zero-ref block is always linked in the free queue (allocation sets the
        // reference before it drops the hash).
        if self.ref_cnt[bi] == 0 {
            self.num_cached_free -= 1;
        }
        if let Some(g) = self.regions.as_mut() {
            g.uncache(b);
            if self.ref_cnt[bi] == 0 {
                g.add_uncached(b);
            }
        }
        if self.record_events {
            self.events.push(PoolEvent::Removed {
                block: b as BlockId,
                hash: h,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_all_free_in_id_order() {
        let p = BlockPool::new(5).unwrap();
        assert_eq!(p.num_free(), 4);
        assert_eq!(p.num_in_use(), 0);
        assert_eq!(p.free_queue(), vec![1, 2, 3, 4]);
        p.check_invariants().unwrap();
    }

    #[test]
    fn zero_blocks_rejected() {
        assert!(BlockPool::new(0).is_err());
        let p = BlockPool::new(1).unwrap();
        assert_eq!(p.num_free(), 0);
    }

    #[test]
    fn allocate_pops_head_unhashed_free_joins_head_in_order() {
        let mut p = BlockPool::new(6).unwrap();
        let a = p.allocate(3).unwrap();
        assert_eq!(a, vec![1, 2, 3]);
        p.free(&[3, 1]).unwrap();
        assert_eq!(p.free_queue(), vec![3, 1, 4, 5]);
        assert_eq!(p.allocate(3).unwrap(), vec![3, 1, 4]);
        p.check_invariants().unwrap();
    }

    #[test]
    fn hashed_free_joins_tail_unhashed_joins_head() {
        let mut p = BlockPool::new(7).unwrap();
        assert_eq!(p.allocate(4).unwrap(), vec![1, 2, 3, 4]);
        p.cache_blocks(&[2, 4], &[20, 40]).unwrap();
        // Tail first, as a request releases its table: 4 (hashed), 3, 2 (hashed), 1.
        p.free(&[4, 3, 2, 1]).unwrap();
        assert_eq!(p.free_queue(), vec![3, 1, 5, 6, 4, 2]);
        // Reuse takes the never-hittable blocks first; cached ones survive longest.
        assert_eq!(p.allocate(4).unwrap(), vec![3, 1, 5, 6]);
        assert_eq!(p.lookup(&[20, 40]), vec![2, 4]);
        p.check_invariants().unwrap();
    }

    #[test]
    fn out_of_blocks_leaves_state() {
        let mut p = BlockPool::new(3).unwrap();
        let before = p.free_queue();
        assert_eq!(
            p.allocate(3),
            Err(Error::OutOfBlocks {
                requested: 3,
                free: 2
            })
        );
        assert_eq!(p.free_queue(), before);
    }

    #[test]
    fn double_free_and_null_rejected_atomically() {
        let mut p = BlockPool::new(4).unwrap();
        let a = p.allocate(2).unwrap();
        assert_eq!(p.free(&[a[0], a[0]]), Err(Error::DoubleFree { id: a[0] }));
        assert_eq!(p.num_in_use(), 2);
        assert_eq!(p.free(&[a[0], 0]), Err(Error::NullBlock));
        assert_eq!(p.num_in_use(), 2);
        assert!(matches!(
            p.free(&[a[0], 9]),
            Err(Error::InvalidBlockId { id: 9, .. })
        ));
        assert!(matches!(
            p.free(&[-1]),
            Err(Error::InvalidBlockId { id: -1, .. })
        ));
        p.free(&a).unwrap();
        assert_eq!(p.free(&[a[0]]), Err(Error::DoubleFree { id: a[0] }));
        p.check_invariants().unwrap();
    }

    #[test]
    fn cached_free_block_is_hit_then_evicted_on_reallocation() {
        let mut p = BlockPool::new(4).unwrap();
        let a = p.allocate(1).unwrap();
        p.cache_blocks(&a, &[42]).unwrap();
        assert_eq!(p.lookup(&[42, 7]), vec![a[0], -1]);
        p.free(&a).unwrap();
        assert_eq!(p.num_cached(), 1);
        assert_eq!(p.lookup(&[42]), vec![a[0]]);
        // Touch revives it: a prefix hit.
        p.touch(&a).unwrap();
        assert_eq!(p.num_cached(), 0);
        assert_eq!(p.num_in_use(), 1);
        p.free(&a).unwrap();
        // Allocating everything hands the cached block out last (it was freed last)
        // and evicts it.
        let all = p.allocate(3).unwrap();
        assert_eq!(*all.last().unwrap(), a[0]);
        assert_eq!(p.lookup(&[42]), vec![-1]);
        let ev = p.take_events();
        assert_eq!(
            ev,
            vec![
                PoolEvent::Stored {
                    block: a[0],
                    hash: 42
                },
                PoolEvent::Removed {
                    block: a[0],
                    hash: 42
                }
            ]
        );
        assert!(p.take_events().is_empty());
        p.check_invariants().unwrap();
    }

    #[test]
    fn one_hash_many_blocks() {
        let mut p = BlockPool::new(5).unwrap();
        let a = p.allocate(3).unwrap();
        p.cache_blocks(&a, &[9, 9, 9]).unwrap();
        assert_eq!(p.lookup_one(9), Some(a[0]));
        p.evict(&[a[0]]).unwrap();
        assert_eq!(p.lookup_one(9), Some(a[1]));
        p.evict(&[a[2]]).unwrap();
        assert_eq!(p.lookup_one(9), Some(a[1]));
        p.evict(&[a[1]]).unwrap();
        assert_eq!(p.lookup_one(9), None);
        p.check_invariants().unwrap();
    }

    #[test]
    fn cache_rules() {
        let mut p = BlockPool::new(4).unwrap();
        let a = p.allocate(1).unwrap();
        assert!(matches!(
            p.cache_blocks(&[3], &[1]),
            Err(Error::NotInUse { id: 3 })
        ));
        p.cache_blocks(&a, &[1]).unwrap();
        p.cache_blocks(&a, &[1]).unwrap(); // same hash: no-op
        assert_eq!(
            p.cache_blocks(&a, &[2]),
            Err(Error::AlreadyCached { id: a[0] })
        );
        assert!(matches!(
            p.cache_blocks(&a, &[]),
            Err(Error::LengthMismatch { .. })
        ));
        assert_eq!(p.take_events().len(), 1);
    }

    #[test]
    fn reset_only_when_idle() {
        let mut p = BlockPool::new(4).unwrap();
        let a = p.allocate(2).unwrap();
        p.cache_blocks(&a, &[1, 2]).unwrap();
        assert_eq!(p.reset_prefix_cache(), Err(Error::PoolInUse { in_use: 2 }));
        p.free(&a).unwrap();
        p.reset_prefix_cache().unwrap();
        assert_eq!(p.num_cached(), 0);
        assert_eq!(p.lookup(&[1, 2]), vec![-1, -1]);
        assert_eq!(p.take_events().last(), Some(&PoolEvent::AllCleared));
        p.check_invariants().unwrap();
    }

    #[test]
    fn evict_free_cached_keeps_it_free() {
        let mut p = BlockPool::new(3).unwrap();
        let a = p.allocate(1).unwrap();
        p.cache_blocks(&a, &[5]).unwrap();
        p.free(&a).unwrap();
        p.evict(&a).unwrap();
        assert_eq!(p.num_free(), 2);
        assert_eq!(p.num_cached(), 0);
        p.check_invariants().unwrap();
    }
    #[test]
    fn repeated_ids_free_in_the_order_they_reach_zero() {
        let mut p = BlockPool::new(5).unwrap();
        let a = p.allocate(4).unwrap(); // 1 2 3 4
        p.touch(&[1]).unwrap(); // block 1 now has two references
        p.free(&[1, 2, 1, 3]).unwrap();
        assert_eq!(p.free_queue(), vec![2, 1, 3]);
        assert_eq!(p.ref_counts(), &[0, 0, 0, 0, 1]);
        p.free(&a[3..]).unwrap();
        p.check_invariants().unwrap();
    }

    #[test]
    fn failed_free_restores_every_reference() {
        let mut p = BlockPool::new(6).unwrap();
        p.allocate(4).unwrap();
        p.touch(&[2]).unwrap();
        let before = p.clone();
        // Block 2 has two references: the third occurrence is the double free.
        assert_eq!(p.free(&[1, 2, 3, 2, 2]), Err(Error::DoubleFree { id: 2 }));
        assert_eq!(p.ref_counts(), before.ref_counts());
        assert_eq!(p.free_queue(), before.free_queue());
        // The first offending position decides the error.
        assert!(matches!(
            p.free(&[1, 1, 99]),
            Err(Error::DoubleFree { id: 1 })
        ));
        assert!(matches!(
            p.free(&[1, 99, 1, 1]),
            Err(Error::InvalidBlockId { id: 99, .. })
        ));
        assert_eq!(p.ref_counts(), before.ref_counts());
        p.check_invariants().unwrap();
    }

    #[test]
    fn check_free_agrees_with_free() {
        let mut p = BlockPool::new(8).unwrap();
        p.allocate(5).unwrap();
        p.touch(&[3, 3]).unwrap();
        p.free(&[5]).unwrap();
        let batches: [&[BlockId]; 8] = [
            &[1, 2],
            &[3, 3, 3],
            &[3, 3, 3, 3],
            &[5],
            &[0],
            &[1, -3],
            &[4, 1, 4],
            &[],
        ];
        for ids in batches {
            let checked = p.check_free(ids);
            let mut q = p.clone();
            assert_eq!(checked, q.free(ids), "batch {ids:?}");
        }
    }

    #[test]
    fn cache_batch_with_repeats() {
        let mut p = BlockPool::new(6).unwrap();
        let a = p.allocate(3).unwrap();
        // Same block twice, same hash: one Stored event.
        p.cache_blocks(&[a[0], a[1], a[0]], &[7, 8, 7]).unwrap();
        assert_eq!(p.take_events().len(), 2);
        // Same uncached block twice with two hashes: refused, nothing changes, and the
        // validation leaves no trace behind.
        let before = p.cached_blocks();
        assert_eq!(
            p.cache_blocks(&[a[2], a[2]], &[1, 2]),
            Err(Error::AlreadyCached { id: a[2] })
        );
        assert_eq!(p.cache_blocks(&[a[2], 0], &[1, 2]), Err(Error::NullBlock));
        assert_eq!(p.cached_blocks(), before);
        assert!(p.take_events().is_empty());
        p.check_invariants().unwrap();
        p.cache_blocks(&[a[2]], &[2]).unwrap();
        assert_eq!(p.block_hash(a[2]).unwrap(), Some(2));
        p.check_invariants().unwrap();
    }

    #[test]
    fn hash_chain_removal_from_the_middle() {
        let mut p = BlockPool::new(10).unwrap();
        let a = p.allocate(6).unwrap();
        p.cache_blocks(&a, &[5; 6]).unwrap();
        p.evict(&[a[2], a[4]]).unwrap();
        p.check_invariants().unwrap();
        let chain: Vec<_> = p.hash_entries().into_iter().map(|e| e.1).collect();
        assert_eq!(chain, vec![a[0], a[1], a[3], a[5]]);
        // Re-cached blocks join at the end of the chain.
        p.cache_blocks(&[a[2]], &[5]).unwrap();
        p.evict(&[a[0], a[1]]).unwrap();
        assert_eq!(p.lookup_one(5), Some(a[3]));
        p.evict(&[a[3], a[5]]).unwrap();
        assert_eq!(p.lookup_one(5), Some(a[2]));
        p.check_invariants().unwrap();
    }

    #[test]
    fn touch_pulls_from_the_middle_of_the_queue() {
        let mut p = BlockPool::new(6).unwrap();
        p.touch(&[3]).unwrap();
        assert_eq!(p.free_queue(), vec![1, 2, 4, 5]);
        assert_eq!(p.num_in_use(), 1);
        assert!(matches!(
            p.touch(&[2, 6]),
            Err(Error::InvalidBlockId { id: 6, .. })
        ));
        assert_eq!(p.touch(&[2, 0]), Err(Error::NullBlock));
        assert_eq!(p.free_queue(), vec![1, 2, 4, 5]);
        p.touch(&[5, 1, 3]).unwrap();
        assert_eq!(p.free_queue(), vec![2, 4]);
        assert_eq!(p.ref_count(3).unwrap(), 2);
        p.check_invariants().unwrap();
    }

    #[test]
    fn allocation_evicts_cached_blocks_from_the_head() {
        let mut p = BlockPool::new(5).unwrap();
        let a = p.allocate(4).unwrap();
        p.cache_blocks(&a, &[10, 11, 12, 13]).unwrap();
        p.free(&[a[2], a[0], a[3], a[1]]).unwrap();
        assert_eq!(p.num_cached(), 4);
        p.take_events();
        assert_eq!(p.allocate(2).unwrap(), vec![a[2], a[0]]);
        assert_eq!(
            p.take_events(),
            vec![
                PoolEvent::Removed {
                    block: a[2],
                    hash: 12
                },
                PoolEvent::Removed {
                    block: a[0],
                    hash: 10
                },
            ]
        );
        assert_eq!(p.lookup(&[10, 11, 12, 13]), vec![-1, a[1], -1, a[3]]);
        assert_eq!(p.num_cached(), 2);
        p.check_invariants().unwrap();
    }

    #[test]
    fn events_can_be_turned_off() {
        let mut p = BlockPool::new(3).unwrap();
        let a = p.allocate(1).unwrap();
        p.cache_blocks(&a, &[1]).unwrap();
        p.set_record_events(false);
        assert!(p.pending_events().is_empty());
        p.evict(&a).unwrap();
        assert!(p.take_events().is_empty());
    }

    /// Deterministic random walk over every operation, checking the invariants after
    /// each step and that failures change nothing.
    #[test]
    fn random_walk_keeps_invariants() {
        let mut seed: u64 = 0x2545_F491_4F6C_DD1D;
        let mut rnd = move |m: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % m
        };
        let mut p = BlockPool::new(17).unwrap();
        for step in 0..20_000 {
            let before = p.clone();
            let ids: Vec<BlockId> = (0..rnd(5)).map(|_| rnd(19) as BlockId - 1).collect();
            let hs: Vec<BlockHash> = ids.iter().map(|_| rnd(6) as BlockHash).collect();
            let res = match rnd(8) {
                0 => p.allocate(rnd(6) as usize).map(|_| ()),
                1 | 2 => p.free(&ids),
                3 => p.touch(&ids),
                4 => p.cache_blocks(&ids, &hs),
                5 => p.evict(&ids),
                6 => p.reset_prefix_cache(),
                _ => {
                    p.take_events();
                    Ok(())
                }
            };
            if let Err(e) = p.check_invariants() {
                panic!("step {step}: {e}");
            }
            if res.is_err() {
                assert_eq!(p.ref_counts(), before.ref_counts(), "step {step}");
                assert_eq!(p.free_queue(), before.free_queue(), "step {step}");
                assert_eq!(p.hash_entries(), before.hash_entries(), "step {step}");
                assert_eq!(p.pending_events(), before.pending_events(), "step {step}");
            }
        }
    }
}
