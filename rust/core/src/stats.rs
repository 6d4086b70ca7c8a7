//! Counters the manager keeps: prefix-cache queries and hits (overall and per group),
//! cross-group disagreements, allocation outcomes, and where its time went.

/// Cumulative counters since the manager was built (or since `reset`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    /// Requests looked up by `get_computed_tokens`.
    pub queries: u64,
    /// Tokens of those requests.
    pub query_tokens: u64,
    /// Tokens served from the prefix cache (the agreed hit, summed).
    pub hit_tokens: u64,
    /// Per group: tokens that group alone could have served (its own longest hit).
    pub group_hit_tokens: Vec<u64>,
    /// Lookups where some group could serve more than the agreed hit from blocks it
    /// holds cached (the lookups that report a shared-prefix boundary).
    pub disagreements: u64,
    /// Requests given to `allocate_slots`, and how many did not fit.
    pub alloc_requests: u64,
    pub alloc_failures: u64,
    pub preemptions: u64,
    /// Interior state checkpoints whose hash was dropped at release (align mode,
    /// `CheckpointPolicy::Reuse`: `manager/checkpoints.rs`).
    pub interior_checkpoints_dropped: u64,
    /// Nanoseconds spent hashing blocks, looking up prefixes (excluding hashing) and
    /// allocating (excluding hashing).
    pub ns_hash: u64,
    pub ns_lookup: u64,
    pub ns_alloc: u64,
}

impl Stats {
    pub fn new(num_groups: usize) -> Self {
        Stats {
            group_hit_tokens: vec![0; num_groups],
            ..Default::default()
        }
    }
}
