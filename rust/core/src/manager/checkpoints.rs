//! State checkpoint retention in align mode (`CheckpointPolicy::Reuse`).
//!
//! A state group caches a checkpoint wherever a step ends on a block boundary: the
//! prompt's last boundary (the scheduler cuts prefill chunks there), every boundary a
//! decode crosses, and the shared-prefix boundary a lookup discovered (the scheduler's
//! `cut_at_shared_prefix`). Which of them a later request can reuse follows from the
//! request paths through them, counted per checkpoint as *extensions*: requests whose
//! running state moved past it (its creator, or a request that hit it and computed on).
//!
//! - A request's *tail* (the checkpoint it holds when it finishes or is preempted: its
//!   turn end) is kept: the next turn of a conversation starts there.
//! - A *fork point* is kept: a checkpoint two requests extended (their next blocks
//!   differ, or the second would have hit deeper), or one cached at the branch point
//!   a lookup discovered (another request already diverged there, so it counts as one
//!   extension from the start).
//! - A request's own prompt-end checkpoint is kept (a retried or resampled prompt
//!   forks there).
//! - Every other checkpoint a request moves past is *interior*: only a request
//!   branching at exactly that block could use it. Interior checkpoints stay cached
//!   while memory is idle but are the first a state allocation evicts, shallowest
//!   first (least recompute saved per byte: every state block of a group has the same
//!   size), before the LRU head. In an elastic arena their value is 0, so regions
//!   holding them are the cheapest to hand to another group, and a state group with an
//!   interior checkpoint left takes nothing from other groups.
//!
//! A hit refreshes only the checkpoint it consumes (`take_hit_blocks` touches one
//! state block), never its ancestors. `CheckpointPolicy::Lru` turns all of this off
//! (least recently used only, as vLLM and the shared-pool layout do).

use std::collections::BTreeSet;

use super::Manager;
use crate::block_pool::{BlockId, NULL_BLOCK};
use crate::request::Request;

/// One state group's checkpoint bookkeeping, per block id of its pool.
#[derive(Debug, Clone, Default)]
pub(super) struct GroupCheckpoints {
    /// Requests that moved past the checkpoint this block holds (saturating).
    extensions: Vec<u8>,
    /// Depth (tokens) of the interior checkpoint this block holds; 0: not interior.
    interior: Vec<u32>,
    /// `(depth, block)` of interior checkpoints, shallowest first. An entry is live
    /// while `interior[block] == depth`; others are dropped when met.
    queue: BTreeSet<(u32, u32)>,
}

impl GroupCheckpoints {
    pub(super) fn new(num_blocks: usize) -> Self {
        GroupCheckpoints {
            extensions: vec![0; num_blocks],
            interior: vec![0; num_blocks],
            queue: BTreeSet::new(),
        }
    }

    fn clear_interior(&mut self, b: usize) {
        if let Some(d) = self.interior.get_mut(b) {
            if *d != 0 {
                self.queue.remove(&(*d, b as u32));
                *d = 0;
            }
        }
    }
}

impl Manager {
    /// A state checkpoint was just cached in block `b` of group `g` at `depth` tokens
    /// of `r`: no request has moved past it yet, unless it lies at the branch point
    /// `r`'s lookup discovered (another request diverged there already).
    pub(super) fn checkpoint_cached(&mut self, r: &Request, g: usize, b: BlockId, depth: usize) {
        let bs = self.groups[g].block_size;
        let Some(c) = self.ckpt.get_mut(g).and_then(Option::as_mut) else {
            return;
        };
        let bi = b as usize;
        c.clear_interior(bi);
        let branch = r.prefix_boundary > 0 && depth == r.prefix_boundary / bs * bs;
        if let Some(e) = c.extensions.get_mut(bi) {
            *e = u8::from(branch);
        }
    }

    /// A hit takes checkpoint `b` of group `g`: it is in use again, not interior.
    pub(super) fn checkpoint_hit(&mut self, g: usize, b: BlockId, depth: usize) {
        let Some(c) = self.ckpt.get_mut(g).and_then(Option::as_mut) else {
            return;
        };
        let bi = b as usize;
        if c.interior.get(bi).is_some_and(|&d| d != 0) {
            c.clear_interior(bi);
            if self.arena.is_some() {
                let v = depth.min(u32::MAX as usize) as u32;
                let _ = self.pools[g].set_block_value(b, v);
            }
        }
    }

    /// `r`'s running state moved past entries `from..to` of its state table in group
    /// `g` (they are about to be released): count one extension on each cached
    /// checkpoint among them, and mark the ones nobody else holds interior unless they
    /// are `r`'s prompt end or a fork point.
    pub(super) fn checkpoints_passed(&mut self, r: &Request, g: usize, from: usize, to: usize) {
        let bs = self.groups[g].block_size;
        let prompt_end = r.prompt_len / bs * bs;
        let elastic = self.arena.is_some();
        let Some(c) = self.ckpt.get_mut(g).and_then(Option::as_mut) else {
            return;
        };
        let pool = &mut self.pools[g];
        for k in from..to.min(r.tables[g].len()) {
            let b = r.tables[g][k];
            if b == NULL_BLOCK || !matches!(pool.block_hash(b), Ok(Some(_))) {
                continue;
            }
            let bi = b as usize;
            let Some(e) = c.extensions.get_mut(bi) else {
                continue;
            };
            *e = e.saturating_add(1);
            let depth = (k + 1) * bs;
            let keep = depth == prompt_end || *e >= 2;
            // Another holder will release it later and decide then.
            if keep || pool.ref_count(b) != Ok(1) {
                continue;
            }
            let d = depth.min(u32::MAX as usize) as u32;
            c.clear_interior(bi);
            c.interior[bi] = d;
            c.queue.insert((d, b as u32));
            if elastic {
                let _ = pool.set_block_value(b, 0);
            }
        }
    }

    /// Group `g` allocates one state block now: if that would evict a cached block,
    /// evict the shallowest free interior checkpoint instead (it becomes the block
    /// allocation takes).
    pub(super) fn evict_interior_first(&mut self, g: usize) {
        let Some(c) = self.ckpt.get_mut(g).and_then(Option::as_mut) else {
            return;
        };
        let pool = &mut self.pools[g];
        if !pool.next_allocation_evicts() {
            return;
        }
        while let Some((d, b)) = c.queue.pop_first() {
            let bi = b as usize;
            if c.interior.get(bi) != Some(&d) {
                continue;
            }
            c.interior[bi] = 0;
            if pool.evict_to_front(b as BlockId) {
                return;
            }
        }
    }

    /// Whether group `g` holds a free interior checkpoint (its cheapest victim).
    pub(super) fn has_interior(&mut self, g: usize) -> bool {
        let Some(c) = self.ckpt.get_mut(g).and_then(Option::as_mut) else {
            return false;
        };
        let pool = &self.pools[g];
        // Drop entries whose block was evicted or reused meanwhile.
        while let Some(&(d, b)) = c.queue.first() {
            let bi = b as usize;
            let live = c.interior.get(bi) == Some(&d)
                && pool.ref_count(b as BlockId) == Ok(0)
                && matches!(pool.block_hash(b as BlockId), Ok(Some(_)));
            if live {
                return true;
            }
            c.queue.pop_first();
            if c.interior.get(bi) == Some(&d) {
                c.interior[bi] = 0;
            }
        }
        false
    }
}
