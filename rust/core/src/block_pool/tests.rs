//! Unit tests of `BlockPool` (test-only: `#[cfg(test)] mod tests` in `block_pool.rs`).

use super::*;

#[test]
fn starts_all_free_in_id_order() {
    let p = BlockPool::new(5).unwrap();
    assert_eq!(p.num_free(), 4);
    assert_eq!(p.num_in_use(), 0);
    assert_eq!(p.free_queue(), vec![1, 2, 3, 4]);
    p.check_invariants().unwrap();
}

#[test]
fn zero_blocks_rejected() {
    assert!(BlockPool::new(0).is_err());
    let p = BlockPool::new(1).unwrap();
    assert_eq!(p.num_free(), 0);
}

#[test]
fn allocate_pops_head_unhashed_free_joins_head_in_order() {
    let mut p = BlockPool::new(6).unwrap();
    let a = p.allocate(3).unwrap();
    assert_eq!(a, vec![1, 2, 3]);
    p.free(&[3, 1]).unwrap();
    assert_eq!(p.free_queue(), vec![3, 1, 4, 5]);
    assert_eq!(p.allocate(3).unwrap(), vec![3, 1, 4]);
    p.check_invariants().unwrap();
}

#[test]
fn hashed_free_joins_tail_unhashed_joins_head() {
    let mut p = BlockPool::new(7).unwrap();
    assert_eq!(p.allocate(4).unwrap(), vec![1, 2, 3, 4]);
    p.cache_blocks(&[2, 4], &[20, 40]).unwrap();
    // Tail first, as a request releases its table: 4 (hashed), 3, 2 (hashed), 1.
    p.free(&[4, 3, 2, 1]).unwrap();
    assert_eq!(p.free_queue(), vec![3, 1, 5, 6, 4, 2]);
    // Reuse takes the never-hittable blocks first; cached ones survive longest.
    assert_eq!(p.allocate(4).unwrap(), vec![3, 1, 5, 6]);
    assert_eq!(p.lookup(&[20, 40]), vec![2, 4]);
    p.check_invariants().unwrap();
}

#[test]
fn out_of_blocks_leaves_state() {
    let mut p = BlockPool::new(3).unwrap();
    let before = p.free_queue();
    assert_eq!(
        p.allocate(3),
        Err(Error::OutOfBlocks {
            requested: 3,
            free: 2
        })
    );
    assert_eq!(p.free_queue(), before);
}

#[test]
fn double_free_and_null_rejected_atomically() {
    let mut p = BlockPool::new(4).unwrap();
    let a = p.allocate(2).unwrap();
    assert_eq!(p.free(&[a[0], a[0]]), Err(Error::DoubleFree { id: a[0] }));
    assert_eq!(p.num_in_use(), 2);
    assert_eq!(p.free(&[a[0], 0]), Err(Error::NullBlock));
    assert_eq!(p.num_in_use(), 2);
    assert!(matches!(
        p.free(&[a[0], 9]),
        Err(Error::InvalidBlockId { id: 9, .. })
    ));
    assert!(matches!(
        p.free(&[-1]),
        Err(Error::InvalidBlockId { id: -1, .. })
    ));
    p.free(&a).unwrap();
    assert_eq!(p.free(&[a[0]]), Err(Error::DoubleFree { id: a[0] }));
    p.check_invariants().unwrap();
}

#[test]
fn cached_free_block_is_hit_then_evicted_on_reallocation() {
    let mut p = BlockPool::new(4).unwrap();
    let a = p.allocate(1).unwrap();
    p.cache_blocks(&a, &[42]).unwrap();
    assert_eq!(p.lookup(&[42, 7]), vec![a[0], -1]);
    p.free(&a).unwrap();
    assert_eq!(p.num_cached(), 1);
    assert_eq!(p.lookup(&[42]), vec![a[0]]);
    // Touch revives it: a prefix hit.
    p.touch(&a).unwrap();
    assert_eq!(p.num_cached(), 0);
    assert_eq!(p.num_in_use(), 1);
    p.free(&a).unwrap();
    // Allocating everything hands the cached block out last (it was freed last)
    // and evicts it.
    let all = p.allocate(3).unwrap();
    assert_eq!(*all.last().unwrap(), a[0]);
    assert_eq!(p.lookup(&[42]), vec![-1]);
    let ev = p.take_events();
    assert_eq!(
        ev,
        vec![
            PoolEvent::Stored {
                block: a[0],
                hash: 42
            },
            PoolEvent::Removed {
                block: a[0],
                hash: 42
            }
        ]
    );
    assert!(p.take_events().is_empty());
    p.check_invariants().unwrap();
}

#[test]
fn one_hash_many_blocks() {
    let mut p = BlockPool::new(5).unwrap();
    let a = p.allocate(3).unwrap();
    p.cache_blocks(&a, &[9, 9, 9]).unwrap();
    assert_eq!(p.lookup_one(9), Some(a[0]));
    p.evict(&[a[0]]).unwrap();
    assert_eq!(p.lookup_one(9), Some(a[1]));
    p.evict(&[a[2]]).unwrap();
    assert_eq!(p.lookup_one(9), Some(a[1]));
    p.evict(&[a[1]]).unwrap();
    assert_eq!(p.lookup_one(9), None);
    p.check_invariants().unwrap();
}

#[test]
fn cache_rules() {
    let mut p = BlockPool::new(4).unwrap();
    let a = p.allocate(1).unwrap();
    assert!(matches!(
        p.cache_blocks(&[3], &[1]),
        Err(Error::NotInUse { id: 3 })
    ));
    p.cache_blocks(&a, &[1]).unwrap();
    p.cache_blocks(&a, &[1]).unwrap(); // same hash: no-op
    assert_eq!(
        p.cache_blocks(&a, &[2]),
        Err(Error::AlreadyCached { id: a[0] })
    );
    assert!(matches!(
        p.cache_blocks(&a, &[]),
        Err(Error::LengthMismatch { .. })
    ));
    assert_eq!(p.take_events().len(), 1);
}

#[test]
fn reset_only_when_idle() {
    let mut p = BlockPool::new(4).unwrap();
    let a = p.allocate(2).unwrap();
    p.cache_blocks(&a, &[1, 2]).unwrap();
    assert_eq!(p.reset_prefix_cache(), Err(Error::PoolInUse { in_use: 2 }));
    p.free(&a).unwrap();
    p.reset_prefix_cache().unwrap();
    assert_eq!(p.num_cached(), 0);
    assert_eq!(p.lookup(&[1, 2]), vec![-1, -1]);
    assert_eq!(p.take_events().last(), Some(&PoolEvent::AllCleared));
    p.check_invariants().unwrap();
}

#[test]
fn evict_free_cached_keeps_it_free() {
    let mut p = BlockPool::new(3).unwrap();
    let a = p.allocate(1).unwrap();
    p.cache_blocks(&a, &[5]).unwrap();
    p.free(&a).unwrap();
    p.evict(&a).unwrap();
    assert_eq!(p.num_free(), 2);
    assert_eq!(p.num_cached(), 0);
    p.check_invariants().unwrap();
}
#[test]
fn repeated_ids_free_in_the_order_they_reach_zero() {
    let mut p = BlockPool::new(5).unwrap();
    let a = p.allocate(4).unwrap(); // 1 2 3 4
    p.touch(&[1]).unwrap(); // block 1 now has two references
    p.free(&[1, 2, 1, 3]).unwrap();
    assert_eq!(p.free_queue(), vec![2, 1, 3]);
    assert_eq!(p.ref_counts(), &[0, 0, 0, 0, 1]);
    p.free(&a[3..]).unwrap();
    p.check_invariants().unwrap();
}

#[test]
fn failed_free_restores_every_reference() {
    let mut p = BlockPool::new(6).unwrap();
    p.allocate(4).unwrap();
    p.touch(&[2]).unwrap();
    let before = p.clone();
    // Block 2 has two references: the third occurrence is the double free.
    assert_eq!(p.free(&[1, 2, 3, 2, 2]), Err(Error::DoubleFree { id: 2 }));
    assert_eq!(p.ref_counts(), before.ref_counts());
    assert_eq!(p.free_queue(), before.free_queue());
    // The first offending position decides the error.
    assert!(matches!(
        p.free(&[1, 1, 99]),
        Err(Error::DoubleFree { id: 1 })
    ));
    assert!(matches!(
        p.free(&[1, 99, 1, 1]),
        Err(Error::InvalidBlockId { id: 99, .. })
    ));
    assert_eq!(p.ref_counts(), before.ref_counts());
    p.check_invariants().unwrap();
}

#[test]
fn check_free_agrees_with_free() {
    let mut p = BlockPool::new(8).unwrap();
    p.allocate(5).unwrap();
    p.touch(&[3, 3]).unwrap();
    p.free(&[5]).unwrap();
    let batches: [&[BlockId]; 8] = [
        &[1, 2],
        &[3, 3, 3],
        &[3, 3, 3, 3],
        &[5],
        &[0],
        &[1, -3],
        &[4, 1, 4],
        &[],
    ];
    for ids in batches {
        let checked = p.check_free(ids);
        let mut q = p.clone();
        assert_eq!(checked, q.free(ids), "batch {ids:?}");
    }
}

#[test]
fn cache_batch_with_repeats() {
    let mut p = BlockPool::new(6).unwrap();
    let a = p.allocate(3).unwrap();
    // Same block twice, same hash: one Stored event.
    p.cache_blocks(&[a[0], a[1], a[0]], &[7, 8, 7]).unwrap();
    assert_eq!(p.take_events().len(), 2);
    // Same uncached block twice with two hashes: refused, nothing changes, and the
    // validation leaves no trace behind.
    let before = p.cached_blocks();
    assert_eq!(
        p.cache_blocks(&[a[2], a[2]], &[1, 2]),
        Err(Error::AlreadyCached { id: a[2] })
    );
    assert_eq!(p.cache_blocks(&[a[2], 0], &[1, 2]), Err(Error::NullBlock));
    assert_eq!(p.cached_blocks(), before);
    assert!(p.take_events().is_empty());
    p.check_invariants().unwrap();
    p.cache_blocks(&[a[2]], &[2]).unwrap();
    assert_eq!(p.block_hash(a[2]).unwrap(), Some(2));
    p.check_invariants().unwrap();
}

#[test]
fn hash_chain_removal_from_the_middle() {
    let mut p = BlockPool::new(10).unwrap();
    let a = p.allocate(6).unwrap();
    p.cache_blocks(&a, &[5; 6]).unwrap();
    p.evict(&[a[2], a[4]]).unwrap();
    p.check_invariants().unwrap();
    let chain: Vec<_> = p.hash_entries().into_iter().map(|e| e.1).collect();
    assert_eq!(chain, vec![a[0], a[1], a[3], a[5]]);
    // Re-cached blocks join at the end of the chain.
    p.cache_blocks(&[a[2]], &[5]).unwrap();
    p.evict(&[a[0], a[1]]).unwrap();
    assert_eq!(p.lookup_one(5), Some(a[3]));
    p.evict(&[a[3], a[5]]).unwrap();
    assert_eq!(p.lookup_one(5), Some(a[2]));
    p.check_invariants().unwrap();
}

#[test]
fn touch_pulls_from_the_middle_of_the_queue() {
    let mut p = BlockPool::new(6).unwrap();
    p.touch(&[3]).unwrap();
    assert_eq!(p.free_queue(), vec![1, 2, 4, 5]);
    assert_eq!(p.num_in_use(), 1);
    assert!(matches!(
        p.touch(&[2, 6]),
        Err(Error::InvalidBlockId { id: 6, .. })
    ));
    assert_eq!(p.touch(&[2, 0]), Err(Error::NullBlock));
    assert_eq!(p.free_queue(), vec![1, 2, 4, 5]);
    p.touch(&[5, 1, 3]).unwrap();
    assert_eq!(p.free_queue(), vec![2, 4]);
    assert_eq!(p.ref_count(3).unwrap(), 2);
    p.check_invariants().unwrap();
}

#[test]
fn allocation_evicts_cached_blocks_from_the_head() {
    let mut p = BlockPool::new(5).unwrap();
    let a = p.allocate(4).unwrap();
    p.cache_blocks(&a, &[10, 11, 12, 13]).unwrap();
    p.free(&[a[2], a[0], a[3], a[1]]).unwrap();
    assert_eq!(p.num_cached(), 4);
    p.take_events();
    assert_eq!(p.allocate(2).unwrap(), vec![a[2], a[0]]);
    assert_eq!(
        p.take_events(),
        vec![
            PoolEvent::Removed {
                block: a[2],
                hash: 12
            },
            PoolEvent::Removed {
                block: a[0],
                hash: 10
            },
        ]
    );
    assert_eq!(p.lookup(&[10, 11, 12, 13]), vec![-1, a[1], -1, a[3]]);
    assert_eq!(p.num_cached(), 2);
    p.check_invariants().unwrap();
}

#[test]
fn events_can_be_turned_off() {
    let mut p = BlockPool::new(3).unwrap();
    let a = p.allocate(1).unwrap();
    p.cache_blocks(&a, &[1]).unwrap();
    p.set_record_events(false);
    assert!(p.pending_events().is_empty());
    p.evict(&a).unwrap();
    assert!(p.take_events().is_empty());
}

/// Deterministic random walk over every operation, checking the invariants after
/// each step and that failures change nothing.
#[test]
fn random_walk_keeps_invariants() {
    let mut rnd = crate::test_rng::xorshift(0x2545_F491_4F6C_DD1D);
    let mut p = BlockPool::new(17).unwrap();
    for step in 0..20_000 {
        let before = p.clone();
        let ids: Vec<BlockId> = (0..rnd(5)).map(|_| rnd(19) as BlockId - 1).collect();
        let hs: Vec<BlockHash> = ids.iter().map(|_| rnd(6) as BlockHash).collect();
        let res = match rnd(8) {
            0 => p.allocate(rnd(6) as usize).map(|_| ()),
            1 | 2 => p.free(&ids),
            3 => p.touch(&ids),
            4 => p.cache_blocks(&ids, &hs),
            5 => p.evict(&ids),
            6 => p.reset_prefix_cache(),
            _ => {
                p.take_events();
                Ok(())
            }
        };
        if let Err(e) = p.check_invariants() {
            panic!("step {step}: {e}");
        }
        if res.is_err() {
            assert_eq!(p.ref_counts(), before.ref_counts(), "step {step}");
            assert_eq!(p.free_queue(), before.free_queue(), "step {step}");
            assert_eq!(p.hash_entries(), before.hash_entries(), "step {step}");
            assert_eq!(p.pending_events(), before.pending_events(), "step {step}");
        }
    }
}
