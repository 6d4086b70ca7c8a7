//! Which state checkpoints stay cached in align mode (`CheckpointPolicy::Reuse`).
//!
//! A state group caches a checkpoint wherever a step ends on a block boundary: the
//! prompt's last boundary (the scheduler cuts prefill chunks there), every boundary a
//! decode crosses, and the shared-prefix boundary a lookup discovered (the scheduler's
//! `cut_at_shared_prefix`). Which of them a later request can reuse follows from the
//! request paths through them, counted per checkpoint as *extensions*: requests whose
//! running state moved past it (its creator, or a request that hit it and computed on).
//!
//! - A request's *tail* (the checkpoint it holds when it finishes or is preempted: its
//!   turn end) stays cached: the next turn of a conversation starts there.
//! - A *fork point* stays: a checkpoint two requests extended (their next blocks differ,
//!   or the second would have hit deeper), or one cached at the branch point a lookup
//!   discovered (another request already diverged there: one extension from the start).
//! - A request's own prompt-end checkpoint stays (a retried or resampled prompt forks
//!   there).
//! - Every other checkpoint a request moves past is *interior*: only a request branching
//!   at exactly that block could use it, and a decode crossing a block boundary every
//!   `block_size` tokens makes many. Interior checkpoints lose their hash when their
//!   request releases them (before the LRU order sees them), so their blocks are reused
//!   first, and in an elastic arena the state group's regions drain for other groups.
//!
//!   Measured alternative: keeping interior checkpoints cached and evicting them first,
//!   shallowest first, before the LRU head. On the bundled chat trace (Qwen3-Next,
//!   16 GiB, elastic) it hit 0.688 of prompt tokens against 0.722 for dropping them at
//!   release (0.680 for plain LRU): kept interior blocks are free but hashed, so new
//!   running states spread over more regions and fewer regions empty for attention.
//!
//! A hit refreshes only the checkpoint it consumes (`take_hit_blocks` touches one state
//! block), never its ancestors. `CheckpointPolicy::Lru` keeps every checkpoint in least
//! recently used order (vLLM's rule, and the only one a shared pool takes).

use super::Manager;
use crate::block_pool::NULL_BLOCK;
use crate::request::Request;

/// One state group's checkpoint bookkeeping, per block id of its pool.
#[derive(Debug, Clone, Default)]
pub(super) struct GroupCheckpoints {
    /// Requests that moved past the checkpoint this block holds (saturating).
    extensions: Vec<u8>,
}

impl GroupCheckpoints {
    pub(super) fn new(num_blocks: usize) -> Self {
        GroupCheckpoints {
            extensions: vec![0; num_blocks],
        }
    }
}

impl Manager {
    /// A state checkpoint was just cached in block `b` of group `g` at `depth` tokens
    /// of `r`: no request has moved past it yet, unless it lies at the branch point
    /// `r`'s lookup discovered (another request diverged there already).
    pub(super) fn checkpoint_cached(&mut self, r: &Request, g: usize, b: i32, depth: usize) {
        let bs = self.groups[g].block_size;
        let Some(c) = self.ckpt.get_mut(g).and_then(Option::as_mut) else {
            return;
        };
        let branch = r.prefix_boundary > 0 && depth == r.prefix_boundary / bs * bs;
        if let Some(e) = c.extensions.get_mut(b as usize) {
            *e = u8::from(branch);
        }
    }

    /// `r`'s running state moved past entries `from..to` of its state table in group
    /// `g` (they are released next): count one extension on each cached checkpoint among
    /// them, and drop the hash of each interior one that only `r` holds (not `r`'s
    /// prompt end, not a fork point). Another holder decides when it releases it.
    pub(super) fn checkpoints_passed(&mut self, r: &Request, g: usize, from: usize, to: usize) {
        let bs = self.groups[g].block_size;
        let prompt_end = r.prompt_len / bs * bs;
        let Some(c) = self.ckpt.get_mut(g).and_then(Option::as_mut) else {
            return;
        };
        let pool = &mut self.pools[g];
        for k in from..to.min(r.tables[g].len()) {
            let b = r.tables[g][k];
            if b == NULL_BLOCK || !matches!(pool.block_hash(b), Ok(Some(_))) {
                continue;
            }
            let Some(e) = c.extensions.get_mut(b as usize) else {
                continue;
            };
            *e = e.saturating_add(1);
            let keep = (k + 1) * bs == prompt_end || *e >= 2;
            if !keep && pool.ref_count(b) == Ok(1) {
                // In use by `r` (it stays so until the caller frees it): the block then
                // joins the free queue's head, uncached, like any unhashed block.
                let _ = pool.evict(&[b]);
                self.stats.interior_checkpoints_dropped += 1;
            }
        }
    }
}
