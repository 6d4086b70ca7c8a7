//! A request's life outside a step: `add_requests` (prompt and token checks),
//! `append_tokens`, `free`, `preempt`, and releasing every block a request holds.

use super::{unresolved, Manager, NewRequest};
use crate::block_pool::NULL_BLOCK;
use crate::error::{Error, Result};
use crate::group_policy::GroupKind;
use crate::request::{first_repeat, Phase, Request};

impl Manager {
    fn check_tokens(&self, tokens: &[i32]) -> Result<()> {
        let hi = self.vocab.unwrap_or(i32::MAX as u64 + 1);
        if let Some(pos) = tokens.iter().position(|&t| t < 0 || t as u64 >= hi) {
            return Err(Error::InvalidToken {
                token: tokens[pos] as i64,
                position: pos,
            });
        }
        Ok(())
    }

    fn check_offsets(offsets: &[i64], n: usize, num_tokens: usize, empty_ok: bool) -> Result<()> {
        if offsets.len() != n + 1 {
            return Err(Error::LengthMismatch {
                what: "offsets (need one more than request ids)",
                left: offsets.len(),
                right: n + 1,
            });
        }
        if offsets[0] != 0 || offsets[n] != num_tokens as i64 {
            return Err(Error::InvalidArgument(format!(
                "offsets must start at 0 and end at the number of tokens ({num_tokens}), got {} .. {}",
                offsets[0], offsets[n]
            )));
        }
        // Compare, never subtract: a difference of two arbitrary i64s can overflow.
        for i in 0..n {
            let (a, b) = (offsets[i], offsets[i + 1]);
            if b < a || (b == a && !empty_ok) {
                return Err(Error::InvalidArgument(format!(
                    "offsets must increase{}: offsets[{}] = {} then {}",
                    if empty_ok {
                        ""
                    } else {
                        " strictly (every prompt needs a token)"
                    },
                    i,
                    offsets[i],
                    offsets[i + 1]
                )));
            }
        }
        Ok(())
    }

    /// Add requests: `tokens[offsets[i]..offsets[i+1]]` is request `i`'s prompt.
    /// `new` (one per id) carries the extra hash keys and encoder lengths.
    pub fn add_requests(
        &mut self,
        new: Vec<NewRequest>,
        tokens: &[i32],
        offsets: &[i64],
    ) -> Result<()> {
        let n = new.len();
        Self::check_offsets(offsets, n, tokens.len(), false)?;
        self.check_tokens(tokens)?;
        let prompts = (0..n)
            .map(|i| tokens[offsets[i] as usize..offsets[i + 1] as usize].to_vec())
            .collect();
        self.add_requests_owned(new, prompts)
    }

    /// `add_requests` with one prompt vector per request, moved in as they are (a
    /// caller that built them, e.g. from a list of arrays, copies the tokens once).
    pub fn add_requests_owned(
        &mut self,
        new: Vec<NewRequest>,
        prompts: Vec<Vec<i32>>,
    ) -> Result<()> {
        let n = new.len();
        if prompts.len() != n {
            return Err(Error::LengthMismatch {
                what: "prompts vs request ids",
                left: prompts.len(),
                right: n,
            });
        }
        let mut at = 0usize;
        for (i, p) in prompts.iter().enumerate() {
            if p.is_empty() {
                return Err(Error::InvalidArgument(format!(
                    "every prompt needs a token: prompt {i} of this call is empty"
                )));
            }
            // Positions count through the batch as if the prompts were concatenated
            // (what the flat form reports).
            self.check_tokens(p).map_err(|e| match e {
                Error::InvalidToken { token, position } => Error::InvalidToken {
                    token,
                    position: at + position,
                },
                e => e,
            })?;
            at += p.len();
        }
        let ids: Vec<i64> = new.iter().map(|r| r.id).collect();
        if let Some(id) = first_repeat(&ids) {
            return Err(Error::DuplicateRequest {
                req_id: id.to_string(),
                in_call: true,
            });
        }
        if let Some(&id) = ids.iter().find(|&&id| self.reqs.contains(id)) {
            return Err(Error::DuplicateRequest {
                req_id: id.to_string(),
                in_call: false,
            });
        }
        let max_enc = self
            .groups
            .iter()
            .filter_map(|g| match g.kind {
                GroupKind::CrossAttention { max_encoder_len } => Some(max_encoder_len),
                _ => None,
            })
            .min();
        for r in &new {
            if r.encoder_len > 0 {
                match max_enc {
                    None => {
                        return Err(Error::InvalidArgument(format!(
                            "request {}: encoder length {} given but the model has no cross-attention group",
                            r.id, r.encoder_len
                        )))
                    }
                    Some(m) if r.encoder_len > m => {
                        return Err(Error::InvalidArgument(format!(
                            "request {}: encoder length {} exceeds max_encoder_len {m}",
                            r.id, r.encoder_len
                        )))
                    }
                    _ => {}
                }
            }
            if let Some(m) = r.extra.media.iter().find(|m| m.start < 0) {
                return Err(Error::InvalidArgument(format!(
                    "request {}: multimodal item starts at negative position {}",
                    r.id, m.start
                )));
            }
        }
        let (ns, ng) = (self.sizes.len(), self.groups.len());
        for (r, toks) in new.into_iter().zip(prompts) {
            self.reqs
                .insert(Request::new(r.id, toks, r.extra, r.encoder_len, ns, ng));
        }
        Ok(())
    }

    /// Append generated tokens (ragged like `add_requests`; a request may get none).
    pub fn append_tokens(&mut self, ids: &[i64], tokens: &[i32], offsets: &[i64]) -> Result<()> {
        Self::check_offsets(offsets, ids.len(), tokens.len(), true)?;
        self.check_tokens(tokens)?;
        let slots = self.reqs.resolve(ids).map_err(unresolved)?;
        for (i, &s) in slots.iter().enumerate() {
            if let Some(r) = self.reqs.get_mut(s) {
                r.tokens
                    .extend_from_slice(&tokens[offsets[i] as usize..offsets[i + 1] as usize]);
            }
        }
        Ok(())
    }

    /// Drop requests and release all their blocks (cached blocks stay findable).
    pub fn free(&mut self, ids: &[i64]) -> Result<()> {
        let slots = self.reqs.resolve(ids).map_err(unresolved)?;
        for (&s, &id) in slots.iter().zip(ids) {
            if let Some(mut r) = self.reqs.take(s) {
                self.release_all(&mut r);
                self.reqs.put(s, r);
            }
            self.reqs.remove(id);
        }
        Ok(())
    }

    /// Release all blocks of running requests and send them back to waiting; their
    /// tokens and hashes stay, so a later `get_computed_tokens` re-hits their prefix.
    pub fn preempt(&mut self, ids: &[i64]) -> Result<()> {
        let slots = self.reqs.resolve(ids).map_err(unresolved)?;
        for &s in &slots {
            if let Some(mut r) = self.reqs.take(s) {
                if self.ckpt.iter().any(Option::is_some) {
                    self.checkpoints_preempted(&r);
                }
                self.release_all(&mut r);
                r.num_computed = 0;
                r.phase = Phase::Waiting;
                self.stats.preemptions += 1;
                self.reqs.put(s, r);
            }
        }
        Ok(())
    }

    pub(super) fn release_all(&mut self, r: &mut Request) {
        if self.arena.is_some() {
            self.drop_unreachable_blocks(r);
            self.tick_clock();
        }
        if self.ckpt.iter().any(Option::is_some) {
            self.checkpoints_released(r);
        }
        // Every block's record is read below, one after another: start loading them
        // all first (a finished request holds hundreds), so their misses overlap.
        for (g, table) in r.tables.iter().enumerate() {
            let pool = &self.pools[self.pool_of[g]];
            for &b in &table[r.first_live[g].min(table.len())..] {
                if b != NULL_BLOCK {
                    pool.prefetch_block(b);
                }
            }
        }
        let mut batch = std::mem::take(&mut self.release_buf);
        for (g, table) in r.tables.iter_mut().enumerate() {
            let pool = &mut self.pools[self.pool_of[g]];
            // Tail first, in one call per group (so the pool's queue order is vLLM's): a
            // request's last blocks are the least likely to be shared, so they should be
            // evicted first.
            batch.clear();
            batch.extend(table.iter().rev().filter(|&&b| b != NULL_BLOCK));
            // Every non-null entry holds one reference taken by this request.
            pool.free_held(&batch);
            table.clear();
            r.first_live[g] = 0;
            r.num_cached[g] = 0;
            r.exported[g] = 0;
        }
        self.release_buf = batch;
        if self.record_events {
            self.drain_pool_events();
        }
    }
}
