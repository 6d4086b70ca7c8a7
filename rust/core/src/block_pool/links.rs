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
            self.m[id as usize].ref_cnt += 1;
        }
    }

    /// Clear the `SEEN` marks `cache_blocks`' validation left on `ids` (all valid ids).
    pub(super) fn clear_seen(&mut self, ids: &[BlockId]) {
        for &id in ids {
            let b = id as usize;
            if !self.m[b].has_hash {
                self.m[b].hash_next = NIL;
            }
        }
    }

    #[inline]
    pub(super) fn push_tail(&mut self, b: u32) {
        self.m[b as usize].prev = self.tail;
        self.m[b as usize].next = NIL;
        if self.tail == NIL {
            self.head = b;
        } else {
            self.m[self.tail as usize].next = b;
        }
        self.tail = b;
        self.num_free += 1;
        if self.m[b as usize].has_hash {
            self.num_cached_free += 1;
        }
    }

    #[inline]
    pub(super) fn push_head(&mut self, b: u32) {
        self.m[b as usize].next = self.head;
        self.m[b as usize].prev = NIL;
        if self.head == NIL {
            self.tail = b;
        } else {
            self.m[self.head as usize].prev = b;
        }
        self.head = b;
        self.num_free += 1;
        if self.m[b as usize].has_hash {
            self.num_cached_free += 1;
        }
    }

    #[inline]
    pub(super) fn unlink(&mut self, b: u32) {
        let (p, nx) = (self.m[b as usize].prev, self.m[b as usize].next);
        if p == NIL {
            self.head = nx;
        } else {
            self.m[p as usize].next = nx;
        }
        if nx == NIL {
            self.tail = p;
        } else {
            self.m[nx as usize].prev = p;
        }
        self.m[b as usize].prev = NIL;
        self.m[b as usize].next = NIL;
        self.num_free -= 1;
        if self.m[b as usize].has_hash {
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
        self.m[bi].has_hash = true;
        self.m[bi].hash_next = NIL;
        // One probe: the hash either is new or extends its chain.
        match self.index.probe(h, &self.hash) {
            Probe::Vacant(slot) => {
                self.m[bi].hash_prev = b;
                self.index.insert_vacant(slot, h, b);
            }
            Probe::Found(slot) => {
                let first = self.index.block_at(slot) as usize;
                let last = self.m[first].hash_prev;
                self.m[bi].hash_prev = last;
                self.m[last as usize].hash_next = b;
                self.m[first].hash_prev = b;
            }
        }
    }

    /// Remove `b` from its hash chain (if cached) and record a `Removed` event.
    #[inline]
    pub(super) fn drop_hash(&mut self, b: u32) {
        let bi = b as usize;
        if !self.m[bi].has_hash {
            return;
        }
        let h = self.hash[bi];
        let (p, nx) = (self.m[bi].hash_prev, self.m[bi].hash_next);
        // The first block is the one whose `hash_prev` (the tail) does not link back.
        let first = self.m[p as usize].hash_next != b;
        if first {
            if let Probe::Found(slot) = self.index.probe(h, &self.hash) {
                if nx == NIL {
                    self.index.remove_at(slot);
                } else {
                    self.index.set_block(slot, nx);
                    self.m[nx as usize].hash_prev = p;
                }
            }
        } else {
            self.m[p as usize].hash_next = nx;
            if nx != NIL {
                self.m[nx as usize].hash_prev = p;
            } else if let Probe::Found(slot) = self.index.probe(h, &self.hash) {
                // `b` was the tail: the first block now points at the new one.
                let head = self.index.block_at(slot) as usize;
                self.m[head].hash_prev = p;
            }
        }
        self.m[bi].hash_prev = NIL;
        self.m[bi].hash_next = NIL;
        self.m[bi].has_hash = false;
        // A zero-ref block is always linked in the free queue (allocation sets the
        // reference before it drops the hash).
        if self.m[bi].ref_cnt == 0 {
            self.num_cached_free -= 1;
        }
        if let Some(g) = self.regions.as_mut() {
            g.uncache(b);
            if self.m[bi].ref_cnt == 0 {
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
