//! Unit tests of the manager's window release, state checkpoints and hit agreement.

use super::*;
use crate::group_policy::{GroupConfig, GroupKind, MambaMode};

fn mgr(groups: &[(GroupKind, usize)], mode: MambaMode) -> Manager {
    Manager::new(ManagerConfig {
        groups: groups
            .iter()
            .map(|&(kind, num_blocks)| GroupConfig {
                kind,
                block_size: 4,
                num_blocks,
            })
            .collect(),
        mamba_mode: mode,
        enable_caching: true,
        hash_seed: 0,
        vocab_size: None,
        record_events: false,
        shared_pool: false,
        pool_of: Vec::new(),
        checkpoint_policy: CheckpointPolicy::Reuse,
        arena: None,
    })
    .unwrap()
}

pub(super) fn add(m: &mut Manager, id: i64, tokens: &[i32]) {
    let new = vec![NewRequest {
        id,
        ..Default::default()
    }];
    m.add_requests(new, tokens, &[0, tokens.len() as i64])
        .unwrap();
}

fn table(m: &Manager, g: usize, id: i64) -> Vec<i32> {
    m.block_table(g, &[id], None).unwrap().0
}

#[test]
fn window_blocks_are_released_as_decoding_advances() {
    let swa = GroupKind::SlidingWindow { window: 6 };
    let mut m = mgr(&[(GroupKind::Full, 64), (swa, 64)], MambaMode::Align);
    let toks: Vec<i32> = (1..=40).collect();
    add(&mut m, 1, &toks[..8]);
    m.get_computed_tokens(&[1]).unwrap();
    assert_eq!(
        m.allocate_slots(&[1], &[8], &[0], true).unwrap(),
        vec![true]
    );
    for i in 8..40 {
        m.append_tokens(&[1], &toks[i..i + 1], &[0, 1]).unwrap();
        assert_eq!(
            m.allocate_slots(&[1], &[1], &[0], true).unwrap(),
            vec![true]
        );
        m.check_invariants().unwrap();
        let t = table(&m, 1, 1);
        // Before this step `i` tokens were computed: tokens from i - 5 are needed.
        let first = (i + 1).saturating_sub(6) / 4;
        assert!(t[..first].iter().all(|&b| b == 0), "step {i}: {t:?}");
        assert!(t[first..].iter().all(|&b| b != 0), "step {i}: {t:?}");
        // Never more than cdiv(W - 1 + n, b) + 1 live blocks.
        assert!(t.iter().filter(|&&b| b != 0).count() <= (5 + 1usize).div_ceil(4) + 1);
        // The full group keeps everything.
        assert!(table(&m, 0, 1).iter().all(|&b| b != 0));
    }
}

#[test]
fn unscheduled_requests_release_at_the_next_step_only() {
    let swa = GroupKind::SlidingWindow { window: 4 };
    let mut m = mgr(&[(swa, 64)], MambaMode::Align);
    let toks: Vec<i32> = (1..=32).collect();
    add(&mut m, 1, &toks);
    add(&mut m, 2, &toks[..4]);
    m.get_computed_tokens(&[1, 2]).unwrap();
    assert!(m.allocate_slots(&[1], &[16], &[0], true).unwrap()[0]);
    // Same step (retry call): request 1's window must not shrink yet.
    assert!(m.allocate_slots(&[2], &[4], &[0], false).unwrap()[0]);
    assert_eq!(table(&m, 0, 1).iter().filter(|&&b| b != 0).count(), 4);
    // A new step: request 1's finished 16 tokens need only tokens 13.. -> block 3.
    assert!(m.allocate_slots(&[2], &[0], &[0], true).unwrap()[0]);
    assert_eq!(table(&m, 0, 1), vec![0, 0, 0, table(&m, 0, 1)[3]]);
    m.check_invariants().unwrap();
}

#[test]
fn chunked_local_keeps_only_the_current_chunk() {
    let ch = GroupKind::ChunkedLocal { chunk: 8 };
    let mut m = mgr(&[(GroupKind::Full, 64), (ch, 64)], MambaMode::Align);
    let toks: Vec<i32> = (1..=20).collect();
    add(&mut m, 1, &toks);
    m.get_computed_tokens(&[1]).unwrap();
    assert!(m.allocate_slots(&[1], &[17], &[0], true).unwrap()[0]);
    assert!(m.allocate_slots(&[1], &[1], &[0], true).unwrap()[0]);
    // Computed 17 before the step: its chunk starts at 16 -> blocks 0..4 released.
    let t = table(&m, 1, 1);
    assert_eq!(&t[..4], &[0, 0, 0, 0]);
    assert!(t[4] != 0);
}

#[test]
fn chunk_boundary_needs_no_earlier_blocks() {
    // A model made only of chunked-local layers needs nothing before a chunk boundary
    // (tokens after it never attend across), so such a position counts as served.
    let ch = GroupKind::ChunkedLocal { chunk: 8 };
    let mut m = mgr(&[(ch, 64)], MambaMode::Align);
    let toks: Vec<i32> = (1..=20).collect();
    add(&mut m, 1, &toks);
    assert_eq!(m.get_computed_tokens(&[1]).unwrap(), vec![16]);
    assert_eq!(table(&m, 0, 1), vec![0, 0, 0, 0]);
    m.check_invariants().unwrap();
}

#[test]
fn shared_prefix_boundary_needs_cached_blocks() {
    // A chunked-local group serves a chunk start with nothing cached: that is no shared
    // prefix, so a fresh request reports no boundary (and no disagreement).
    let ch = GroupKind::ChunkedLocal { chunk: 8 };
    let groups = [(GroupKind::Full, 64), (ch, 64), (GroupKind::State, 64)];
    let mut m = mgr(&groups, MambaMode::Align);
    let toks: Vec<i32> = (1..=14).collect();
    add(&mut m, 1, &toks);
    assert_eq!(m.get_computed_tokens(&[1]).unwrap(), vec![0]);
    assert_eq!(m.shared_prefix_boundary(&[1]).unwrap(), vec![0]);
    assert_eq!(m.stats().disagreements, 0);
    // Request 1 computes 9 tokens in one step: blocks 0..2 cached, no state checkpoint.
    assert!(m.allocate_slots(&[1], &[9], &[0], true).unwrap()[0]);
    m.free(&[1]).unwrap();
    // Request 2 shares those 8 tokens, then differs: the chunked group's plain claim is
    // the chunk start 16, but only 8 tokens are backed by its cache.
    let mut other = toks[..8].to_vec();
    other.extend(100..112);
    add(&mut m, 2, &other);
    assert_eq!(m.get_computed_tokens(&[2]).unwrap(), vec![0]);
    assert_eq!(m.shared_prefix_boundary(&[2]).unwrap(), vec![8]);
    assert_eq!(m.stats().disagreements, 1);
    m.check_invariants().unwrap();
}

#[test]
fn cross_attention_backs_no_boundary() {
    let cross = GroupKind::CrossAttention {
        max_encoder_len: 16,
    };
    let mut m = mgr(&[(GroupKind::Full, 64), (cross, 64)], MambaMode::Align);
    let toks: Vec<i32> = (1..=14).collect();
    add(&mut m, 1, &toks);
    assert_eq!(m.get_computed_tokens(&[1]).unwrap(), vec![0]);
    assert_eq!(m.shared_prefix_boundary(&[1]).unwrap(), vec![0]);
}

#[test]
fn state_align_checkpoints_on_block_boundaries_only() {
    let mut m = mgr(
        &[(GroupKind::Full, 64), (GroupKind::State, 8)],
        MambaMode::Align,
    );
    let toks: Vec<i32> = (1..=13).collect();
    add(&mut m, 1, &toks);
    m.get_computed_tokens(&[1]).unwrap();
    assert!(m.allocate_slots(&[1], &[8], &[0], true).unwrap()[0]);
    assert!(m.allocate_slots(&[1], &[5], &[0], true).unwrap()[0]);
    // Checkpoint after 8 tokens cached; the state after 13 is not.
    assert_eq!(m.pool(1).unwrap().num_in_use(), 2);
    m.free(&[1]).unwrap();
    assert_eq!(m.pool(1).unwrap().num_cached(), 1);
    let mut again: Vec<i32> = toks[..12].to_vec();
    again.push(99);
    add(&mut m, 2, &again);
    // The full group could serve 12 tokens, the state group only 8: take 8.
    assert_eq!(m.get_computed_tokens(&[2]).unwrap(), vec![8]);
    assert_eq!(m.stats().disagreements, 1);
    assert_eq!(m.stats().group_hit_tokens, vec![12, 8]);
    m.check_invariants().unwrap();
}

#[test]
fn failed_request_changes_nothing() {
    let mut m = mgr(
        &[(GroupKind::Full, 4), (GroupKind::State, 2)],
        MambaMode::Align,
    );
    let toks: Vec<i32> = (1..=8).collect();
    add(&mut m, 1, &toks);
    add(&mut m, 2, &toks);
    m.get_computed_tokens(&[1, 2]).unwrap();
    assert_eq!(
        m.allocate_slots(&[1, 2], &[4, 4], &[0, 0], true).unwrap(),
        vec![true, false]
    );
    assert!(table(&m, 0, 2).is_empty());
    assert_eq!(m.num_computed_tokens(&[2]).unwrap(), vec![0]);
    m.check_invariants().unwrap();
}

#[test]
fn pools_beyond_memory_are_an_error_not_an_abort() {
    // 2,000 pools of 2**31 - 1 blocks need ~170 TB of bookkeeping: more than any
    // address space, so the reservation fails everywhere and nothing is allocated.
    let cfg = ManagerConfig {
        groups: vec![
            GroupConfig {
                kind: GroupKind::Full,
                block_size: 16,
                num_blocks: i32::MAX as usize,
            };
            2000
        ],
        mamba_mode: MambaMode::None,
        enable_caching: true,
        hash_seed: 0,
        vocab_size: None,
        record_events: false,
        shared_pool: false,
        pool_of: Vec::new(),
        checkpoint_policy: CheckpointPolicy::Reuse,
        arena: None,
    };
    match Manager::new(cfg) {
        Err(Error::InvalidArgument(msg)) => assert!(msg.contains("does not fit"), "{msg}"),
        Err(e) => panic!("wrong error: {e}"),
        Ok(_) => panic!("a 170 TB manager was built"),
    }
}

fn shared(groups: &[GroupKind], num_blocks: usize, events: bool) -> Manager {
    Manager::new(ManagerConfig {
        groups: groups
            .iter()
            .map(|&kind| GroupConfig {
                kind,
                block_size: 4,
                num_blocks,
            })
            .collect(),
        mamba_mode: MambaMode::Align,
        enable_caching: true,
        hash_seed: 0,
        vocab_size: None,
        record_events: events,
        shared_pool: true,
        pool_of: Vec::new(),
        checkpoint_policy: CheckpointPolicy::Lru,
        arena: None,
    })
    .unwrap()
}

#[test]
fn shared_pool_admits_on_the_global_free_count() {
    // 4 usable blocks for both groups together.
    let mut m = shared(&[GroupKind::Full, GroupKind::State], 5, false);
    let toks: Vec<i32> = (1..=12).collect();
    add(&mut m, 1, &toks[..8]);
    add(&mut m, 2, &toks[..4]);
    m.get_computed_tokens(&[1, 2]).unwrap();
    // Request 1: 2 attention blocks + 1 state block = 3; request 2 needs 2 but 1 is left
    // (separate pools of 5 blocks each would have taken both).
    assert_eq!(
        m.allocate_slots(&[1, 2], &[8, 4], &[0, 0], true).unwrap(),
        vec![true, false]
    );
    assert_eq!(m.pool(0).unwrap().num_free(), 1);
    assert_eq!(m.pool(1).unwrap().num_free(), 1); // the same pool
                                                  // Ids come from one space: no id is in two groups' tables.
    let (a, s) = (table(&m, 0, 1), table(&m, 1, 1));
    assert!(a.iter().all(|b| !s.contains(b) || *b == 0));
    m.check_invariants().unwrap();
    m.free(&[1]).unwrap();
    assert_eq!(m.pool(0).unwrap().num_free(), 4);
    m.check_invariants().unwrap();
}

#[test]
fn shared_pool_keys_lookups_per_group() {
    // Two full-attention groups hash the same tokens to the same block hashes: the
    // shared index must still answer each group with its own blocks.
    let mut m = shared(&[GroupKind::Full, GroupKind::Full], 17, true);
    let toks: Vec<i32> = (1..=9).collect();
    add(&mut m, 1, &toks);
    m.get_computed_tokens(&[1]).unwrap();
    assert!(m.allocate_slots(&[1], &[9], &[0], true).unwrap()[0]);
    add(&mut m, 2, &toks);
    assert_eq!(m.get_computed_tokens(&[2]).unwrap(), vec![8]);
    assert_eq!(table(&m, 0, 2), table(&m, 0, 1)[..2].to_vec());
    assert_eq!(table(&m, 1, 2), table(&m, 1, 1)[..2].to_vec());
    assert_ne!(table(&m, 0, 2), table(&m, 1, 2));
    m.check_invariants().unwrap();
    // Events carry the group and the plain hash (no salt leaks out).
    let evs = m.take_events();
    let stored: Vec<(usize, Vec<BlockHash>)> = evs
        .iter()
        .filter_map(|e| match e {
            KvEvent::Stored { group, hashes, .. } => Some((*group, hashes.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(stored.len(), 2);
    assert_eq!(stored[0].1, stored[1].1);
    assert_eq!((stored[0].0, stored[1].0), (0, 1));
    let plain = stored[0].1.clone();
    m.free(&[1, 2]).unwrap();
    // Reallocating everything evicts the cached blocks of both groups.
    add(&mut m, 3, &[50; 60]);
    m.get_computed_tokens(&[3]).unwrap();
    assert!(m.allocate_slots(&[3], &[32], &[0], true).unwrap()[0]);
    let mut removed: Vec<(usize, BlockHash)> = Vec::new();
    for e in m.take_events() {
        if let KvEvent::Removed { group, hashes } = e {
            removed.extend(hashes.into_iter().map(|h| (group, h)));
        }
    }
    removed.sort_unstable();
    let mut want: Vec<(usize, BlockHash)> = (0..2)
        .flat_map(|g| plain.iter().map(move |&h| (g, h)))
        .collect();
    want.sort_unstable();
    assert_eq!(removed, want);
    m.check_invariants().unwrap();
}

#[test]
fn shared_pool_needs_equal_block_counts() {
    let cfg = ManagerConfig {
        groups: vec![
            GroupConfig {
                kind: GroupKind::Full,
                block_size: 4,
                num_blocks: 8,
            },
            GroupConfig {
                kind: GroupKind::State,
                block_size: 4,
                num_blocks: 9,
            },
        ],
        mamba_mode: MambaMode::Align,
        enable_caching: true,
        hash_seed: 0,
        vocab_size: None,
        record_events: false,
        shared_pool: true,
        pool_of: Vec::new(),
        checkpoint_policy: CheckpointPolicy::Lru,
        arena: None,
    };
    match Manager::new(cfg) {
        Err(Error::InvalidArgument(msg)) => assert!(msg.contains("same num_blocks"), "{msg}"),
        _ => panic!("unequal shared pools accepted"),
    }
}

#[test]
fn a_state_hit_cached_this_step_waits_for_the_next_step() {
    for mode in [MambaMode::Align, MambaMode::All] {
        let mut m = mgr(&[(GroupKind::Full, 64), (GroupKind::State, 16)], mode);
        let toks: Vec<i32> = (1..=8).collect();
        let mut other = toks.clone();
        other.push(50);
        add(&mut m, 1, &toks);
        add(&mut m, 2, &other);
        m.get_computed_tokens(&[1]).unwrap();
        assert!(m.allocate_slots(&[1], &[8], &[0], true).unwrap()[0]);
        // Request 2 hits the checkpoint request 1's step caches, in the same step.
        assert_eq!(m.get_computed_tokens(&[2]).unwrap(), vec![8], "{mode:?}");
        assert_eq!(
            m.allocate_slots(&[2], &[1], &[0], false).unwrap(),
            vec![false],
            "{mode:?}"
        );
        assert_eq!(m.num_computed_tokens(&[2]).unwrap(), vec![8]);
        m.check_invariants().unwrap();
        // The next step: request 1's forward wrote it.
        assert!(m.allocate_slots(&[2], &[1], &[0], true).unwrap()[0]);
        m.check_invariants().unwrap();
    }
}

fn mgr_policy(policy: CheckpointPolicy) -> Manager {
    let mut m = mgr(
        &[(GroupKind::Full, 64), (GroupKind::State, 16)],
        MambaMode::Align,
    );
    if policy == CheckpointPolicy::Lru {
        m = Manager::new(ManagerConfig {
            groups: m.groups().to_vec(),
            mamba_mode: MambaMode::Align,
            enable_caching: true,
            hash_seed: 0,
            vocab_size: None,
            record_events: false,
            shared_pool: false,
            pool_of: Vec::new(),
            checkpoint_policy: CheckpointPolicy::Lru,
            arena: None,
        })
        .unwrap();
    }
    m
}

/// Request 1: a 9-token prompt computed 4 + 4 + 1 tokens, then decoded to 16 tokens,
/// one token per step (checkpoints at 4, 8 = prompt end, 12, 16 = turn end).
fn run_turn(m: &mut Manager, toks: &[i32]) {
    add(m, 1, &toks[..9]);
    m.get_computed_tokens(&[1]).unwrap();
    for n in [4, 4, 1] {
        assert!(m.allocate_slots(&[1], &[n], &[0], true).unwrap()[0]);
    }
    for i in 9..16 {
        m.append_tokens(&[1], &toks[i..i + 1], &[0, 1]).unwrap();
        assert!(m.allocate_slots(&[1], &[1], &[0], true).unwrap()[0]);
        m.check_invariants().unwrap();
    }
    m.free(&[1]).unwrap();
}

/// Add request `id` with `tokens`, return its prefix hit, and free it.
pub(super) fn hit_of(m: &mut Manager, id: i64, tokens: &[i32]) -> i64 {
    add(m, id, tokens);
    let h = m.get_computed_tokens(&[id]).unwrap()[0];
    m.free(&[id]).unwrap();
    h
}

#[test]
fn reuse_keeps_prompt_end_and_turn_end_and_drops_interior_checkpoints() {
    let toks: Vec<i32> = (1..=20).collect();
    let retry: Vec<i32> = toks[..8].iter().copied().chain([55, 56]).collect();
    let next: Vec<i32> = toks[..16].iter().copied().chain([77, 78]).collect();
    for policy in [CheckpointPolicy::Reuse, CheckpointPolicy::Lru] {
        let mut m = mgr_policy(policy);
        run_turn(&mut m, &toks);
        let reuse = policy == CheckpointPolicy::Reuse;
        // The prompt end (8) stays; a retry branching there makes it a fork point.
        assert_eq!(hit_of(&mut m, 3, &retry), 8);
        // Interior: 12 (decode crossed it) and 4 (a prefill chunk end) are dropped
        // under `Reuse`, kept under `Lru`.
        let mid: Vec<i32> = toks[..13].iter().copied().chain([66]).collect();
        assert_eq!(hit_of(&mut m, 4, &mid), if reuse { 8 } else { 12 });
        let short: Vec<i32> = toks[..5].iter().copied().chain([44]).collect();
        assert_eq!(hit_of(&mut m, 5, &short), if reuse { 0 } else { 4 });
        // The next turn starts from the turn end (16); the fork point below stays.
        assert_eq!(hit_of(&mut m, 2, &next), 16);
        assert_eq!(hit_of(&mut m, 6, &retry), 8);
        assert_eq!(
            m.stats().interior_checkpoints_dropped,
            if reuse { 2 } else { 0 }
        );
        m.check_invariants().unwrap();
    }
}

#[test]
fn a_hit_past_a_prompt_end_nobody_branched_from_drops_it() {
    // Only the turn itself moved past its prompt end (8): the next turn's hit at 16
    // makes it interior to the path continued, so it goes under `Reuse`.
    let toks: Vec<i32> = (1..=20).collect();
    let retry: Vec<i32> = toks[..8].iter().copied().chain([55, 56]).collect();
    let next: Vec<i32> = toks[..16].iter().copied().chain([77, 78]).collect();
    for policy in [CheckpointPolicy::Reuse, CheckpointPolicy::Lru] {
        let mut m = mgr_policy(policy);
        run_turn(&mut m, &toks);
        assert_eq!(hit_of(&mut m, 2, &next), 16);
        let reuse = policy == CheckpointPolicy::Reuse;
        assert_eq!(hit_of(&mut m, 3, &retry), if reuse { 0 } else { 8 });
        m.check_invariants().unwrap();
    }
}

#[test]
fn a_checkpoint_two_requests_extend_is_a_fork_point_and_stays() {
    let toks: Vec<i32> = (1..=20).collect();
    let mut m = mgr_policy(CheckpointPolicy::Reuse);
    run_turn(&mut m, &toks);
    // Two requests start from the turn end (16) and go different ways: after the
    // first moves past it, the checkpoint is interior (dropped only once nobody else
    // holds it); the second holds it too, so it is a fork point and survives.
    let a: Vec<i32> = toks[..16]
        .iter()
        .copied()
        .chain([70, 71, 72, 73, 74])
        .collect();
    let b: Vec<i32> = toks[..16]
        .iter()
        .copied()
        .chain([80, 81, 82, 83, 84])
        .collect();
    add(&mut m, 10, &a);
    add(&mut m, 11, &b);
    assert_eq!(m.get_computed_tokens(&[10, 11]).unwrap(), vec![16, 16]);
    assert!(m.allocate_slots(&[10, 11], &[5, 5], &[0, 0], true).unwrap()[0]);
    // The next step releases the entries they moved past.
    assert_eq!(
        m.allocate_slots(&[10, 11], &[0, 0], &[0, 0], true).unwrap(),
        vec![true, true]
    );
    m.free(&[10, 11]).unwrap();
    let c: Vec<i32> = toks[..16].iter().copied().chain([90, 91]).collect();
    assert_eq!(hit_of(&mut m, 12, &c), 16);
    m.check_invariants().unwrap();
}
