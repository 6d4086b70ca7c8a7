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
//! hit can pull a block out of the middle in O(1). Freed blocks join the tail in the
//! order given and allocation pops from the head: least recently freed goes first.
//!
//! Every public operation validates its whole input before mutating anything, so an
//! error leaves the pool exactly as it was.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use crate::error::{Error, Result};

/// A block id, local to one pool. `i32` because block tables cross into numpy as int32.
pub type BlockId = i32;
/// A 128-bit block hash (see `prefix_hash.rs` for how it is computed).
pub type BlockHash = u128;

/// The null block: placeholder in block tables, never allocated.
pub const NULL_BLOCK: BlockId = 0;

const NIL: u32 = u32::MAX;

/// Block hashes are already uniformly distributed, so the map key needs no mixing:
/// folding the two halves is enough and much cheaper than SipHash.
#[derive(Default)]
pub struct FoldHasher(u64);

impl Hasher for FoldHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut buf = [0u8; 8];
            buf[..chunk.len()].copy_from_slice(chunk);
            self.0 = self.0.rotate_left(29) ^ u64::from_le_bytes(buf);
        }
    }
    fn write_u128(&mut self, v: u128) {
        self.0 = (v as u64) ^ ((v >> 64) as u64).rotate_left(32);
    }
    fn write_u64(&mut self, v: u64) {
        self.0 ^= v;
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
    hash: Vec<BlockHash>,
    has_hash: Vec<bool>,
    // Free-queue links (valid only while the block is free).
    prev: Vec<u32>,
    next: Vec<u32>,
    // Next block with the same hash (a singly linked chain per map entry).
    hash_next: Vec<u32>,
    head: u32,
    tail: u32,
    num_free: usize,
    num_cached_free: usize,
    cached: FastMap<BlockHash, u32>,
    events: Vec<PoolEvent>,
    record_events: bool,
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
        let mut pool = BlockPool {
            ref_cnt: vec![0; n],
            hash: vec![0; n],
            has_hash: vec![false; n],
            prev: vec![NIL; n],
            next: vec![NIL; n],
            hash_next: vec![NIL; n],
            head: NIL,
            tail: NIL,
            num_free: 0,
            num_cached_free: 0,
            cached: FastMap::default(),
            events: Vec::new(),
            record_events: true,
        };
        for b in 1..n as u32 {
            pool.push_tail(b);
        }
        Ok(pool)
    }

    /// Turn event recording off (a pool nobody drains should not grow without bound).
    pub fn set_record_events(&mut self, on: bool) {
        self.record_events = on;
        if !on {
            self.events.clear();
        }
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
        self.num_blocks() - 1 - self.num_free
    }
    /// Fraction of the non-null blocks in use.
    pub fn usage(&self) -> f64 {
        let total = self.num_blocks().saturating_sub(1);
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
        let mut out = Vec::with_capacity(n);
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
        for _ in 0..n {
            let b = self.head;
            debug_assert_ne!(b, NIL);
            self.unlink(b);
            self.ref_cnt[b as usize] = 1;
            self.drop_hash(b);
            out.push(b as BlockId);
        }
        Ok(())
    }

    /// Drop one reference from each id (an id may repeat). Blocks reaching zero join
    /// the tail of the free queue in the order given, keeping their hashes.
    pub fn free(&mut self, ids: &[BlockId]) -> Result<()> {
        self.check_free(ids)?;
        for &id in ids {
            let b = id as u32;
            let r = &mut self.ref_cnt[b as usize];
            *r -= 1;
            if *r == 0 {
                self.push_tail(b);
            }
        }
        Ok(())
    }

    /// Validate a `free` batch without changing anything.
    pub fn check_free(&self, ids: &[BlockId]) -> Result<()> {
        for &id in ids {
            let b = self.check_real(id)?;
            if self.ref_cnt[b as usize] == 0 {
                return Err(Error::DoubleFree { id });
            }
        }
        // A repeated id must have as many references as it has occurrences. Only
        // checked when the cheap pass can't rule it out (small batches are the norm).
        if ids.len() > 1 {
            let mut seen: FastMap<u64, u32> = FastMap::default();
            for &id in ids {
                let c = seen.entry(id as u64).or_insert(0);
                *c += 1;
                if *c > self.ref_cnt[id as usize] {
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
            }
            self.ref_cnt[b as usize] += 1;
        }
        Ok(())
    }

    /// Mark in-use full blocks as cached under the given hashes (`Stored` events).
    /// Re-caching a block under the hash it already has is a no-op.
    pub fn cache_blocks(&mut self, ids: &[BlockId], hashes: &[BlockHash]) -> Result<()> {
        if ids.len() != hashes.len() {
            return Err(Error::LengthMismatch {
                what: "cache_blocks ids and hashes",
                left: ids.len(),
                right: hashes.len(),
            });
        }
        for (i, (&id, &h)) in ids.iter().zip(hashes).enumerate() {
            let b = self.check_real(id)? as usize;
            if self.ref_cnt[b] == 0 {
                return Err(Error::NotInUse { id });
            }
            if self.has_hash[b] && self.hash[b] != h {
                return Err(Error::AlreadyCached { id });
            }
            // The same block twice in one batch with two different hashes.
            if !self.has_hash[b]
                && ids[..i]
                    .iter()
                    .zip(hashes)
                    .any(|(&j, &g)| j == id && g != h)
            {
                return Err(Error::AlreadyCached { id });
            }
        }
        for (&id, &h) in ids.iter().zip(hashes) {
            let b = id as u32;
            if self.has_hash[b as usize] {
                continue;
            }
            self.hash[b as usize] = h;
            self.has_hash[b as usize] = true;
            self.hash_next[b as usize] = NIL;
            // Append to the end of the chain so the oldest copy is found first.
            match self.cached.get(&h).copied() {
                None => {
                    self.cached.insert(h, b);
                }
                Some(first) => {
                    let mut cur = first;
                    while self.hash_next[cur as usize] != NIL {
                        cur = self.hash_next[cur as usize];
                    }
                    self.hash_next[cur as usize] = b;
                }
            }
            if self.record_events {
                self.events.push(PoolEvent::Stored { block: id, hash: h });
            }
        }
        Ok(())
    }

    /// The block caching `hash`, if any.
    pub fn lookup_one(&self, hash: BlockHash) -> Option<BlockId> {
        self.cached.get(&hash).map(|&b| b as BlockId)
    }

    /// One block id per hash, `-1` for a miss.
    pub fn lookup(&self, hashes: &[BlockHash]) -> Vec<BlockId> {
        hashes
            .iter()
            .map(|h| self.lookup_one(*h).unwrap_or(-1))
            .collect()
    }

    /// Drop the hashes of the given blocks (`Removed` events). In-use blocks stay in
    /// use; free blocks stay free but can no longer be hit. Uncached blocks are a no-op.
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
        self.cached.clear();
        self.has_hash.iter_mut().for_each(|h| *h = false);
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

    /// The free queue from head (next to be allocated) to tail.
    pub fn free_queue(&self) -> Vec<BlockId> {
        let mut out = Vec::with_capacity(self.num_free);
        let mut cur = self.head;
        while cur != NIL {
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

    /// Every hash-map entry as `(hash, block)`, chains expanded.
    pub fn hash_entries(&self) -> Vec<(BlockHash, BlockId)> {
        let mut out = Vec::with_capacity(self.cached.len());
        for (&h, &first) in &self.cached {
            let mut cur = first;
            while cur != NIL {
                out.push((h, cur as BlockId));
                cur = self.hash_next[cur as usize];
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
        for &b in &q {
            if b == 0 || in_queue[b as usize] {
                return Err(format!("block {b} queued twice or null in queue"));
            }
            in_queue[b as usize] = true;
        }
        let mut cached_free = 0;
        for b in 1..n {
            if (self.ref_cnt[b] == 0) != in_queue[b] {
                return Err(format!(
                    "block {b}: ref {} but in_queue {}",
                    self.ref_cnt[b], in_queue[b]
                ));
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
        Ok(b)
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
        }
    }

    /// Remove `b` from the hash map (if cached) and record a `Removed` event.
    fn drop_hash(&mut self, b: u32) {
        let bi = b as usize;
        if !self.has_hash[bi] {
            return;
        }
        let h = self.hash[bi];
        if let Some(&first) = self.cached.get(&h) {
            if first == b {
                let nx = self.hash_next[bi];
                if nx == NIL {
                    self.cached.remove(&h);
                } else {
                    self.cached.insert(h, nx);
                }
            } else {
                let mut cur = first;
                while self.hash_next[cur as usize] != NIL && self.hash_next[cur as usize] != b {
                    cur = self.hash_next[cur as usize];
                }
                if self.hash_next[cur as usize] == b {
                    self.hash_next[cur as usize] = self.hash_next[bi];
                }
            }
        }
        self.hash_next[bi] = NIL;
        self.has_hash[bi] = false;
        // A zero-ref block is always linked in the free queue (allocation sets the
        // reference before it drops the hash).
        if self.ref_cnt[bi] == 0 {
            self.num_cached_free -= 1;
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
    fn allocate_pops_head_free_pushes_tail_in_order() {
        let mut p = BlockPool::new(6).unwrap();
        let a = p.allocate(3).unwrap();
        assert_eq!(a, vec![1, 2, 3]);
        p.free(&[3, 1]).unwrap();
        assert_eq!(p.free_queue(), vec![4, 5, 3, 1]);
        assert_eq!(p.allocate(3).unwrap(), vec![4, 5, 3]);
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
}
