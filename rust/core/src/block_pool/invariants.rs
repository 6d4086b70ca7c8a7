//! `BlockPool::check_invariants`: every invariant of the pool checked from scratch
//! (free queue, reference counts, hash chains and index, elastic regions). Used by
//! tests and fuzzers; never on a hot path.

use super::{BlockPool, Regions, NIL};

impl BlockPool {
    /// Check every invariant; used by tests and fuzzers. Returns the first violation.
    #[allow(clippy::needless_range_loop)]
    pub fn check_invariants(&self) -> std::result::Result<(), String> {
        let n = self.num_blocks();
        if self.m[0].ref_cnt != 0 || self.m[0].has_hash {
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
            if self.m[b as usize].prev != prev {
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
            if !present(b) && (self.m[b].ref_cnt != 0 || self.m[b].has_hash) {
                return Err(format!("absent block {b} has a reference or a hash"));
            }
            if (self.m[b].ref_cnt == 0 && present(b)) != in_queue[b] {
                return Err(format!(
                    "block {b}: ref {} but in_queue {}",
                    self.m[b].ref_cnt, in_queue[b]
                ));
            }
            if !in_queue[b] && (self.m[b].prev != NIL || self.m[b].next != NIL) {
                return Err(format!("block {b} is in use but keeps free-queue links"));
            }
            if !self.m[b].has_hash && (self.m[b].hash_prev != NIL || self.m[b].hash_next != NIL) {
                return Err(format!("uncached block {b} keeps hash-chain links"));
            }
            if in_queue[b] && self.m[b].has_hash {
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
            let last = self.m[first as usize].hash_prev;
            if !self.m[first as usize].has_hash
                || last == NIL
                || self.m[last as usize].hash_next != NIL
            {
                return Err(format!("chain of hash {h:#x} has a dangling end"));
            }
            let mut cur = first;
            let mut steps = 0;
            while self.m[cur as usize].hash_next != NIL {
                let nx = self.m[cur as usize].hash_next;
                if self.m[nx as usize].hash_prev != cur || steps > n {
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
        let carried = self.m.iter().filter(|m| m.has_hash).count();
        if entries.len() != carried {
            return Err(format!(
                "{} map entries but {carried} hashed blocks",
                entries.len()
            ));
        }
        for (h, b) in entries {
            if !self.m[b as usize].has_hash || self.hash[b as usize] != h {
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
            if self.m[b].ref_cnt > 0 {
                in_use[r] += 1;
            } else if !self.m[b].has_hash {
                ucount[r] += 1;
            }
            if self.m[b].has_hash {
                value[r] += g.value[b] as u64;
                if self.m[b].ref_cnt == 0 && g.stamp[b] > g.newest[r] {
                    return Err(format!(
                        "region {r}: block {b} freed after its newest stamp"
                    ));
                }
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
                if self.m[c].ref_cnt != 0 || self.m[c].has_hash || g.region_of[c] as usize != r {
                    return Err(format!("region {r}: block {cur} wrongly on its free list"));
                }
                len += 1;
                cur = g.unext[c];
            }
            if len != ucount[r] {
                return Err(format!("region {r}: free-uncached list length {len}"));
            }
            let idle = g.is_idle(r);
            if idle != (blocks[r] > 0 && in_use[r] == 0)
                || idle != g.idle_by_value.contains(&(value[r], r as u32))
            {
                return Err(format!("region {r}: idle set out of date"));
            }
            if (ucount[r] > 0) != g.ready.contains(&(g.rank[r], r as u32)) {
                return Err(format!("region {r}: ready set out of date"));
            }
        }
        if g.idle_by_value.len() != (0..nr).filter(|&r| g.is_idle(r)).count() {
            return Err("idle set holds stale regions".into());
        }
        if g.ready.len() != ucount.iter().filter(|&&c| c > 0).count() {
            return Err("ready set holds stale regions".into());
        }
        Ok(())
    }
}
