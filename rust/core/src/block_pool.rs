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
//!
//! Layout (issue 16): this file is the pool's one concept, its state and its public
//! operations, each validating then applying (about 600 lines, kept whole: the
//! operations share the invariants above and read best side by side). Apart:
//! `links.rs` (free-queue and hash-chain internals), `hash_index.rs` (the prefix
//! index), `elastic.rs` + `regions.rs` (region-backed pools), `invariants.rs`
//! (`check_invariants`), `fold_hasher.rs`, and the unit tests in `tests.rs`.

use crate::error::{Error, Result};

mod elastic;
mod fold_hasher;
mod hash_index;
mod invariants;
mod links;
mod regions;
pub use fold_hasher::{FastMap, FoldHasher};
pub(crate) use hash_index::{huge_pages, prefetch_read};
use hash_index::{HashIndex, Probe};
use regions::Regions;

/// A block id, local to one pool. `i32` because block tables cross into numpy as int32.
pub type BlockId = i32;
/// A 128-bit block hash (see `prefix_hash.rs` for how it is computed).
pub type BlockHash = u128;

/// The null block: placeholder in block tables, never allocated.
pub const NULL_BLOCK: BlockId = 0;

const NIL: u32 = u32::MAX;

/// Bytes of bookkeeping a pool keeps per block (reference count, hash flag, free-queue
/// and hash-chain links in one 32-byte record, and the 128-bit hash).
pub const POOL_BYTES_PER_BLOCK: usize = 48;

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
/// A large one is backed by huge pages where the system offers them (`huge_pages`).
fn try_vec<T: Clone>(n: usize, value: T) -> Result<Vec<T>> {
    let mut v = Vec::new();
    v.try_reserve_exact(n).map_err(|_| {
        Error::InvalidArgument(format!(
            "a pool of {n} blocks: its bookkeeping does not fit in memory"
        ))
    })?;
    huge_pages(&v);
    v.resize(n, value);
    Ok(v)
}
/// Marks an uncached block already seen earlier in the batch `cache_blocks` validates
/// (an uncached block's chain links are otherwise always `NIL`).
const SEEN: u32 = u32::MAX - 1;

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

/// One block's bookkeeping, together in one aligned 32-byte record: an operation on a
/// block (allocate, free, cache, evict) touches one cache line of it, not one line in
/// each of six arrays (its 128-bit hash, which prefix probes compare, stays apart).
#[derive(Debug, Clone, Copy)]
#[repr(C, align(32))]
struct Meta {
    ref_cnt: u32,
    // Free-queue links (valid only while the block is free).
    prev: u32,
    next: u32,
    // Doubly linked chain of the blocks sharing one hash, oldest first, so appending
    // and removing from the middle are O(1) however many copies a hash has. The
    // chain's first block's `hash_prev` is its last block (the chain's tail).
    hash_prev: u32,
    hash_next: u32,
    has_hash: bool,
}

/// A free, uncached block's record (every block's when a pool is built).
const FREE_META: Meta = Meta {
    ref_cnt: 0,
    prev: NIL,
    next: NIL,
    hash_prev: NIL,
    hash_next: NIL,
    has_hash: false,
};

/// The pool of one KV-cache group. See the module docs for the invariants.
#[derive(Debug, Clone)]
pub struct BlockPool {
    /// Per block: reference count, queue and hash-chain links, hash flag (`Meta`).
    m: Vec<Meta>,
    /// The block's hash; meaningful only where `has_hash` is set (otherwise scratch).
    hash: Vec<BlockHash>,
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
            m: try_vec(n, FREE_META)?,
            hash: try_vec(n, 0)?,
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

    /// Non-null blocks backed by memory now (all of them in a static pool).
    pub fn num_present(&self) -> usize {
        self.num_present
    }

    /// Free blocks without a hash (allocating them evicts nothing).
    pub fn num_uncached_free(&self) -> usize {
        self.num_free - self.num_cached_free
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
        self.m.len()
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
        Ok(self.m[b as usize].ref_cnt)
    }

    pub fn block_hash(&self, id: BlockId) -> Result<Option<BlockHash>> {
        let b = self.check_id(id)? as usize;
        Ok(self.m[b].has_hash.then_some(self.hash[b]))
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
        let mut n = n;
        // An elastic pool packs: free uncached blocks of its best-ranked regions first,
        // then the LRU head like a static pool (taking a block adds no free uncached
        // one, so once there is none, every later block is the head).
        while n > 0 {
            let Some(b) = self.regions.as_ref().and_then(|g| g.best_uncached()) else {
                break;
            };
            self.take_free(b, out);
            n -= 1;
        }
        if n > 1 {
            self.allocate_batch(n, out);
            return Ok(());
        }
        for _ in 0..n {
            // `n <= num_free` and the queue holds exactly `num_free` blocks, so the
            // head is a real block here.
            self.take_free(self.head, out);
        }
        Ok(())
    }

    /// Hand out free block `b` (one reference; it loses its hash).
    #[inline]
    fn take_free(&mut self, b: u32, out: &mut Vec<BlockId>) {
        debug_assert_ne!(b, NIL);
        self.unlink(b);
        if let Some(g) = self.regions.as_mut() {
            g.used(b);
        }
        self.m[b as usize].ref_cnt = 1;
        self.drop_hash(b);
        out.push(b as BlockId);
    }

    /// `allocate_into` from the queue's head (`n <= num_free`; an elastic pool with no
    /// free uncached block): the queue's first `n` blocks, handed out in order exactly
    /// as one at a time, but in three passes so that their cache misses overlap instead
    /// of following one another: walk the queue (the only dependent loads) prefetching
    /// each block's bookkeeping, then prefetch the index slots of the hashes they lose,
    /// then hand them out.
    fn allocate_batch(&mut self, n: usize, out: &mut Vec<BlockId>) {
        let start = out.len();
        let mut b = self.head;
        for _ in 0..n {
            let Some(nx) = self.m.get(b as usize).map(|m| m.next) else {
                break; // `n <= num_free`: the queue holds `n` blocks (never reached)
            };
            let bi = b as usize;
            prefetch_read(&self.hash[bi]);
            if let Some(g) = self.regions.as_ref() {
                prefetch_read(&g.region_of[bi]);
                prefetch_read(&g.value[bi]);
            }
            out.push(b as BlockId);
            b = nx;
        }
        for &id in &out[start..] {
            let bi = id as usize;
            if self.m[bi].has_hash {
                self.index.prefetch(self.hash[bi]);
            }
        }
        for &id in &out[start..] {
            let b = id as u32;
            self.unlink(b);
            if let Some(g) = self.regions.as_mut() {
                g.used(b);
            }
            self.m[b as usize].ref_cnt = 1;
            self.drop_hash(b);
        }
    }

    /// Start loading the prefix-index slot `h` would be probed at (a hint for a caller
    /// about to cache or look up many hashes; no effect on results).
    #[inline]
    pub(crate) fn prefetch_index(&self, h: BlockHash) {
        self.index.prefetch(h);
    }

    /// Start loading block `id`'s bookkeeping (reference count, queue and chain links)
    /// for a caller about to release it. A hint: no effect on results.
    #[inline]
    pub(crate) fn prefetch_block(&self, id: BlockId) {
        if let Some(m) = self.m.get(id as usize) {
            prefetch_read(m);
        }
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
                Ok(b) if self.m[b as usize].ref_cnt == 0 => Err(Error::DoubleFree { id }),
                Ok(b) => Ok(b),
            };
            match ok {
                Ok(b) => self.m[b as usize].ref_cnt -= 1,
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
                .m
                .get_mut(b as usize)
                .map(|m| &mut m.ref_cnt)
                .filter(|r| b != 0 && **r > 0)
            else {
                continue;
            };
            *r -= 1;
            if *r > 0 {
                continue;
            }
            if let Some(g) = self.regions.as_mut() {
                g.released(b, self.m[b as usize].has_hash);
                if !self.m[b as usize].has_hash {
                    g.add_uncached(b);
                }
            }
            if self.m[b as usize].has_hash {
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
            let refs = self.m[b as usize].ref_cnt;
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
            if self.m[b as usize].ref_cnt == 0 {
                self.unlink(b);
                if let Some(g) = self.regions.as_mut() {
                    g.used(b);
                }
            }
            // A u32 count cannot overflow in practice: it would take 2^32 references
            // to one block, each held by a live request.
            self.m[b as usize].ref_cnt += 1;
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
                    if self.m[b].ref_cnt == 0 {
                        Some(Error::NotInUse { id })
                    } else if self.m[b].has_hash || self.m[b].hash_next == SEEN {
                        // Cached already, or tentatively earlier in this batch.
                        (self.hash[b] != h).then_some(Error::AlreadyCached { id })
                    } else {
                        self.hash[b] = h;
                        self.m[b].hash_next = SEEN;
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
            if self.m[b as usize].has_hash {
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
        debug_assert!(self.check_real(id).is_ok() && self.m[id as usize].ref_cnt > 0);
        let b = id as u32;
        let ok = b != 0
            && self.m.get(b as usize).is_some_and(|m| m.ref_cnt > 0)
            && !self.m[b as usize].has_hash;
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
            for b in 0..self.m.len() {
                if self.m[b].has_hash {
                    g.uncache(b as u32);
                    g.add_uncached(b as u32);
                }
            }
        }
        self.index.clear();
        for m in self.m.iter_mut() {
            m.has_hash = false;
            m.hash_prev = NIL;
            m.hash_next = NIL;
        }
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
            cur = self.m[cur as usize].next;
        }
        out
    }

    /// All reference counts, indexed by block id (entry 0 is the null block: 0).
    pub fn ref_counts(&self) -> Vec<u32> {
        self.m.iter().map(|m| m.ref_cnt).collect()
    }

    /// `(block, hash)` for every cached block, in block-id order.
    pub fn cached_blocks(&self) -> Vec<(BlockId, BlockHash)> {
        (0..self.num_blocks())
            .filter(|&b| self.m[b].has_hash)
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
                cur = self.m[cur as usize].hash_next;
                steps += 1;
            }
        }
        out
    }
}

#[cfg(test)]
mod tests;
