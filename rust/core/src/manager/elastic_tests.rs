//! Elastic-memory scenarios: memory flows between groups both ways, floors hold under
//! adversarial load, and a random walk keeps every invariant.
//!
//! Test-only: `manager.rs` declares this module under `#[cfg(test)]`, and the module-level
//! `#![cfg(test)]` below says so here too, so its `unwrap`s never reach a library build.

#![cfg(test)]

use super::tests::{add, hit_of};
use super::*;
use crate::arena::ArenaConfig;
use crate::group_policy::{GroupConfig, GroupKind, MambaMode};

/// Full attention (page 10 B, 4 tokens a block) beside a state group (page 40 B):
/// an arena of 1040 B, regions of 80 B (12 regions after the 40 B null area).
fn elastic(state_floor: usize) -> Manager {
    Manager::new(ManagerConfig {
        groups: vec![
            GroupConfig {
                kind: GroupKind::Full,
                block_size: 4,
                num_blocks: 0,
            },
            GroupConfig {
                kind: GroupKind::State,
                block_size: 4,
                num_blocks: 0,
            },
        ],
        mamba_mode: MambaMode::Align,
        enable_caching: true,
        hash_seed: 0,
        vocab_size: None,
        record_events: true,
        shared_pool: false,
        pool_of: Vec::new(),
        checkpoint_policy: CheckpointPolicy::Reuse,
        arena: Some(ArenaConfig {
            bytes: 1000,
            region_bytes: 80,
            null_bytes: 40,
            page_bytes: vec![10, 40],
            floor_blocks: vec![0, state_floor],
        }),
    })
    .unwrap()
}

fn owned(m: &Manager, g: usize) -> usize {
    let a = m.arena().unwrap();
    (0..a.num_regions())
        .filter(|&r| a.owner(r) == Some(g))
        .count()
}

#[test]
fn floors_are_granted_at_construction() {
    let m = elastic(5);
    // The state floor is one span of exactly 5 pages of 40 B at the top, [800, 1000),
    // pinned to it; the grid of 80 B regions covers [40, 800) (10 regions, the last
    // [760, 800) short) and stays unowned for the growing group.
    let a = m.arena().unwrap();
    assert_eq!(m.pools()[1].num_present(), 5);
    assert_eq!(owned(&m, 1), 1);
    assert_eq!(owned(&m, 0), 0);
    assert_eq!(a.num_regions(), 11);
    assert_eq!(a.floor_span(1), Some(10));
    assert_eq!(a.span(10), (800, 1000));
    assert!(a.pinned(10));
    assert_eq!(a.owner(10), Some(1));
    assert_eq!(a.span(9), (760, 800));
    assert_eq!(a.owner(9), None);
    m.check_invariants().unwrap();
    // Views span the whole arena at each group's page size.
    assert_eq!(m.pools()[0].num_blocks(), 100);
    assert_eq!(m.pools()[1].num_blocks(), 25);
    assert!(Manager::new(ManagerConfig {
        shared_pool: false,
        pool_of: Vec::new(),
        checkpoint_policy: CheckpointPolicy::Reuse,
        arena: Some(ArenaConfig {
            bytes: 1000,
            region_bytes: 80,
            null_bytes: 40,
            page_bytes: vec![10, 40],
            floor_blocks: vec![0, 40],
        }),
        ..cfg_like()
    })
    .is_err());
}

fn cfg_like() -> ManagerConfig {
    ManagerConfig {
        groups: vec![
            GroupConfig {
                kind: GroupKind::Full,
                block_size: 4,
                num_blocks: 0,
            },
            GroupConfig {
                kind: GroupKind::State,
                block_size: 4,
                num_blocks: 0,
            },
        ],
        mamba_mode: MambaMode::Align,
        enable_caching: true,
        hash_seed: 0,
        vocab_size: None,
        record_events: false,
        shared_pool: false,
        pool_of: Vec::new(),
        checkpoint_policy: CheckpointPolicy::Reuse,
        arena: None,
    }
}

#[test]
fn memory_flows_both_ways() {
    let mut m = elastic(2);
    // State-heavy phase: many short requests, each a state block and one attention block.
    let mut id = 0;
    let mut ok_ids = Vec::new();
    loop {
        id += 1;
        let toks: Vec<i32> = (0..4).map(|t| (id * 10 + t) as i32).collect();
        add(&mut m, id, &toks);
        m.get_computed_tokens(&[id]).unwrap();
        if !m.allocate_slots(&[id], &[4], &[0], true).unwrap()[0] {
            m.free(&[id]).unwrap();
            break;
        }
        ok_ids.push(id);
        m.check_invariants().unwrap();
    }
    let state_regions = owned(&m, 1);
    assert!(
        state_regions > 1,
        "state grew beyond its floor: {state_regions}"
    );
    // Attention-heavy phase: free them all, then one long request takes the memory.
    m.free(&ok_ids).unwrap();
    let long: Vec<i32> = (0..300).map(|t| 5000 + t).collect();
    add(&mut m, 999, &long);
    m.get_computed_tokens(&[999]).unwrap();
    assert!(m.allocate_slots(&[999], &[300], &[0], true).unwrap()[0]);
    m.check_invariants().unwrap();
    assert!(
        m.elastic_stats().moves > 0,
        "regions moved from state to attention"
    );
    assert!(owned(&m, 1) < state_regions);
    assert!(m.pools()[1].num_present() >= 2, "state floor kept");
    // 75 attention blocks = 750 B: more than the arena minus the state's peak.
    assert_eq!(m.pools()[0].num_in_use(), 75);
    // And back: the long request ends, short ones take state memory again.
    m.free(&[999]).unwrap();
    let before = owned(&m, 1);
    for j in 0..8 {
        let rid = 2000 + j;
        let toks: Vec<i32> = (0..4).map(|t| (rid * 10 + t) as i32).collect();
        add(&mut m, rid, &toks);
        m.get_computed_tokens(&[rid]).unwrap();
        assert!(m.allocate_slots(&[rid], &[4], &[0], true).unwrap()[0]);
    }
    m.check_invariants().unwrap();
    assert!(
        owned(&m, 1) > before,
        "memory flowed back to the state group"
    );
    // Region moves evicted cached blocks with events.
    let removed = m
        .take_events()
        .iter()
        .filter(|e| matches!(e, KvEvent::Removed { .. }))
        .count();
    assert!(removed > 0);
}

#[test]
fn floor_holds_under_adversarial_attention_load() {
    let mut m = elastic(4);
    // A long request grabs everything it can.
    let long: Vec<i32> = (0..400).collect();
    add(&mut m, 1, &long);
    m.get_computed_tokens(&[1]).unwrap();
    let fits = m.allocate_slots(&[1], &[400], &[0], true).unwrap()[0];
    assert!(
        !fits,
        "the arena cannot hold 100 attention blocks beside the floor"
    );
    let grab: Vec<i32> = (1000..1300).collect();
    add(&mut m, 2, &grab);
    m.get_computed_tokens(&[2]).unwrap();
    let mut n = 0;
    while m.allocate_slots(&[2], &[4], &[0], true).unwrap()[0] {
        n += 4;
        m.append_tokens(&[2], &[], &[0, 0]).unwrap();
        if n >= 300 {
            break;
        }
    }
    m.check_invariants().unwrap();
    // The state group still gets its floor: four requests' states.
    for j in 0..4 {
        let rid = 10 + j;
        add(&mut m, rid, &[7, 7, 7, j as i32]);
        m.get_computed_tokens(&[rid]).unwrap();
        let st_free = m.pools()[1].num_free();
        assert!(st_free >= 1, "state floor obtainable");
    }
    m.check_invariants().unwrap();
}

#[test]
fn random_walk_keeps_elastic_invariants() {
    let mut rnd = crate::test_rng::xorshift(0x9E37_79B9_7F4A_7C15);
    let mut m = elastic(3);
    let mut live: Vec<i64> = Vec::new();
    let mut next = 1;
    for step in 0..3000 {
        match rnd(6) {
            0 | 1 => {
                let len = 1 + rnd(120) as usize;
                let base = rnd(3) as i32 * 100;
                let toks: Vec<i32> = (0..len as i32).map(|t| base + t).collect();
                add(&mut m, next, &toks);
                m.get_computed_tokens(&[next]).unwrap();
                live.push(next);
                next += 1;
            }
            2 | 3 if !live.is_empty() => {
                let id = live[rnd(live.len() as u64) as usize];
                let nt = m.num_tokens(&[id]).unwrap()[0];
                let nc = m.num_computed_tokens(&[id]).unwrap()[0];
                if nc == nt {
                    let t = rnd(500) as i32;
                    m.append_tokens(&[id], &[t], &[0, 1]).unwrap();
                }
                let n = (nt.max(nc + 1) - nc).min(1 + rnd(64) as i64);
                let _ = m.allocate_slots(&[id], &[n], &[0], true).unwrap();
            }
            4 | 5 if !live.is_empty() && rnd(2) == 0 => {
                let i = rnd(live.len() as u64) as usize;
                m.free(&[live.swap_remove(i)]).unwrap();
            }
            _ if !live.is_empty() => {
                let id = live[rnd(live.len() as u64) as usize];
                m.preempt(&[id]).unwrap();
                m.get_computed_tokens(&[id]).unwrap();
            }
            _ => {}
        }
        if let Err(e) = m.check_invariants() {
            panic!("step {step}: {e}");
        }
        let ob = m.obtainable_blocks();
        for (g, p) in m.pools().iter().enumerate() {
            assert!(ob[g] >= p.num_free());
        }
    }
    assert!(m.elastic_stats().moves > 0);
}

#[test]
fn attention_beyond_the_deepest_checkpoint_is_dropped_at_release() {
    // No checkpoint (the step ends off a boundary): no attention block can serve a
    // hybrid hit, so none stays cached.
    let mut m = elastic(2);
    let toks: Vec<i32> = (0..10).collect();
    add(&mut m, 1, &toks);
    m.get_computed_tokens(&[1]).unwrap();
    assert!(m.allocate_slots(&[1], &[10], &[0], true).unwrap()[0]);
    assert_eq!(m.pools()[0].num_in_use(), 3);
    m.free(&[1]).unwrap();
    assert_eq!(m.pools()[0].num_cached(), 0);
    // A checkpoint at 8: the two attention blocks below it stay and serve a hit.
    let toks: Vec<i32> = (100..110).collect();
    add(&mut m, 2, &toks);
    m.get_computed_tokens(&[2]).unwrap();
    assert!(m.allocate_slots(&[2], &[8], &[0], true).unwrap()[0]);
    assert!(m.allocate_slots(&[2], &[2], &[0], true).unwrap()[0]);
    m.free(&[2]).unwrap();
    assert_eq!(m.pools()[0].num_cached(), 2);
    add(&mut m, 3, &toks);
    assert_eq!(m.get_computed_tokens(&[3]).unwrap(), vec![8]);
    m.check_invariants().unwrap();
}

#[test]
fn checkpoints_whose_attention_is_gone_are_dropped() {
    let mut m = elastic(2);
    let toks: Vec<i32> = (0..9).collect();
    add(&mut m, 1, &toks);
    m.get_computed_tokens(&[1]).unwrap();
    assert!(m.allocate_slots(&[1], &[8], &[0], true).unwrap()[0]);
    assert!(m.allocate_slots(&[1], &[1], &[0], true).unwrap()[0]);
    let anchor = m.block_hashes(0, 1).unwrap()[1];
    m.free(&[1]).unwrap();
    assert_eq!(m.pools()[1].num_cached(), 1);
    // Evict the attention block the checkpoint at 8 needs.
    let ab = m.pools()[0].lookup_one(anchor).unwrap();
    m.pools[0].evict(&[ab]).unwrap();
    // The next allocation that needs the slow path (state short of uncached blocks)
    // drops the orphaned checkpoint instead of keeping it.
    let mut id = 10;
    while m.pools()[1].num_cached() > 0 && id < 40 {
        let t: Vec<i32> = (0..4).map(|x| 1000 * id + x).collect();
        add(&mut m, id as i64, &t);
        m.get_computed_tokens(&[id as i64]).unwrap();
        let _ = m.allocate_slots(&[id as i64], &[4], &[0], true).unwrap();
        id += 1;
    }
    assert_eq!(m.pools()[1].num_cached(), 0);
    assert!(m.elastic_stats().orphans >= 1);
    m.check_invariants().unwrap();
}

/// Full attention and a sliding window at the same page (10 B) and block size: one
/// pool (gpt-oss, Gemma-3), its floor the window's (`window_floor` blocks). With
/// `window_page` other than 10 they keep a pool each.
fn full_and_window_cfg(window_page: u64, window_floor: usize) -> ManagerConfig {
    ManagerConfig {
        groups: vec![
            GroupConfig {
                kind: GroupKind::Full,
                block_size: 4,
                num_blocks: 0,
            },
            GroupConfig {
                kind: GroupKind::SlidingWindow { window: 8 },
                block_size: 4,
                num_blocks: 0,
            },
        ],
        record_events: true,
        arena: Some(ArenaConfig {
            bytes: 1000,
            region_bytes: 80,
            null_bytes: 40,
            page_bytes: vec![10, window_page],
            floor_blocks: vec![0, window_floor],
        }),
        ..cfg_like()
    }
}

fn full_and_window(window_page: u64, window_floor: usize) -> Manager {
    Manager::new(full_and_window_cfg(window_page, window_floor)).unwrap()
}

#[test]
fn equal_pages_share_one_pool_and_one_lru() {
    let mut m = full_and_window(10, 3);
    assert_eq!(m.pool_of(), &[0, 0]);
    assert_eq!(m.pools().len(), 1);
    let a = m.arena().unwrap();
    assert_eq!((a.num_groups(), a.floor(0)), (1, 3));
    // The pool grows (its full group has no floor): its floor from the bottom of the
    // grid first, the region [40, 120) (8 ids), the rest on demand.
    assert_eq!(m.pools()[0].num_present(), 8);
    assert_eq!(owned(&m, 0), 1);
    m.check_invariants().unwrap();
    // A 40-token request caches 10 full blocks and, in the same pool, the window's
    // blocks (keyed apart by the groups' salts although their hashes are equal).
    let toks: Vec<i32> = (0..40).collect();
    add(&mut m, 1, &toks);
    m.get_computed_tokens(&[1]).unwrap();
    assert!(m.allocate_slots(&[1], &[40], &[0], true).unwrap()[0]);
    m.free(&[1]).unwrap();
    let cached = m.pools()[0].num_cached();
    assert!(
        cached >= 12,
        "both groups' blocks cached in one pool: {cached}"
    );
    // The same prompt hits through both groups.
    add(&mut m, 2, &toks);
    assert_eq!(m.get_computed_tokens(&[2]).unwrap(), vec![36]);
    m.free(&[2]).unwrap();
    m.take_events();
    // A new request of 192 tokens needs all 96 blocks in one step (48 per group): every
    // cached block of either group goes from the one queue, each event naming its group.
    let long: Vec<i32> = (1000..1192).collect();
    add(&mut m, 3, &long);
    m.get_computed_tokens(&[3]).unwrap();
    assert!(m.allocate_slots(&[3], &[192], &[0], true).unwrap()[0]);
    assert_eq!(m.pools()[0].num_in_use(), 96);
    m.check_invariants().unwrap();
    let mut removed = [0usize; 2];
    for e in m.take_events() {
        if let KvEvent::Removed { group, hashes } = e {
            removed[group] += hashes.len();
        }
    }
    assert_eq!(removed[0], 10);
    assert_eq!(removed[1] + removed[0], cached);
    assert_eq!(m.elastic_stats().moves, 0);
}

#[test]
fn different_pages_keep_their_own_pools() {
    let m = full_and_window(20, 3);
    assert_eq!(m.pool_of(), &[0, 1]);
    assert_eq!(m.pools().len(), 2);
    let a = m.arena().unwrap();
    assert_eq!((a.num_groups(), a.floor(1)), (2, 3));
    assert!(m.pools()[1].num_present() >= 3);
    m.check_invariants().unwrap();
}

/// The plan may keep an equal-page window in its own pool (a capped window floor:
/// `planning/elastic.py`): `pool_of` with an arena, checked against the pages.
#[test]
fn explicit_pools_in_an_arena() {
    let with = |window_page: u64, pool_of: Vec<usize>| {
        Manager::new(ManagerConfig {
            pool_of,
            ..full_and_window_cfg(window_page, 3)
        })
    };
    // Equal pages kept apart: two pools, the window's floor in its own regions.
    let mut m = with(10, vec![0, 1]).unwrap();
    assert_eq!(m.pool_of(), &[0, 1]);
    assert_eq!(m.pools().len(), 2);
    let a = m.arena().unwrap();
    assert_eq!((a.num_groups(), a.floor(1)), (2, 3));
    assert!(m.pools()[1].num_present() >= 3);
    let toks: Vec<i32> = (0..40).collect();
    add(&mut m, 1, &toks);
    m.get_computed_tokens(&[1]).unwrap();
    assert!(m.allocate_slots(&[1], &[40], &[0], true).unwrap()[0]);
    m.free(&[1]).unwrap();
    // Each pool caches its own group's blocks: the full group's 10, the window's tail.
    assert_eq!(m.pools()[0].num_cached(), 10);
    assert!(m.pools()[1].num_cached() >= 2);
    add(&mut m, 2, &toks);
    assert_eq!(m.get_computed_tokens(&[2]).unwrap(), vec![36]);
    m.check_invariants().unwrap();
    // Equal pages named as one pool: as without `pool_of`.
    assert_eq!(with(10, vec![0, 0]).unwrap().pool_of(), &[0, 0]);
    // Refused: pages differ, pools not numbered by first group, an entry short.
    for (page, p) in [(20, vec![0, 0]), (10, vec![1, 0]), (10, vec![0])] {
        assert!(
            matches!(with(page, p.clone()), Err(Error::InvalidArgument(_))),
            "{page} {p:?}"
        );
    }
}

/// Request `id`: `prompt` computed (a chunk ending on its last block boundary, then the
/// rest), then decoded one token per step up to
/// `toks.len()` tokens (`toks` starts with `prompt`), then finished.
fn run_turn_to(m: &mut Manager, id: i64, toks: &[i32], prompt: usize) -> i64 {
    add(m, id, &toks[..prompt]);
    let h = m.get_computed_tokens(&[id]).unwrap()[0];
    // The scheduler ends a prefill chunk on the prompt's last block boundary.
    let end = (prompt / 4 * 4) as i64;
    for n in [end - h, prompt as i64 - end] {
        if n > 0 {
            assert!(m.allocate_slots(&[id], &[n], &[0], true).unwrap()[0]);
        }
    }
    for i in prompt..toks.len() {
        m.append_tokens(&[id], &toks[i..i + 1], &[0, 1]).unwrap();
        assert!(m.allocate_slots(&[id], &[1], &[0], true).unwrap()[0]);
        m.check_invariants().unwrap();
    }
    m.free(&[id]).unwrap();
    h
}

#[test]
fn a_prompt_end_is_kept_only_after_a_long_fresh_prefill() {
    // A state page (40 B) holds 16 tokens of attention (10 B per 4 tokens): a prompt
    // end is kept when the prompt computed at least 32 tokens beyond its hit.
    let mut m = elastic(2);
    assert_eq!(m.prompt_keep_min, 32);
    let toks: Vec<i32> = (1..=80).collect();
    // Turn 1: 40 fresh prompt tokens, decoded to 50: the prompt end (40) stays.
    assert_eq!(run_turn_to(&mut m, 1, &toks[..50], 40), 0);
    let retry1: Vec<i32> = toks[..40].iter().copied().chain([900, 901]).collect();
    assert_eq!(hit_of(&mut m, 2, &retry1), 40);
    // Turn 2 continues from turn 1's tail (48) and adds 8 tokens: its prompt end (56)
    // computed 8 < 32 tokens beyond the hit, so only its tail (64) stays.
    assert_eq!(run_turn_to(&mut m, 3, &toks[..66], 58), 48);
    let retry2: Vec<i32> = toks[..56].iter().copied().chain([900, 901]).collect();
    assert!(hit_of(&mut m, 4, &retry2) < 56);
    let next: Vec<i32> = toks[..66].iter().copied().chain([902, 903]).collect();
    assert_eq!(hit_of(&mut m, 5, &next), 64);
    m.check_invariants().unwrap();
}

#[test]
fn a_prompt_end_counts_from_the_fork_point_at_the_shared_prefix_boundary() {
    // prompt_keep_min 32 (see above). Request 1 caches 40 fresh tokens; request 2
    // shares its first 20 (no checkpoint there: hit 0, boundary 20), ends a chunk on
    // that boundary (a fork point, kept), then its prompt end at 48: 48 tokens past its
    // hit but only 28 past the fork point, so it is not kept (its tail moves on to 60,
    // where it finishes), and a retry of its first 48 tokens hits the fork point.
    let mut m = elastic(2);
    let shared: Vec<i32> = (1..=20).collect();
    let t1: Vec<i32> = shared.iter().copied().chain(100..121).collect();
    assert_eq!(run_turn_to(&mut m, 1, &t1, 40), 0);
    let t2: Vec<i32> = shared.iter().copied().chain(200..240).collect();
    add(&mut m, 2, &t2[..50]);
    assert_eq!(m.get_computed_tokens(&[2]).unwrap(), vec![0]);
    assert_eq!(m.shared_prefix_boundary(&[2]).unwrap(), vec![20]);
    for n in [20, 28, 2] {
        assert!(m.allocate_slots(&[2], &[n], &[0], true).unwrap()[0]);
    }
    for i in 50..60 {
        m.append_tokens(&[2], &t2[i..i + 1], &[0, 1]).unwrap();
        assert!(m.allocate_slots(&[2], &[1], &[0], true).unwrap()[0]);
    }
    m.free(&[2]).unwrap();
    m.check_invariants().unwrap();
    let retry: Vec<i32> = t2[..48].iter().copied().chain([900, 901]).collect();
    assert_eq!(hit_of(&mut m, 3, &retry), 20);
    let next: Vec<i32> = t2[..60].iter().copied().chain([902, 903]).collect();
    assert_eq!(hit_of(&mut m, 4, &next), 60);
}

#[test]
fn a_prompt_chunk_end_serves_hits_while_its_request_runs() {
    // prompt_keep_min 32. Request 1 computes an 80-token prompt in two chunks (40, 40):
    // its prompt end (80) stays, and its chunk end at 40 (40 past its hit, 40 before the
    // prompt end) stays while it runs: a request sharing its first 60 tokens hits 40
    // then, and nothing once request 1 has finished (the chunk end is interior then).
    // A chunk end less than 32 tokens before the prompt end (60 of 80) adds little
    // beside the prompt end: not kept.
    for (first, want) in [(40usize, 40i64), (60, 0)] {
        let mut m = elastic(2);
        let toks: Vec<i32> = (1..=80).collect();
        add(&mut m, 1, &toks);
        assert_eq!(m.get_computed_tokens(&[1]).unwrap(), vec![0]);
        for n in [first, 80 - first] {
            assert!(m.allocate_slots(&[1], &[n as i64], &[0], true).unwrap()[0]);
        }
        m.append_tokens(&[1], &[500], &[0, 1]).unwrap();
        assert!(m.allocate_slots(&[1], &[1], &[0], true).unwrap()[0]);
        let sibling: Vec<i32> = toks[..60].iter().copied().chain([900, 901]).collect();
        assert_eq!(hit_of(&mut m, 2, &sibling), want);
        m.free(&[1]).unwrap();
        m.check_invariants().unwrap();
        assert_eq!(hit_of(&mut m, 3, &sibling), 0);
        let retry: Vec<i32> = toks.iter().copied().chain([902]).collect();
        assert_eq!(hit_of(&mut m, 4, &retry), 80);
    }
}

/// Short request `j` of the tests below (16 tokens, a checkpoint at 16), probed with
/// one more token: whether its checkpoint is cached, and the hit.
fn probe_short(m: &mut Manager, j: i64) -> (bool, i64) {
    let t: Vec<i32> = (0..16).map(|x| 10_000 * j as i32 + x).chain([7]).collect();
    let pid = 1_000_000 + j;
    add(m, pid, &t);
    let h = m.get_computed_tokens(&[pid]).unwrap()[0];
    let hs = m.block_hashes(1, pid).unwrap();
    let cached = m.pools()[1].lookup_one(hs[3] ^ m.salt[1]).is_some();
    m.free(&[pid]).unwrap();
    (cached, h)
}

fn run_short(m: &mut Manager, id: &mut i64) {
    let t: Vec<i32> = (0..16).map(|x| 10_000 * *id as i32 + x).collect();
    add(m, *id, &t);
    m.get_computed_tokens(&[*id]).unwrap();
    assert!(m.allocate_slots(&[*id], &[16], &[0], true).unwrap()[0]);
    m.free(&[*id]).unwrap();
    *id += 1;
}

#[test]
fn a_state_move_never_cuts_a_path_under_a_cached_checkpoint() {
    let mut m = elastic(2);
    // Four deep turns at once (40-token prompts): the state group grows past its floor,
    // and their checkpoints (worth 40 tokens each) stay cached in its regions.
    let ids: Vec<i64> = (1..=4).collect();
    for &i in &ids {
        let t: Vec<i32> = (0..41).map(|x| 1000 * i as i32 + x).collect();
        add(&mut m, i, &t);
    }
    m.get_computed_tokens(&ids).unwrap();
    assert!(m
        .allocate_slots(&ids, &[40; 4], &[0; 4], true)
        .unwrap()
        .iter()
        .all(|&ok| ok));
    assert!(m
        .allocate_slots(&ids, &[1; 4], &[0; 4], true)
        .unwrap()
        .iter()
        .all(|&ok| ok));
    m.free(&ids).unwrap();
    assert!(m.pools()[1].num_cached() >= 4);
    // Short requests fill every other region with cached attention blocks, then keep
    // coming. The state group evicts its own least recently used checkpoints, or takes
    // a region of attention blocks that all became free before its next victim did:
    // those lie under no cached checkpoint (a checkpoint's path is released with it or
    // later), so every short request whose checkpoint is still cached still hits it.
    let first = 100;
    let mut id = first;
    while m.arena().unwrap().num_unowned() > 0 {
        run_short(&mut m, &mut id);
    }
    let moves = m.elastic_stats().moves;
    let evicted = m.elastic_stats().evicted_blocks;
    for _ in 0..20 {
        run_short(&mut m, &mut id);
        m.check_invariants().unwrap();
        for j in first..id {
            let (cached, hit) = probe_short(&mut m, j);
            assert!(
                !cached || hit == 16,
                "request {j}: checkpoint cached, hit {hit}"
            );
        }
    }
    // Such regions did move, evicting (unreachable) cached attention blocks.
    assert!(m.elastic_stats().moves > moves);
    assert!(m.elastic_stats().evicted_blocks > evicted);
}

#[test]
fn prompt_keep_min_is_capped_at_one_default_prefill_step() {
    // A state page of 100 kB beside 1-byte attention pages of 4 tokens: twice the page
    // is 800,000 attention tokens, capped at 8,192.
    let groups = [
        GroupConfig {
            kind: GroupKind::Full,
            block_size: 4,
            num_blocks: 0,
        },
        GroupConfig {
            kind: GroupKind::State,
            block_size: 4,
            num_blocks: 0,
        },
    ];
    let arena = crate::arena::Arena::new(ArenaConfig {
        bytes: 1_000_000,
        region_bytes: 100_000,
        null_bytes: 100_000,
        page_bytes: vec![1, 100_000],
        floor_blocks: vec![0, 1],
    })
    .unwrap();
    assert_eq!(
        checkpoints::prompt_keep_min(&groups, &arena, &[0, 1], &[0, 1]),
        8192
    );
    assert_eq!(elastic(2).prompt_keep_min, 32);
}

/// A window floor of 20 blocks of 20 B (400 of the arena's 960 B beyond the null area)
/// beside full attention (10 B pages): the full group takes the window's regions above
/// its effective floor, and raising the floor takes them back once they are idle.
#[test]
fn effective_floor_lends_the_window_floor_and_takes_it_back() {
    let mut m = full_and_window(20, 20);
    assert_eq!(m.effective_floors(), &[0, 20]);
    assert!(m.pools()[1].num_present() >= 20);
    // 280 tokens: 70 full blocks, more than the 56 the grid holds beside the planned
    // window floor; refused while the floor is the planned one.
    let toks: Vec<i32> = (0..280).collect();
    add(&mut m, 1, &toks);
    m.get_computed_tokens(&[1]).unwrap();
    assert!(!m.allocate_slots(&[1], &[280], &[0], true).unwrap()[0]);
    // In chunks of 8 tokens its window holds at most cdiv(8 + 8 - 2, 4) = 4 blocks:
    // with that floor the full group takes the window's idle regions.
    assert!(m.set_floor_needs(&[0, 4]).unwrap());
    assert_eq!(m.effective_floors(), &[0, 4]);
    for _ in 0..35 {
        assert!(m.allocate_slots(&[1], &[8], &[0], true).unwrap()[0]);
        assert!(m.pools()[1].num_in_use() <= 4);
    }
    m.check_invariants().unwrap();
    let lent = m.pools()[1].num_present();
    assert!((4..20).contains(&lent), "window pool holds {lent}");
    // The floor cannot rise while the full group's blocks fill those regions: refused,
    // nothing changed; a need above the planned floor, one for the growing group, or
    // the wrong length is an error, nothing changed.
    assert!(!m.set_floor_needs(&[0, 20]).unwrap());
    assert_eq!(m.effective_floors(), &[0, 4]);
    for bad in [vec![0, 21], vec![1, 0], vec![0]] {
        assert!(m.set_floor_needs(&bad).is_err());
        assert_eq!(m.effective_floors(), &[0, 4]);
    }
    assert_eq!(m.pools()[1].num_present(), lent);
    // Held spare: what the window holds above its floor beside blocks in use.
    let spare = m.held_spare();
    assert!(spare[1] <= lent - 4);
    // Once the request is gone its regions are idle (cached): the floor rises again,
    // taking them back (their cached blocks evicted).
    m.free(&[1]).unwrap();
    assert!(m.set_floor_needs(&[0, 20]).unwrap());
    assert!(m.pools()[1].num_present() >= 20);
    assert_eq!(m.effective_floors(), &[0, 20]);
    m.check_invariants().unwrap();
    // A manager without an arena has no effective floors.
    let mut cfg = cfg_like();
    for g in &mut cfg.groups {
        g.num_blocks = 16;
    }
    let mut plain = Manager::new(cfg).unwrap();
    assert!(plain.set_floor_needs(&[0, 0]).is_err());
}

#[test]
fn a_state_region_of_stale_checkpoints_goes_to_attention_before_a_live_path() {
    let mut m = elastic(2);
    let conv = |i: i32| -> Vec<i32> { (0..50).map(|x| 1000 * i + x).collect() };
    let (a1, a2, a3, b) = (conv(1), conv(2), conv(3), conv(4));
    // Four conversations, one turn each: checkpoints at 40 (prompt end) and 48 (tail).
    run_turn_to(&mut m, 1, &a1, 40);
    run_turn_to(&mut m, 2, &a2, 40);
    run_turn_to(&mut m, 3, &a3, 40);
    run_turn_to(&mut m, 4, &b, 40);
    assert_eq!(m.pools()[1].num_cached(), 8);
    // A1's and A2's attention paths are read again (as siblings reading them without
    // their checkpoints would): their checkpoints are now the least recently used
    // memory, older than conversation B's path, attention's least recently used.
    for (k, t) in [(11, &a1), (12, &a2), (13, &a3)] {
        add(&mut m, k, &t[..48]);
        let hs = m.block_hashes(0, k).unwrap();
        m.free(&[k]).unwrap();
        let ids: Vec<i32> = hs
            .iter()
            .filter_map(|&h| m.pools()[0].lookup_one(h ^ m.salt[0]))
            .collect();
        assert_eq!(ids.len(), 12);
        m.tick_clock();
        m.pools[0].touch(&ids).unwrap();
        m.pools[0].free(&ids).unwrap();
    }
    // A long request (steps ending off block boundaries: no checkpoints of its own)
    // needs attention memory until a region holding cached blocks moves.
    let big: Vec<i32> = (0..300).map(|x| 50_000 + x).collect();
    add(&mut m, 900, &big);
    m.get_computed_tokens(&[900]).unwrap();
    assert!(m.allocate_slots(&[900], &[2], &[0], true).unwrap()[0]);
    let mut n = 2;
    while m.elastic_stats().evicted_blocks == 0 && n < 290 {
        assert!(m.allocate_slots(&[900], &[4], &[0], true).unwrap()[0]);
        n += 4;
        m.check_invariants().unwrap();
    }
    assert!(
        m.elastic_stats().evicted_blocks > 0,
        "no stale state region moved"
    );
    // B's path and checkpoints are all there; one of A1's or A2's checkpoints is not.
    let probe = |m: &mut Manager, t: &[i32], pid: i64| {
        let p: Vec<i32> = t[..48].iter().copied().chain([9]).collect();
        hit_of(m, pid, &p)
    };
    assert_eq!(probe(&mut m, &b, 100), 48);
    let hs = [&a1, &a2, &a3].map(|t| probe(&mut m, t, 200 + t[0] as i64));
    assert!(hs.iter().any(|&h| h < 48), "{hs:?}");
}
