//! Per-request state: tokens, computed count, block hashes per distinct block size and
//! one positional block table per group.

use crate::block_pool::{prefetch_read, BlockHash, BlockId, FastMap};
use crate::prefix_hash::{hash_blocks_into, ExtraKeys, PlainChain};
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// Request ids are caller-chosen integers, often small and consecutive: mix them so the
/// hash map's control bytes see well-spread high bits.
#[derive(Default)]
pub struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ b as u64).wrapping_mul(0x0100_0000_01b3);
        }
    }
    fn write_i64(&mut self, v: i64) {
        let x = (v as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        self.0 = x ^ (x >> 29);
    }
}

pub type IdMap<V> = HashMap<i64, V, BuildHasherDefault<IdHasher>>;

/// Where a request stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Added or preempted: holds no blocks, computed count 0.
    Waiting,
    /// `get_computed_tokens` ran: holds the hit blocks (if any), not allocated yet.
    Queried,
    /// At least one `allocate_slots` succeeded since it last waited.
    Running,
}

/// Groups (or block sizes) whose per-request state is kept inside the request record.
pub const INLINE_GROUPS: usize = 4;

/// One value per group (or per distinct block size), kept inside the request record
/// when there are at most `INLINE_GROUPS` of them (every model so far), else in a
/// vector. A step reads a request's tables, hash lists and counters for every group:
/// inline, they come with the record instead of one more dependent cache miss per
/// vector. Reads and writes go through the slice (`Deref`).
#[derive(Debug, Clone)]
pub struct PerGroup<T> {
    len: usize,
    inline: [T; INLINE_GROUPS],
    spill: Vec<T>,
}

impl<T: Clone + Default> PerGroup<T> {
    /// `n` copies of `value`.
    pub fn filled(n: usize, value: T) -> Self {
        let mut inline: [T; INLINE_GROUPS] = Default::default();
        let spill = if n <= INLINE_GROUPS {
            inline[..n].fill(value);
            Vec::new()
        } else {
            vec![value; n]
        };
        PerGroup {
            len: n,
            inline,
            spill,
        }
    }
}

impl<T> std::ops::Deref for PerGroup<T> {
    type Target = [T];
    #[inline]
    fn deref(&self) -> &[T] {
        if self.len <= INLINE_GROUPS {
            &self.inline[..self.len]
        } else {
            &self.spill
        }
    }
}

impl<T> std::ops::DerefMut for PerGroup<T> {
    #[inline]
    fn deref_mut(&mut self) -> &mut [T] {
        if self.len <= INLINE_GROUPS {
            &mut self.inline[..self.len]
        } else {
            &mut self.spill
        }
    }
}

impl<'a, T> IntoIterator for &'a PerGroup<T> {
    type Item = &'a T;
    type IntoIter = std::slice::Iter<'a, T>;
    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

#[derive(Debug, Clone)]
pub struct Request {
    pub id: i64,
    pub tokens: Vec<i32>,
    /// Tokens it was added with (its prompt): where its prompt-end checkpoint lies.
    pub prompt_len: usize,
    pub num_computed: usize,
    /// Tokens its last prefix lookup served from the cache.
    pub hit_tokens: usize,
    pub phase: Phase,
    pub extra: ExtraKeys,
    /// Encoder tokens (cross-attention groups allocate blocks for them).
    pub encoder_len: usize,
    /// Full-block hashes per distinct block size, computed incrementally.
    pub hashes: PerGroup<Vec<BlockHash>>,
    /// One positional table per group (0 = null block).
    pub tables: PerGroup<Vec<BlockId>>,
    /// Per group: entries below this index are all null (released or never needed).
    pub first_live: PerGroup<usize>,
    /// Per group: entries below this index are cached or were skipped for caching.
    pub num_cached: PerGroup<usize>,
    /// Queued for the release of blocks that left its window at the next step.
    pub dirty: bool,
    /// The `Requests::epoch` (batch call) in which its finished-token release last
    /// ran: within one call nothing else changes it, so a second release would be a
    /// no-op (`allocate_slots` skips it).
    pub released_in: u64,
    /// After a lookup where some group could serve more than the agreed hit: the
    /// longest single-group hit (a prefill chunk ending there lets the lagging group
    /// cache it for the next request); 0 otherwise.
    pub prefix_boundary: usize,
    /// Per group: table entries already handed out by `new_block_ids`.
    pub exported: PerGroup<usize>,
}

impl Request {
    pub fn new(
        id: i64,
        tokens: Vec<i32>,
        extra: ExtraKeys,
        encoder_len: usize,
        num_sizes: usize,
        num_groups: usize,
    ) -> Self {
        Request {
            id,
            prompt_len: tokens.len(),
            tokens,
            num_computed: 0,
            hit_tokens: 0,
            phase: Phase::Waiting,
            extra,
            encoder_len,
            hashes: PerGroup::filled(num_sizes, Vec::new()),
            tables: PerGroup::filled(num_groups, Vec::new()),
            first_live: PerGroup::filled(num_groups, 0),
            num_cached: PerGroup::filled(num_groups, 0),
            exported: PerGroup::filled(num_groups, 0),
            dirty: false,
            released_in: 0,
            prefix_boundary: 0,
        }
    }

    /// Hash the full blocks (at `block_size`, slot `size_idx`) of the first
    /// `upto_tokens` tokens that are not hashed yet.
    pub fn ensure_hashes(
        &mut self,
        size_idx: usize,
        block_size: usize,
        upto_tokens: usize,
        root: BlockHash,
        buf: &mut Vec<u8>,
    ) {
        let upto = upto_tokens.min(self.tokens.len()) / block_size;
        let hs = &mut self.hashes[size_idx];
        let have = hs.len();
        if upto <= have {
            return;
        }
        let parent = hs.last().copied().unwrap_or(root);
        hash_blocks_into(
            &self.tokens[..upto * block_size],
            block_size,
            have,
            parent,
            &self.extra,
            buf,
            hs,
        );
    }

    /// The part of its chain at `block_size` (slot `size_idx`) that `ensure_hashes`
    /// up to `upto_tokens` would hash, for `hash_plain_pair` (the caller checked that
    /// its extra keys are plain: `prefix_hash::is_plain`).
    pub fn plain_chain(
        &mut self,
        size_idx: usize,
        block_size: usize,
        upto_tokens: usize,
        root: BlockHash,
    ) -> PlainChain<'_> {
        let hs = &mut self.hashes[size_idx];
        let first = hs.len();
        let upto = (upto_tokens.min(self.tokens.len()) / block_size).max(first);
        PlainChain {
            tokens: &self.tokens[..upto * block_size],
            first,
            parent: hs.last().copied().unwrap_or(root),
            out: hs,
        }
    }

    /// Whether the request holds any block in any group.
    pub fn holds_blocks(&self) -> bool {
        self.tables.iter().any(|t| !t.is_empty())
    }
}

/// The live requests, in a slab addressed through an id map. Boxed, so that taking a
/// request out of its slot for a call (and putting it back) moves a pointer, not the
/// whole request.
#[derive(Debug, Default)]
pub struct Requests {
    slots: Vec<Option<Box<Request>>>,
    free_slots: Vec<u32>,
    index: IdMap<u32>,
    /// Per-slot stamp used to spot duplicate ids in a batch without allocating.
    stamp: Vec<u64>,
    epoch: u64,
}

impl Requests {
    pub fn len(&self) -> usize {
        self.index.len()
    }
    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }
    pub fn contains(&self, id: i64) -> bool {
        self.index.contains_key(&id)
    }
    pub fn slot_of(&self, id: i64) -> Option<u32> {
        self.index.get(&id).copied()
    }
    pub fn insert(&mut self, r: Request) {
        let r = Box::new(r);
        let id = r.id;
        let s = match self.free_slots.pop() {
            Some(s) => {
                self.slots[s as usize] = Some(r);
                s
            }
            None => {
                self.slots.push(Some(r));
                self.stamp.push(0);
                (self.slots.len() - 1) as u32
            }
        };
        self.index.insert(id, s);
    }
    pub fn remove(&mut self, id: i64) -> Option<Box<Request>> {
        let s = self.index.remove(&id)?;
        self.free_slots.push(s);
        self.slots[s as usize].take()
    }
    pub fn get(&self, slot: u32) -> Option<&Request> {
        self.slots.get(slot as usize).and_then(|r| r.as_deref())
    }
    pub fn get_mut(&mut self, slot: u32) -> Option<&mut Request> {
        self.slots
            .get_mut(slot as usize)
            .and_then(|r| r.as_deref_mut())
    }
    /// Move a request out of its slot (put it back with `put`); moves only its box.
    pub fn take(&mut self, slot: u32) -> Option<Box<Request>> {
        self.slots.get_mut(slot as usize)?.take()
    }
    pub fn put(&mut self, slot: u32, r: Box<Request>) {
        if let Some(x) = self.slots.get_mut(slot as usize) {
            *x = Some(r);
        }
    }
    pub fn by_id(&self, id: i64) -> Option<&Request> {
        self.slot_of(id).and_then(|s| self.get(s))
    }
    pub fn iter(&self) -> impl Iterator<Item = &Request> {
        self.slots.iter().filter_map(|r| r.as_deref())
    }
    pub fn iter_mut(&mut self) -> impl Iterator<Item = &mut Request> {
        self.slots.iter_mut().filter_map(|r| r.as_deref_mut())
    }

    /// Start loading the bookkeeping of the requests in `slots` into the cache: their
    /// records, then the per-group vectors they point to, then the ends of their
    /// tables and hash lists (where a step reads and appends). A hint with no effect
    /// on results: a batch call touches hundreds of requests, and issuing the loads
    /// level by level lets their cache misses overlap instead of following one another.
    pub fn prefetch(&self, slots: &[u32]) {
        self.prefetch_where(slots, |_, _| true);
    }

    /// `prefetch`, loading the ends of a request's token list, tables and hash lists
    /// only where `deep(i, request)` says the call will touch them (its record always).
    /// A prefetch that misses the TLB still walks the page tables: a decode step
    /// touches those ends only when a request crosses a block boundary, and at long
    /// contexts (hundreds of pages of vectors) prefetching them for every request cost
    /// more than it hid.
    pub fn prefetch_where(&self, slots: &[u32], deep: impl Fn(usize, &Request) -> bool) {
        let live = || {
            slots
                .iter()
                .enumerate()
                .filter_map(|(i, &s)| self.get(s).map(|r| (i, r)))
        };
        for (_, r) in live() {
            prefetch_read(&r.id);
            prefetch_read(&r.tokens);
            prefetch_read(&r.hashes);
            prefetch_read(&r.tables);
            prefetch_read(&r.first_live);
            prefetch_read(&r.num_cached);
            prefetch_read(&r.exported);
        }
        for (i, r) in live() {
            if !deep(i, r) {
                continue;
            }
            if let Some(t) = r.tokens.last() {
                prefetch_read(t);
            }
            for t in &r.tables {
                if let Some(b) = t.last() {
                    prefetch_read(b);
                }
            }
            for h in &r.hashes {
                if let Some(x) = h.last() {
                    prefetch_read(x);
                }
            }
        }
    }

    /// The current batch call (`resolve` starts a new one; never 0).
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Slots of `ids`, or the first unknown / repeated id.
    pub fn resolve(&mut self, ids: &[i64]) -> std::result::Result<Vec<u32>, Resolve> {
        self.epoch += 1;
        let mut out = Vec::with_capacity(ids.len());
        for &id in ids {
            let s = match self.index.get(&id) {
                Some(&s) => s,
                None => return Err(Resolve::Unknown(id)),
            };
            if self.stamp[s as usize] == self.epoch {
                return Err(Resolve::Duplicate(id));
            }
            self.stamp[s as usize] = self.epoch;
            out.push(s);
        }
        Ok(out)
    }
}

/// Why a batch of ids did not resolve.
#[derive(Debug, Clone, Copy)]
pub enum Resolve {
    Unknown(i64),
    Duplicate(i64),
}

/// Repeated ids within a batch of new ids (for `add_requests`).
pub fn first_repeat(ids: &[i64]) -> Option<i64> {
    let mut seen: FastMap<u64, ()> = FastMap::default();
    seen.reserve(ids.len());
    for &id in ids {
        let key = (id as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        if seen.insert(key, ()).is_some() {
            return Some(id);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::{PerGroup, INLINE_GROUPS};

    /// Up to `INLINE_GROUPS` values live in the record, more in a vector: both read and
    /// write through the same slice.
    #[test]
    fn per_group_inline_and_spilled() {
        for n in [0, 1, INLINE_GROUPS, INLINE_GROUPS + 1, 3 * INLINE_GROUPS] {
            let mut v = PerGroup::filled(n, 7usize);
            assert_eq!(v.len(), n);
            assert!(v.iter().all(|&x| x == 7));
            for (i, x) in v.iter_mut().enumerate() {
                *x = i;
            }
            let w = v.clone();
            assert_eq!(
                w.iter().copied().collect::<Vec<_>>(),
                (0..n).collect::<Vec<_>>()
            );
            let mut t = PerGroup::filled(n, Vec::<i32>::new());
            if n > 0 {
                t[n - 1].push(3);
                assert_eq!(std::mem::take(&mut t[n - 1]), vec![3]);
            }
            assert!((&t).into_iter().all(Vec::is_empty));
        }
    }
}
