//! `check_invariants`: the block tables' references against every pool's reference
//! counts, plus the pools' and the arena's own invariants (tests and debug checks).

use super::Manager;
use crate::block_pool::NULL_BLOCK;

impl Manager {
    /// Check that every pool's reference counts equal the references the live block
    /// tables hold, that tables only hold ids of their own pool, and the pools' own
    /// invariants. Returns the first violation.
    pub fn check_invariants(&self) -> std::result::Result<(), String> {
        self.check_arena()?;
        let mut refs: Vec<Vec<u32>> = self
            .pools
            .iter()
            .map(|p| vec![0u32; p.num_blocks()])
            .collect();
        for (p, pool) in self.pools.iter().enumerate() {
            pool.check_invariants()
                .map_err(|m| format!("pool {p}: {m}"))?;
        }
        for g in 0..self.groups.len() {
            let refs = &mut refs[self.pool_of[g]];
            for r in self.reqs.iter() {
                for (k, &b) in r.tables[g].iter().enumerate() {
                    if b < 0 || b as usize >= refs.len() {
                        return Err(format!(
                            "request {} group {g}: block {b} is not an id of this pool",
                            r.id
                        ));
                    }
                    if b != NULL_BLOCK {
                        if k < r.first_live[g] {
                            return Err(format!(
                                "request {} group {g}: block below first_live",
                                r.id
                            ));
                        }
                        refs[b as usize] += 1;
                    }
                }
            }
        }
        for (p, pool) in self.pools.iter().enumerate() {
            if refs[p] != pool.ref_counts() {
                return Err(format!(
                    "pool {p}: reference counts differ from the block tables"
                ));
            }
        }
        Ok(())
    }
}
