//! A pool's prefix index: block hash -> the first block of that hash's chain.
//!
//! Hand-written rather than a `HashMap<u128, (u32, u32)>` because the keys already live
//! in the pool's per-block hash array: a slot is one `u64` (32 bits of the mixed hash,
//! then the block id) instead of a 32-byte bucket holding the 128-bit key again, so
//! the table is a quarter of the size and most probes stay in cache. It is allocated
//! and written in full when the pool is built (every page faulted in then, not inside
//! a step) and sized so it never grows for a pool's own blocks (at most one chain per
//! block). Open addressing with linear probing; deletion shifts the cluster back, so
//! there are no tombstones and a long-running pool never degrades.

use super::BlockHash;

const EMPTY: u64 = u64::MAX;
/// Most entries a table is presized for (past it, it doubles as needed).
const MAX_PRESIZED: usize = 1 << 24;

/// Where a hash is, or where it would go.
pub(crate) enum Probe {
    Found(usize),
    Vacant(usize),
}

#[derive(Debug, Clone)]
pub(crate) struct HashIndex {
    /// `(fingerprint << 32) | first block`, or `EMPTY`.
    slots: Vec<u64>,
    mask: usize,
    len: usize,
}

/// 32 well-mixed bits of a block hash: the low ones pick the home slot, all of them
/// screen out most non-matching slots before the full 128-bit key is compared.
#[inline]
fn fingerprint(h: BlockHash) -> u32 {
    let x = (h as u64) ^ ((h >> 64) as u64).rotate_left(32);
    let m = (x as u128).wrapping_mul(0x9E37_79B9_7F4A_7C15u128);
    let m = (m as u64) ^ ((m >> 64) as u64);
    (m ^ (m >> 32)) as u32
}

/// Hint the CPU to load the cache line holding `x` (nothing on other targets).
#[inline(always)]
pub(crate) fn prefetch_read<T>(x: &T) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        // SAFETY: a prefetch is only a hint. It never faults, reads no value into the
        // program and writes nothing, whatever the address; here the address is that
        // of a live reference anyway.
        unsafe { _mm_prefetch::<_MM_HINT_T0>((x as *const T).cast::<i8>()) };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = x;
}

/// Bytes from which a vector's spare capacity is worth backing with huge pages.
const HUGE_FROM: usize = 4 << 20;

/// Ask the kernel to back the reserved, not yet written capacity of a large vector with
/// transparent huge pages (a hint, called before the first write, so the pages are
/// faulted in huge). A pool's bookkeeping is touched at random block ids: with 4 KiB
/// pages every access to a pool of a million blocks also misses the TLB, which made a
/// decode step's cost grow with the pools' size (context). No effect on results, nor
/// where the system has no transparent huge pages (`madvise` then fails, ignored).
pub(crate) fn huge_pages<T>(v: &Vec<T>) {
    let bytes = v.capacity().saturating_mul(std::mem::size_of::<T>());
    if bytes < HUGE_FROM {
        return;
    }
    #[cfg(target_os = "linux")]
    {
        const PAGE: usize = 4096;
        const MADV_HUGEPAGE: std::ffi::c_int = 14;
        extern "C" {
            fn madvise(
                addr: *mut std::ffi::c_void,
                len: usize,
                advice: std::ffi::c_int,
            ) -> std::ffi::c_int;
        }
        let start = v.as_ptr() as usize;
        let lo = start.div_ceil(PAGE) * PAGE;
        let hi = (start + bytes) / PAGE * PAGE;
        if hi > lo {
            // SAFETY: `[lo, hi)` lies inside the vector's own allocation (page-aligned
            // inward), which this process owns; MADV_HUGEPAGE only changes how the
            // kernel backs those pages (their contents and the mapping stay as they
            // are), and a failure is only a return value, ignored.
            let _ = unsafe { madvise(lo as *mut std::ffi::c_void, hi - lo, MADV_HUGEPAGE) };
        }
    }
}

fn table(cap: usize) -> Vec<u64> {
    let mut v = Vec::new();
    // Fallible: a table that does not fit starts small and grows (the pool's own
    // bookkeeping was checked to fit; the caller is never aborted for this).
    if v.try_reserve_exact(cap).is_ok() {
        huge_pages(&v);
        v.resize(cap, EMPTY);
    }
    v
}

impl HashIndex {
    /// A table for up to `entries` hashes without growing (load at most 3/4).
    pub fn with_capacity(entries: usize) -> Self {
        let want = (entries.min(MAX_PRESIZED) * 4 / 3 + 1)
            .max(8)
            .next_power_of_two();
        let mut slots = table(want);
        if slots.is_empty() {
            slots = vec![EMPTY; 8];
        }
        HashIndex {
            mask: slots.len() - 1,
            slots,
            len: 0,
        }
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.len
    }

    /// Find `h`; `keys[b]` is block `b`'s hash (the pool's hash array).
    #[inline]
    pub fn probe(&self, h: BlockHash, keys: &[BlockHash]) -> Probe {
        let f = fingerprint(h);
        let mut i = f as usize & self.mask;
        loop {
            let e = self.slots[i];
            if e == EMPTY {
                return Probe::Vacant(i);
            }
            if (e >> 32) as u32 == f && keys[e as u32 as usize] == h {
                return Probe::Found(i);
            }
            i = (i + 1) & self.mask;
        }
    }

    /// Start loading `h`'s home slot into the cache (a hint: no effect on results). A
    /// caller about to probe many hashes prefetches them all first, so their cache
    /// misses overlap instead of following one another.
    #[inline]
    pub fn prefetch(&self, h: BlockHash) {
        let i = fingerprint(h) as usize & self.mask;
        if let Some(slot) = self.slots.get(i) {
            prefetch_read(slot);
        }
    }

    #[inline]
    pub fn get(&self, h: BlockHash, keys: &[BlockHash]) -> Option<u32> {
        match self.probe(h, keys) {
            Probe::Found(i) => Some(self.slots[i] as u32),
            Probe::Vacant(_) => None,
        }
    }

    /// The first block of the chain at an occupied slot.
    #[inline]
    pub fn block_at(&self, slot: usize) -> u32 {
        self.slots[slot] as u32
    }

    /// Point the occupied slot at another block of the same hash.
    #[inline]
    pub fn set_block(&mut self, slot: usize, block: u32) {
        self.slots[slot] = (self.slots[slot] & !(u32::MAX as u64)) | block as u64;
    }

    /// Put `block` (whose hash `h` is not in the table) at the vacant slot `probe`
    /// returned for `h`, growing first when the table is too full.
    #[inline]
    pub fn insert_vacant(&mut self, slot: usize, h: BlockHash, block: u32) {
        let f = fingerprint(h);
        let mut i = slot;
        if (self.len + 1) * 4 > self.slots.len() * 3 {
            self.grow();
            i = f as usize & self.mask;
            while self.slots[i] != EMPTY {
                i = (i + 1) & self.mask;
            }
        }
        self.slots[i] = ((f as u64) << 32) | block as u64;
        self.len += 1;
    }

    /// Empty an occupied slot, shifting later entries of its cluster back.
    pub fn remove_at(&mut self, slot: usize) {
        let mut hole = slot;
        let mut j = slot;
        loop {
            j = (j + 1) & self.mask;
            let e = self.slots[j];
            if e == EMPTY {
                break;
            }
            let home = (e >> 32) as usize & self.mask;
            // `e` may fill the hole when the hole lies between its home and `j`.
            if (j.wrapping_sub(home) & self.mask) >= (j.wrapping_sub(hole) & self.mask) {
                self.slots[hole] = e;
                hole = j;
            }
        }
        self.slots[hole] = EMPTY;
        self.len -= 1;
    }

    pub fn clear(&mut self) {
        self.slots.iter_mut().for_each(|s| *s = EMPTY);
        self.len = 0;
    }

    /// The first block of every chain, in slot order.
    pub fn blocks(&self) -> impl Iterator<Item = u32> + '_ {
        self.slots
            .iter()
            .filter(|&&e| e != EMPTY)
            .map(|&e| e as u32)
    }

    /// Every entry is reachable from its home slot and carries its key's fingerprint.
    pub fn check(&self, keys: &[BlockHash]) -> std::result::Result<(), String> {
        let mut n = 0;
        for (i, &e) in self.slots.iter().enumerate() {
            if e == EMPTY {
                continue;
            }
            n += 1;
            let b = e as u32 as usize;
            let Some(&h) = keys.get(b) else {
                return Err(format!("index slot {i} names block {b}, not in the pool"));
            };
            if (e >> 32) as u32 != fingerprint(h) {
                return Err(format!("index slot {i}: fingerprint of block {b} is stale"));
            }
            if !matches!(self.probe(h, keys), Probe::Found(s) if s == i) {
                return Err(format!(
                    "index slot {i}: block {b} is not found by its hash"
                ));
            }
        }
        if n != self.len {
            return Err(format!("index counts {} entries, holds {n}", self.len));
        }
        Ok(())
    }

    fn grow(&mut self) {
        let old = std::mem::take(&mut self.slots);
        self.slots = vec![EMPTY; old.len() * 2];
        self.mask = self.slots.len() - 1;
        for e in old.into_iter().filter(|&e| e != EMPTY) {
            let mut i = (e >> 32) as usize & self.mask;
            while self.slots[i] != EMPTY {
                i = (i + 1) & self.mask;
            }
            self.slots[i] = e;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Random inserts and removals against a `HashMap`, with keys that collide on
    /// their home slots (a tiny table), checking the table after every operation.
    #[test]
    fn agrees_with_a_map() {
        let mut keys: Vec<BlockHash> = vec![0; 64];
        let mut idx = HashIndex::with_capacity(4);
        let mut model = std::collections::HashMap::new();
        let mut rnd = crate::test_rng::xorshift(0x9E37_79B9);
        for _ in 0..20_000 {
            let b = 1 + rnd(63) as usize;
            let h = rnd(40) as BlockHash;
            match model.get(&h).copied() {
                Some(owner) if rnd(2) == 0 => {
                    let Probe::Found(s) = idx.probe(h, &keys) else {
                        panic!("lost {h}")
                    };
                    assert_eq!(idx.block_at(s) as usize, owner);
                    idx.remove_at(s);
                    model.remove(&h);
                }
                None if !model.values().any(|&o| o == b) => {
                    keys[b] = h;
                    let Probe::Vacant(s) = idx.probe(h, &keys) else {
                        panic!("phantom {h}")
                    };
                    idx.insert_vacant(s, h, b as u32);
                    model.insert(h, b);
                }
                _ => {}
            }
            idx.check(&keys).unwrap();
            assert_eq!(idx.len(), model.len());
            for (&h, &o) in &model {
                assert_eq!(idx.get(h, &keys), Some(o as u32));
            }
        }
    }
}
