//! The manager's KV-event log: pool `Removed` / `AllCleared` events turned into
//! per-group `KvEvent`s (a shared pool's salt undone), drained by `take_events`, and
//! `reset_prefix_cache`, which clears every pool at once.

use super::{BlockSet, Manager};
use crate::block_pool::PoolEvent;
use crate::kv_events::KvEvent;

impl Manager {
    /// Move the pools' `Removed` / `AllCleared` events into the manager's log.
    pub(crate) fn drain_pool_events(&mut self) {
        for p in 0..self.pools.len() {
            for ev in self.pools[p].take_events() {
                match ev {
                    PoolEvent::Removed { block, hash } => {
                        // A shared pool's block names its group; the key had its salt.
                        let g = match self.owner[p].get(block as usize) {
                            Some(&o) => o as usize,
                            None => self.pool_groups[p][0],
                        };
                        let hash = hash ^ self.salt[g];
                        match self.events.last_mut() {
                            Some(KvEvent::Removed { group, hashes }) if *group == g => {
                                hashes.push(hash)
                            }
                            _ => self.events.push(KvEvent::Removed {
                                group: g,
                                hashes: vec![hash],
                            }),
                        }
                    }
                    PoolEvent::AllCleared => {
                        for &g in &self.pool_groups[p] {
                            self.events.push(KvEvent::AllCleared { group: g });
                        }
                    }
                    PoolEvent::Stored { .. } => {}
                }
            }
        }
    }

    /// Forget every cached hash in every pool. Refused (returns false, nothing changes)
    /// while any block is in use.
    pub fn reset_prefix_cache(&mut self) -> bool {
        if self.pools.iter().any(|p| p.num_in_use() > 0) {
            return false;
        }
        for p in &mut self.pools {
            // Checked above: no pool has blocks in use.
            let _ = p.reset_prefix_cache();
        }
        self.states_this_step.iter_mut().for_each(BlockSet::clear);
        if self.record_events {
            self.drain_pool_events();
        }
        true
    }

    pub fn take_events(&mut self) -> Vec<KvEvent> {
        std::mem::take(&mut self.events)
    }
}
