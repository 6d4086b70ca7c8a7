//! One block pool per KV-cache group. Block ids are local to their pool: every call
//! that takes ids names its group, and nothing here ever applies an id to another
//! pool (vLLM once broadcast evicted ids to every group's pool; here that cannot
//! be expressed).

use crate::block_pool::{check_bookkeeping_fits, BlockPool, PoolEvent};
use crate::error::{Error, Result};

/// The pools of a model's KV-cache groups, indexed by group.
#[derive(Debug, Clone)]
pub struct PoolRegistry {
    pools: Vec<BlockPool>,
}

impl PoolRegistry {
    /// One pool per entry of `num_blocks_per_group` (all the pools' bookkeeping is
    /// reserved up front: see `check_bookkeeping_fits`).
    pub fn new(num_blocks_per_group: &[usize]) -> Result<Self> {
        check_bookkeeping_fits(num_blocks_per_group.iter().copied())?;
        let pools = num_blocks_per_group
            .iter()
            .map(|&n| BlockPool::new(n))
            .collect::<Result<Vec<_>>>()?;
        Ok(PoolRegistry { pools })
    }

    pub fn num_groups(&self) -> usize {
        self.pools.len()
    }

    pub fn pool(&self, group: usize) -> Result<&BlockPool> {
        let n = self.pools.len();
        self.pools.get(group).ok_or(Error::UnknownGroup {
            group: group as i64,
            num_groups: n,
        })
    }

    pub fn pool_mut(&mut self, group: usize) -> Result<&mut BlockPool> {
        let n = self.pools.len();
        self.pools.get_mut(group).ok_or(Error::UnknownGroup {
            group: group as i64,
            num_groups: n,
        })
    }

    pub fn pools(&self) -> &[BlockPool] {
        &self.pools
    }

    /// Drain every pool's events, tagged with their group, in group order.
    pub fn take_events(&mut self) -> Vec<(usize, PoolEvent)> {
        let mut out = Vec::new();
        for (g, p) in self.pools.iter_mut().enumerate() {
            out.extend(p.take_events().into_iter().map(|e| (g, e)));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registries_beyond_memory_are_an_error_not_an_abort() {
        // ~170 TB of bookkeeping: the one up-front reservation fails everywhere.
        match PoolRegistry::new(&[i32::MAX as usize; 2000]) {
            Err(Error::InvalidArgument(msg)) => assert!(msg.contains("does not fit"), "{msg}"),
            Err(e) => panic!("wrong error: {e}"),
            Ok(_) => panic!("a 170 TB registry was built"),
        }
    }

    #[test]
    fn ids_never_cross_pools() {
        let mut r = PoolRegistry::new(&[4, 8]).unwrap();
        let a = r.pool_mut(0).unwrap().allocate(3).unwrap();
        let b = r.pool_mut(1).unwrap().allocate(3).unwrap();
        assert_eq!(a, b); // same local ids, different pools
        r.pool_mut(0).unwrap().cache_blocks(&a, &[1, 2, 3]).unwrap();
        r.pool_mut(1).unwrap().cache_blocks(&b, &[7, 8, 9]).unwrap();
        // Evicting in group 0 leaves group 1's blocks and hashes alone.
        r.pool_mut(0).unwrap().evict(&a).unwrap();
        assert_eq!(r.pool(1).unwrap().lookup(&[7, 8, 9]), b);
        assert_eq!(r.pool(0).unwrap().lookup(&[1, 2, 3]), vec![-1, -1, -1]);
        // An id valid only in the larger pool is rejected by the smaller one.
        let big = r.pool_mut(1).unwrap().allocate(4).unwrap();
        assert!(r.pool_mut(0).unwrap().free(&big[3..]).is_err());
        let ev = r.take_events();
        assert!(ev.iter().filter(|(g, _)| *g == 0).all(|(_, e)| match e {
            PoolEvent::Stored { hash, .. } | PoolEvent::Removed { hash, .. } => *hash <= 3,
            PoolEvent::AllCleared => true,
        }));
        assert!(matches!(
            r.pool(2),
            Err(Error::UnknownGroup {
                group: 2,
                num_groups: 2
            })
        ));
    }
}
