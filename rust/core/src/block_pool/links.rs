//! The pool's internals every operation goes through: id checks, the free queue's
//! links (`push_tail`, `push_head`, `unlink`) and the hash chains with their index
//! entries (`link_hash`, `drop_hash`). The invariants they keep are in the module docs
//! of `block_pool.rs` and checked by `invariants.rs`.

use super::{BlockHash, BlockId, BlockPool, PoolEvent, Probe, NIL};
use crate::error::{Error, Result};

impl BlockPool {
    #[inline]
    pub(super) fn check_id(&self, id: BlockId) -> Result<u32> {
        if id < 0 || id as usize >= self.num_blocks() {
            return Err(Error::InvalidBlockId {
                id: id as i64,
                num_blocks: self.num_blocks(),
            });
        }
        Ok(id as u32)
    }

    #[inline]
    pub(super) fn check_real(&self, id: BlockId) -> Result<u32> {
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
    pub(super) fn undo_decrements(&mut self, ids: &[BlockId]) {
        for &id in ids {
            self.ref_cnt[id as usize] += 1;
        }
    }

    /// Clear the `SEEN` marks `cache_blocks`' validation left on `ids` (all valid ids).
    pub(super) fn clear_seen(&mut self, ids: &[BlockId]) {
        for &id in ids {
            let b = id as usize;
            if !self.has_hash[b] {
                self.hash_next[b] = NIL;
            }
        }
    }

    #[inline]
    pub(super) fn push_tail(&mut self, b: u32) {
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

    #[inline]
    pub(super) fn push_head(&mut self, b: u32) {
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

    #[inline]
    pub(super) fn unlink(&mut self, b: u32) {
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
    #[inline]
    pub(super) fn link_hash(&mut self, b: u32, h: BlockHash) {
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
    #[inline]
    pub(super) fn drop_hash(&mut self, b: u32) {
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
