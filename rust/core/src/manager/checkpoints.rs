//! Which state checkpoints stay cached in align mode (`CheckpointPolicy::Reuse`).
//!
//! A state group caches a checkpoint wherever a step ends on a block boundary: the
//! prompt's last boundary (the scheduler cuts prefill chunks there), every boundary a
//! decode crosses, and the shared-prefix boundary a lookup discovered (the scheduler's
//! `cut_at_shared_prefix`). Which of them a later request can reuse follows from the
//! request paths through them, counted per checkpoint as *extensions*: requests whose
//! running state moved past it (its creator, or a request that hit it and computed on).
//!
//! - A request's *tail* stays cached: the deepest checkpoint it reached, i.e. after
//!   the last block boundary its decode crossed (the turn's end: the next turn of a
//!   conversation starts there), or the state it holds when it finishes or is preempted
//!   on a boundary. A turn rarely ends on a boundary, and the running state moves past
//!   its last boundary checkpoint at the next token, so that checkpoint is not dropped
//!   when passed: it is the request's pending tail until a deeper one replaces it (then
//!   it is interior and dropped, unless it became a fork point or a prompt end).
//! - A *fork point* stays: a checkpoint two requests extended (their next blocks differ,
//!   or the second would have hit deeper), or one cached at the branch point a lookup
//!   discovered (another request already diverged there: one extension from the start).
//! - A request's own prompt-end checkpoint stays (a retried or resampled prompt forks
//!   there). In an elastic arena only when the prompt computed, up to it, at least twice
//!   the tokens of attention KV a state page's bytes hold beyond its own hit
//!   (`prompt_keep_min`, at most 8,192; 3,216 for Qwen3-Next): nothing shows yet that another
//!   request will branch there, and the page costs that much attention memory, so it is
//!   kept only where it saves a long prefill (a document's first question), not after a
//!   conversation turn that hit its history and added a short message (its tail serves
//!   the next turn; the prompt end only a retry). Qwen3-Next, 16 GiB, whole traces, with
//!   the region rule of `elastic.rs`: chat 0.819 -> 0.871, agentic 0.852 -> 0.883,
//!   docqa 0.9744 -> 0.9756; not keeping prompt ends at all: docqa 0.966. The tokens
//!   count from the request's *base*: its hit, or the shared-prefix boundary its lookup
//!   discovered (block-floored) when deeper, since the scheduler ends a chunk there and
//!   that fork point stays: a prompt end a few tokens past it saves only those. Which
//!   boundary the prompt end is (the scheduler's coarse cut before a short final
//!   segment, or where its last prefill chunk started) is the scheduler's choice
//!   (`chunk_rules.py`).
//! - While its request runs, a prompt's deepest prefill chunk end that lies at least
//!   `prompt_keep_min` past its base and as far before the prompt's last boundary stays
//!   too (elastic arenas): a request sharing the prompt's body that arrives meanwhile
//!   (a second question on a document while the first is still running) hits it where
//!   the prompt end lies past their branch point, then ends a chunk on that branch
//!   point. It is interior once its request releases it (unless it became a fork
//!   point). Jamba-1.5-Mini, 16 GiB, docqa: hit 0.9756 -> 0.9765, TTFT p99 0.211 ->
//!   0.169 s (vllm 0.179); Qwen3-Next rows unchanged. Measured alternatives (Jamba docqa
//!   0.9781 and the same p99 in each): every such chunk end kept until evicted: Qwen3-Next
//!   docqa 0.9775 -> 0.9792 but agentic 0.8611 -> 0.8567; kept while running, also
//!   those closer to the prompt end than `prompt_keep_min`: agentic 0.8575 (the state
//!   memory they hold costs a few sessions their tails).
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
use crate::arena::Arena;
use crate::block_pool::{BlockHash, BlockId, NULL_BLOCK};
use crate::group_policy::{GroupConfig, GroupKind};
use crate::request::{IdMap, Request};

/// One state group's checkpoint bookkeeping, per block id of its pool.
#[derive(Debug, Clone, Default)]
pub(super) struct GroupCheckpoints {
    /// Requests that moved past the checkpoint this block holds (saturating).
    extensions: Vec<u8>,
    /// The token after the checkpoint on the path of the first request that moved
    /// past it (`NO_TOKEN`: none yet): a request reaching it with another next token
    /// branches there.
    next_token: Vec<i32>,
    /// Per running request: its pending tail, the deepest checkpoint it moved past
    /// that only it had extended (block and hash: the block may be evicted and reused
    /// meanwhile, so the hash tells whether it still holds that checkpoint).
    tails: IdMap<(BlockId, BlockHash)>,
    /// Per running request: the chunk ends of its prompt it keeps while it runs (elastic
    /// arenas; see `checkpoints_passed`), dropped as interior when it releases.
    chunk_ends: IdMap<Vec<(BlockId, BlockHash)>>,
}

impl GroupCheckpoints {
    pub(super) fn new(num_blocks: usize) -> Self {
        GroupCheckpoints {
            extensions: vec![0; num_blocks],
            next_token: vec![NO_TOKEN; num_blocks],
            tails: IdMap::default(),
            chunk_ends: IdMap::default(),
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
        if let Some(t) = c.next_token.get_mut(b as usize) {
            // At a branch point `r` goes on with its own next token (the request that
            // diverged there had another).
            *t = match r.tokens.get(depth) {
                Some(&x) if branch => x,
                _ => NO_TOKEN,
            };
        }
    }

    /// `r`'s running state moved past entries `from..to` of its state table in group
    /// `g` (they are released next): count one extension on each cached checkpoint among
    /// them. One only `r` holds that is neither `r`'s prompt end, its kept prompt chunk
    /// end (module docs) nor a fork point is interior when `r` holds a deeper checkpoint
    /// already (it loses its hash now);
    /// otherwise it becomes `r`'s pending tail, and the tail it replaces (interior now)
    /// loses its hash if nobody holds it and it is still not a fork point. Another
    /// holder decides when it releases it.
    pub(super) fn checkpoints_passed(&mut self, r: &Request, g: usize, from: usize, to: usize) {
        let bs = self.groups[g].block_size;
        let prompt_end = r.prompt_len / bs * bs;
        let base = r.hit_tokens.max(r.prefix_boundary / bs * bs);
        let Some(c) = self.ckpt.get_mut(g).and_then(Option::as_mut) else {
            return;
        };
        let pool = &mut self.pools[self.pool_of[g]];
        let table = &r.tables[g];
        // The deepest cached checkpoint in `r`'s table, and the deepest one within its
        // prompt, found once: the loop below changes only entries at or below `k`, so
        // what lies past `k` is the same on every pass (one scan, not one per entry).
        // Both are only compared with entries `k >= from`, where one below `from` acts
        // as none (`d > k` false, `d <= k` true): so each scan stops at `from`, and a
        // decode step's cost does not grow with the context (2,048 null entries at 32k).
        let cached = |b: BlockId| b != NULL_BLOCK && matches!(pool.block_hash(b), Ok(Some(_)));
        let lo = from.min(table.len());
        let deepest = table[lo..].iter().rposition(|&b| cached(b)).map(|d| d + lo);
        let prompt_blocks = (prompt_end / bs).min(table.len());
        let deepest_in_prompt = table[lo.min(prompt_blocks)..prompt_blocks]
            .iter()
            .rposition(|&b| cached(b))
            .map(|d| d + lo.min(prompt_blocks));
        for (k, &b) in table.iter().enumerate().take(to).skip(from) {
            // A deeper checkpoint in `r`'s table (a prefill chunk ended on a boundary
            // past this one) makes this one interior: it is no pending tail.
            let deeper_held = deepest.is_some_and(|d| d > k);
            let Ok(Some(h)) = (if b == NULL_BLOCK {
                Ok(None)
            } else {
                pool.block_hash(b)
            }) else {
                continue;
            };
            let Some(e) = c.extensions.get_mut(b as usize) else {
                continue;
            };
            if let (Some(t), Some(&x)) =
                (c.next_token.get_mut(b as usize), r.tokens.get((k + 1) * bs))
            {
                if *t == NO_TOKEN {
                    *t = x;
                }
            }
            *e = e.saturating_add(1);
            let ext = *e;
            // The prompt's last checkpoint stays: the deepest one at or below the
            // prompt's last block boundary that `r` cached or passed (the boundary
            // itself, or where a coarse prompt cut or a prefill chunk ended when the
            // rest of the prompt ran off a boundary), if the prompt computed at least
            // `prompt_keep_min` tokens up to it beyond its base (elastic arenas): its own
            // hit or the fork point at its shared-prefix boundary, whichever is deeper.
            let prompt_last = (k + 1) * bs <= prompt_end
                && deepest_in_prompt.is_none_or(|d| d <= k)
                && (k + 1) * bs >= base + self.prompt_keep_min;
            // A prefill chunk's end inside the prompt, as deep past the base as a kept
            // prompt end must be, stays while `r` runs (elastic arenas): a request that
            // shares the prompt's body and arrives meanwhile hits it when `r`'s prompt
            // end lies past their branch point. Interior once `r` releases.
            let chunk_end = !prompt_last
                && ext < 2
                && self.prompt_keep_min > 0
                && (k + 1) * bs + self.prompt_keep_min <= prompt_end
                && (k + 1) * bs >= base + self.prompt_keep_min;
            if chunk_end {
                // Only the deepest one: it supersedes the one before.
                let ends = c.chunk_ends.entry(r.id).or_default();
                for old in ends.drain(..) {
                    if drop_interior(pool, &c.extensions, old) {
                        self.stats.interior_checkpoints_dropped += 1;
                    }
                }
                ends.push((b, h));
            }
            let keep = prompt_last || chunk_end || ext >= 2;
            if !keep && pool.ref_count(b) == Ok(1) && deeper_held {
                // In use by `r` (it stays so until the caller frees it): the block then
                // joins the free queue's head, uncached, like any unhashed block.
                let _ = pool.evict(&[b]);
                self.stats.interior_checkpoints_dropped += 1;
            } else if !keep && pool.ref_count(b) == Ok(1) {
                if let Some(old) = c.tails.insert(r.id, (b, h)) {
                    if drop_interior(pool, &c.extensions, old) {
                        self.stats.interior_checkpoints_dropped += 1;
                    }
                }
            }
        }
    }

    /// `r` releases all its blocks (finished or preempted): its pending tail stays
    /// cached, unless `r` holds a deeper checkpoint (its state ends on a block boundary
    /// now), which is then its tail and makes the pending one interior. The prompt chunk
    /// end it kept while running is interior now.
    pub(super) fn checkpoints_released(&mut self, r: &Request) {
        for g in 0..self.groups.len() {
            let Some(c) = self.ckpt.get_mut(g).and_then(Option::as_mut) else {
                continue;
            };
            let pool = &mut self.pools[self.pool_of[g]];
            let held = r.tables[g]
                .iter()
                .rev()
                .find(|&&b| b != NULL_BLOCK)
                .is_some_and(|&b| matches!(pool.block_hash(b), Ok(Some(_))));
            if let Some(old) = c.tails.remove(&r.id) {
                if held && drop_interior(pool, &c.extensions, old) {
                    self.stats.interior_checkpoints_dropped += 1;
                } else {
                    // It stays: the checkpoint `r`'s conversation resumes from. It was
                    // freed when `r` passed it, but it is as recent as `r`'s path (an
                    // elastic pool's recency, `make_room`).
                    pool.restamp(old.0);
                }
            }
            for end in c.chunk_ends.remove(&r.id).unwrap_or_default() {
                if drop_interior(pool, &c.extensions, end) {
                    self.stats.interior_checkpoints_dropped += 1;
                }
            }
        }
    }

    /// `r` is preempted (before it releases its blocks): the deepest checkpoint cached
    /// on its path (looked for in at most `SUPERSEDED_SCAN` entries) is where it resumes,
    /// so it is kept like a fork point: another request's deeper hit past it must not
    /// drop it as interior meanwhile.
    pub(super) fn checkpoints_preempted(&mut self, r: &Request) {
        for g in 0..self.groups.len() {
            let Some(c) = self.ckpt.get_mut(g).and_then(Option::as_mut) else {
                continue;
            };
            let hs = &r.hashes[self.size_of[g]];
            let pool = &self.pools[self.pool_of[g]];
            let top = (r.num_computed / self.groups[g].block_size).min(hs.len());
            for k in (top.saturating_sub(SUPERSEDED_SCAN).max(1)..=top).rev() {
                if let Some(b) = pool.lookup_one(hs[k - 1]) {
                    if let Some(e) = c.extensions.get_mut(b as usize) {
                        *e = (*e).max(2);
                    }
                    break;
                }
            }
        }
    }

    /// `r` just took a hit on the checkpoint at entry `k - 1` of group `g` (`k >= 1`).
    /// If another request moved past it already, `r` branches there (its hit would
    /// otherwise reach deeper): a fork point, which stays (a request preempted after
    /// hitting it re-hits it). The nearest shallower checkpoint cached on its path
    /// (looked for in at most `SUPERSEDED_SCAN` entries) is interior to that path now,
    /// so it loses its hash unless it is a fork point or someone holds it. Shallow
    /// interior checkpoints go first: a conversation keeps the one it continues from,
    /// not every turn's.
    pub(super) fn checkpoint_hit(&mut self, r: &Request, g: usize, k: usize) {
        let Some(c) = self.ckpt.get_mut(g).and_then(Option::as_mut) else {
            return;
        };
        if let Some(&b) = r.tables[g].get(k.wrapping_sub(1)) {
            c.mark_branch(b, r.tokens.get(k * self.groups[g].block_size));
        }
        let bs = self.groups[g].block_size;
        let hs = &r.hashes[self.size_of[g]];
        let pool = &mut self.pools[self.pool_of[g]];
        let lo = k.saturating_sub(SUPERSEDED_SCAN).max(1);
        for j in (lo..k.min(hs.len() + 1)).rev() {
            let h = hs[j - 1];
            if let Some(b) = pool.lookup_one(h) {
                // `r`'s path goes on past it: a fork point if `r` leaves it with
                // another next token than the request that moved past it first.
                c.mark_branch(b, r.tokens.get(j * bs));
                if drop_interior(pool, &c.extensions, (b, h)) {
                    self.stats.interior_checkpoints_dropped += 1;
                }
                return;
            }
        }
    }
}

impl GroupCheckpoints {
    /// A request reaches the checkpoint in block `b` and continues with `next` (the
    /// token after it; `None`: none known yet): if another request moved past it with
    /// a different next token, the two branch there and it is a fork point.
    fn mark_branch(&mut self, b: BlockId, next: Option<&i32>) {
        let (Some(e), Some(&t)) = (
            self.extensions.get_mut(b as usize),
            self.next_token.get(b as usize),
        ) else {
            return;
        };
        if *e >= 1 && t != NO_TOKEN && next.is_some_and(|&x| x != t) {
            *e = (*e).max(2);
        }
    }
}

/// Elastic arena: how many tokens a prompt must compute beyond its own hit, up to its
/// last checkpoint, for that checkpoint to be kept (module docs): twice the tokens of
/// the growing groups that the largest state page's bytes would hold, at most
/// `PROMPT_KEEP_CAP`. 0 when the arena has no state group or no growing group.
pub(super) fn prompt_keep_min(
    groups: &[GroupConfig],
    arena: &Arena,
    pool_of: &[usize],
    group_floors: &[usize],
) -> usize {
    let mut state_page = 0u64;
    let mut bytes_per_token = 0f64;
    for (g, cfg) in groups.iter().enumerate() {
        // The arena's groups are pools; growing groups are those without a floor.
        let page = arena.page(pool_of[g]);
        if cfg.kind == GroupKind::State {
            state_page = state_page.max(page);
        } else if group_floors.get(g).copied().unwrap_or(0) == 0 && cfg.block_size > 0 {
            bytes_per_token += page as f64 / cfg.block_size as f64;
        }
    }
    if state_page == 0 || bytes_per_token <= 0.0 {
        return 0;
    }
    ((2.0 * state_page as f64 / bytes_per_token).ceil() as usize).min(PROMPT_KEEP_CAP)
}

/// `prompt_keep_min` never exceeds one prefill step at the default budget: a prompt
/// that computed this much is kept whatever the state page costs. Nemotron-Nano-9B-v2's
/// 137 MiB state page holds 8,762 attention tokens (uncapped: 17,523, so no docqa
/// document's first question kept its prompt end: docqa at 32 GiB, first 120 requests,
/// 0.937 -> 0.920, static 0.935; capped: 0.937 again).
const PROMPT_KEEP_CAP: usize = 8192;

/// `GroupCheckpoints::next_token` of a checkpoint nobody moved past yet.
const NO_TOKEN: i32 = -1;

/// How far below a hit `checkpoint_hit` looks for the checkpoint it supersedes.
const SUPERSEDED_SCAN: usize = 1024;

/// Drop the hash of the checkpoint `(b, h)` if block `b` still holds it, nobody holds
/// it and it is no fork point (it joins the free queue's head, uncached). Returns
/// whether it did.
fn drop_interior(
    pool: &mut crate::block_pool::BlockPool,
    extensions: &[u8],
    (b, h): (BlockId, BlockHash),
) -> bool {
    let fork = extensions.get(b as usize).is_some_and(|&e| e >= 2);
    if fork || pool.block_hash(b) != Ok(Some(h)) || pool.ref_count(b) != Ok(0) {
        return false;
    }
    pool.evict(&[b]).is_ok()
}
