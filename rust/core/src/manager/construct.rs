//! `Manager::new`: checks a `ManagerConfig` (groups, shared pool, arena, checkpoint
//! policy) and builds the pools, the per-group bookkeeping and the arena's floors.

use super::{checkpoints, elastic, BlockSet, ElasticStats, Manager, ManagerConfig};
use crate::arena::Arena;
use crate::block_pool::{BlockHash, BlockPool};
use crate::error::{Error, Result};
use crate::group_policy::{CheckpointPolicy, GroupKind, MambaMode};
use crate::prefix_hash::root_hash;
use crate::request::Requests;
use crate::stats::Stats;

/// The salt of group `g` in a shared pool: a different 128-bit constant per group, so
/// (group, hash) pairs of different groups collide only with probability 2**-128.
fn group_salt(g: usize) -> BlockHash {
    const MIX: u128 = 0x9E37_79B9_7F4A_7C15_F39C_C060_5CED_C835;
    (g as u128).wrapping_mul(MIX)
}

impl Manager {
    pub fn new(cfg: ManagerConfig) -> Result<Self> {
        if cfg.groups.is_empty() {
            return Err(Error::InvalidArgument(
                "a KV-cache manager needs at least one group".into(),
            ));
        }
        let mut cfg = cfg;
        let arena = match cfg.arena.take() {
            None => None,
            Some(a) => {
                if a.page_bytes.len() != cfg.groups.len() {
                    return Err(Error::InvalidArgument(format!(
                        "arena has {} page sizes for {} groups",
                        a.page_bytes.len(),
                        cfg.groups.len()
                    )));
                }
                let arena = Arena::new(a)?;
                for (g, gc) in cfg.groups.iter_mut().enumerate() {
                    gc.num_blocks = arena.view_blocks(g);
                }
                Some(arena)
            }
        };
        for g in &cfg.groups {
            g.validate()?;
        }
        let shared = cfg.shared_pool;
        if shared && cfg.checkpoint_policy != CheckpointPolicy::Lru {
            return Err(Error::InvalidArgument(
                "a shared pool evicts state checkpoints least recently used first, as vLLM \
                 does: use checkpoint_policy 'lru'"
                    .into(),
            ));
        }
        if shared && arena.is_some() {
            return Err(Error::InvalidArgument(
                "a shared pool and an elastic arena are two different layouts: pick one".into(),
            ));
        }
        if shared {
            let n0 = cfg.groups[0].num_blocks;
            if let Some((i, g)) = cfg
                .groups
                .iter()
                .enumerate()
                .find(|(_, g)| g.num_blocks != n0)
            {
                return Err(Error::InvalidArgument(format!(
                    "a shared pool needs every group to have the same num_blocks: group 0 has \
                     {n0}, group {i} has {}",
                    g.num_blocks
                )));
            }
            if cfg.groups.len() > u32::MAX as usize {
                return Err(Error::InvalidArgument(format!(
                    "{} groups are too many for a shared pool",
                    cfg.groups.len()
                )));
            }
            crate::block_pool::check_bookkeeping_fits([cfg.groups[0].num_blocks])?;
        } else {
            crate::block_pool::check_bookkeeping_fits(cfg.groups.iter().map(|g| g.num_blocks))?;
        }
        let n_pools = if shared { 1 } else { cfg.groups.len() };
        let mut pools = Vec::with_capacity(n_pools);
        let mut sizes: Vec<usize> = Vec::new();
        let mut size_of = Vec::with_capacity(cfg.groups.len());
        for (gi, g) in cfg.groups.iter().enumerate() {
            if gi < n_pools {
                let mut p = match arena.as_ref() {
                    None => BlockPool::new(g.num_blocks)?,
                    Some(a) => BlockPool::new_elastic(a.region_map(gi), a.num_regions())?,
                };
                p.set_record_events(cfg.record_events);
                pools.push(p);
            }
            let s = match sizes.iter().position(|&s| s == g.block_size) {
                Some(i) => i,
                None => {
                    sizes.push(g.block_size);
                    sizes.len() - 1
                }
            };
            size_of.push(s);
        }
        let rank = |k: &GroupKind| match k {
            GroupKind::Full => 0,
            GroupKind::SlidingWindow { .. } | GroupKind::ChunkedLocal { .. } => 1,
            GroupKind::State => 2,
            GroupKind::CrossAttention { .. } => 3,
        };
        let mut hit_order: Vec<usize> = (0..cfg.groups.len()).collect();
        hit_order.sort_by_key(|&g| rank(&cfg.groups[g].kind));
        let trims = cfg.groups.iter().any(|g| match g.kind {
            GroupKind::SlidingWindow { .. } | GroupKind::ChunkedLocal { .. } => true,
            GroupKind::State => cfg.mamba_mode != MambaMode::All,
            _ => false,
        });
        let n = cfg.groups.len();
        let pool_of = (0..n).map(|g| if shared { 0 } else { g }).collect();
        let salt = (0..n)
            .map(|g| if shared { group_salt(g) } else { 0 })
            .collect();
        let owner = if shared {
            vec![0u32; cfg.groups[0].num_blocks]
        } else {
            Vec::new()
        };
        let bottom = (0..n)
            .map(|g| elastic::from_bottom(arena.as_ref().map_or(0, |a| a.floor(g))))
            .collect();
        let anchor_group = cfg
            .groups
            .iter()
            .position(|g| g.kind == GroupKind::Full)
            .filter(|_| {
                arena.is_some() && cfg.mamba_mode == MambaMode::Align && cfg.enable_caching
            });
        let anchors = cfg
            .groups
            .iter()
            .map(|g| match (anchor_group, g.kind) {
                (Some(_), GroupKind::State) => vec![None; g.num_blocks],
                _ => Vec::new(),
            })
            .collect();
        let reuse = cfg.checkpoint_policy == CheckpointPolicy::Reuse
            && cfg.mamba_mode == MambaMode::Align
            && cfg.enable_caching;
        let ckpt = cfg
            .groups
            .iter()
            .map(|g| {
                (reuse && g.kind == GroupKind::State)
                    .then(|| checkpoints::GroupCheckpoints::new(g.num_blocks))
            })
            .collect();
        let prompt_keep_min = arena
            .as_ref()
            .filter(|_| reuse)
            .map_or(0, |a| checkpoints::prompt_keep_min(&cfg.groups, a));
        let mut m = Manager {
            groups: cfg.groups,
            pools,
            pool_of,
            shared,
            salt,
            owner,
            mode: cfg.mamba_mode,
            caching: cfg.enable_caching,
            root: root_hash(cfg.hash_seed),
            vocab: cfg.vocab_size,
            sizes,
            size_of,
            hit_order,
            trims,
            reqs: Requests::default(),
            dirty: Vec::new(),
            stats: Stats::new(n),
            events: Vec::new(),
            record_events: cfg.record_events,
            buf: Vec::with_capacity(256),
            memo: vec![Vec::new(); n],
            release_buf: Vec::new(),
            states_this_step: vec![BlockSet::default(); n],
            arena,
            anchor_group,
            anchors,
            bottom,
            elastic: ElasticStats::default(),
            orphan_cursor: (0, 0),
            ckpt,
            prompt_keep_min,
        };
        m.grant_floors()?;
        Ok(m)
    }
}
