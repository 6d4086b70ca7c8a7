//! Per-kind rules of a KV-cache group: which tokens a step or a prefix hit needs, which
//! blocks may be released, and which blocks get cached.
//!
//! Every group's block table is positional: entry `k` covers tokens
//! `[k * block_size, (k + 1) * block_size)`. For attention kinds it holds that block's
//! K/V; for a state group entry `k` holds the recurrent state after token
//! `min((k + 1) * block_size, t)`, where `t` is the number of computed tokens, so a step
//! computing tokens `[c, c + n)` reads the state at entry `cdiv(c, bs) - 1` and writes
//! entry `cdiv(c + n, bs) - 1`; a state that ends exactly on a block boundary is a
//! checkpoint other requests can start from. Entries whose block is not needed any more
//! hold the null block 0.

use crate::error::{Error, Result};

/// How state (Mamba / gated delta net) groups keep prefix checkpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MambaMode {
    /// No checkpoints: the running state only; a model with a state group never hits.
    None,
    /// The running state plus a checkpoint whenever a step ends on a block boundary.
    Align,
    /// A checkpoint at every block boundary (the table grows like full attention).
    All,
}

impl MambaMode {
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "none" => Ok(MambaMode::None),
            "align" => Ok(MambaMode::Align),
            "all" => Ok(MambaMode::All),
            other => Err(Error::InvalidArgument(format!(
                "mamba_cache_mode must be 'none', 'align' or 'all', got {other:?}"
            ))),
        }
    }
}

/// Which cached state checkpoints (align mode) a state group's allocation evicts when
/// it must evict one (`manager/checkpoints.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckpointPolicy {
    /// Interior checkpoints (a request moved past them, not at its prompt end, not a
    /// fork point) first, shallowest first; then least recently used.
    Reuse,
    /// Least recently used only (vLLM's order; the policy before `Reuse`).
    Lru,
}

impl CheckpointPolicy {
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "reuse" => Ok(CheckpointPolicy::Reuse),
            "lru" => Ok(CheckpointPolicy::Lru),
            other => Err(Error::InvalidArgument(format!(
                "checkpoint_policy must be 'reuse' or 'lru', got {other:?}"
            ))),
        }
    }
}

/// What a group's layers are, with the parameter its rules need.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupKind {
    /// Full attention (also MLA and sparse MLA): every block up to the sequence end.
    Full,
    /// Sliding window: token `p` attends to `[p - window + 1, p]`.
    SlidingWindow { window: usize },
    /// Chunked local attention: token `p` attends within its chunk `[p / c * c, p]`.
    ChunkedLocal { chunk: usize },
    /// Fixed-size recurrent state (Mamba-2, gated delta net).
    State,
    /// Cross attention over the encoder output: `cdiv(encoder_len, bs)` blocks per request.
    CrossAttention { max_encoder_len: usize },
}

impl GroupKind {
    /// Parse a kind name from the planner (`GroupPlan.kind`) with its parameter.
    pub fn from_name(kind: &str, param: usize) -> Result<Self> {
        let need = |what: &str| {
            if param == 0 {
                Err(Error::InvalidArgument(format!(
                    "a {kind} group needs a positive {what}"
                )))
            } else {
                Ok(param)
            }
        };
        Ok(match kind {
            "full_attention" | "mla" | "sparse_mla" => GroupKind::Full,
            "sliding_window" => GroupKind::SlidingWindow {
                window: need("window")?,
            },
            "chunked_local" => GroupKind::ChunkedLocal {
                chunk: need("chunk_size")?,
            },
            "state" => GroupKind::State,
            "cross_attention" => GroupKind::CrossAttention {
                max_encoder_len: param,
            },
            other => {
                return Err(Error::InvalidArgument(format!(
                    "unknown KV-cache group kind {other:?} (expected full_attention, mla, \
                     sparse_mla, sliding_window, chunked_local, state or cross_attention)"
                )))
            }
        })
    }
}

/// One group's configuration (what the manager needs from a `GroupPlan`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupConfig {
    pub kind: GroupKind,
    /// Tokens per block (for a state group: the checkpoint granularity).
    pub block_size: usize,
    /// Blocks in the pool, including the null block 0.
    pub num_blocks: usize,
}

#[inline]
pub fn cdiv(a: usize, b: usize) -> usize {
    a.div_ceil(b)
}

impl GroupConfig {
    pub fn validate(&self) -> Result<()> {
        if self.block_size == 0 {
            return Err(Error::InvalidArgument("block_size must be positive".into()));
        }
        if self.num_blocks == 0 {
            return Err(Error::InvalidArgument(
                "num_blocks must be at least 1 (the null block)".into(),
            ));
        }
        Ok(())
    }

    /// First token a step starting at computed position `c` (or a hit at `c`) still
    /// needs in this group (attention kinds; state and cross groups return `c`/0).
    pub fn first_needed_token(&self, c: usize) -> usize {
        match self.kind {
            GroupKind::Full | GroupKind::CrossAttention { .. } => 0,
            GroupKind::SlidingWindow { window } => (c + 1).saturating_sub(window),
            GroupKind::ChunkedLocal { chunk } => c / chunk * chunk,
            GroupKind::State => c,
        }
    }

    /// Table entries below this index hold no block a request with `c` computed tokens
    /// still needs: they may be released (turned into the null block).
    pub fn first_live_block(&self, c: usize, mode: MambaMode) -> usize {
        match self.kind {
            GroupKind::Full | GroupKind::CrossAttention { .. } => 0,
            GroupKind::SlidingWindow { .. } | GroupKind::ChunkedLocal { .. } => {
                self.first_needed_token(c) / self.block_size
            }
            GroupKind::State => match mode {
                MambaMode::All => 0,
                // Keep the entry holding the state after `c` tokens.
                MambaMode::None | MambaMode::Align => cdiv(c, self.block_size).saturating_sub(1),
            },
        }
    }

    /// Whether blocks of this group take part in prefix caching at all.
    pub fn caches(&self, mode: MambaMode) -> bool {
        match self.kind {
            GroupKind::CrossAttention { .. } => false,
            GroupKind::State => mode != MambaMode::None,
            _ => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn g(kind: GroupKind) -> GroupConfig {
        GroupConfig {
            kind,
            block_size: 16,
            num_blocks: 10,
        }
    }

    #[test]
    fn window_release_points() {
        let swa = g(GroupKind::SlidingWindow { window: 40 });
        // At c = 100, tokens from 61 are needed: blocks 0..3 (tokens < 48) can go.
        assert_eq!(swa.first_needed_token(100), 61);
        assert_eq!(swa.first_live_block(100, MambaMode::Align), 3);
        assert_eq!(swa.first_live_block(10, MambaMode::Align), 0);
        let chunked = g(GroupKind::ChunkedLocal { chunk: 64 });
        assert_eq!(chunked.first_live_block(100, MambaMode::Align), 4);
        assert_eq!(chunked.first_live_block(63, MambaMode::Align), 0);
        let st = g(GroupKind::State);
        assert_eq!(st.first_live_block(32, MambaMode::Align), 1);
        assert_eq!(st.first_live_block(33, MambaMode::Align), 2);
        assert_eq!(st.first_live_block(33, MambaMode::All), 0);
        assert_eq!(g(GroupKind::Full).first_live_block(1000, MambaMode::All), 0);
    }

    #[test]
    fn kinds_parse() {
        assert_eq!(
            GroupKind::from_name("sliding_window", 8).unwrap(),
            GroupKind::SlidingWindow { window: 8 }
        );
        assert!(GroupKind::from_name("sliding_window", 0).is_err());
        assert!(GroupKind::from_name("nope", 1).is_err());
        assert!(MambaMode::parse("sometimes").is_err());
    }
}
