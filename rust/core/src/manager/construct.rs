//! `Manager::new`: checks a `ManagerConfig` (groups, shared pool, arena, checkpoint
//! policy), maps groups to pools (`page_classes`) and builds the pools, the per-group
//! bookkeeping and the arena's floors (per pool).

use super::{checkpoints, elastic, BlockSet, ElasticStats, Manager, ManagerConfig};
use crate::arena::{Arena, ArenaConfig, ArenaRoles};
use crate::block_pool::{BlockHash, BlockPool};
use crate::error::{Error, Result};
use crate::group_policy::{CheckpointPolicy, GroupConfig, GroupKind, MambaMode};
use crate::prefix_hash::root_hash;
use crate::request::Requests;
use crate::stats::Stats;

/// The salt of group `g` in a shared pool: a different 128-bit constant per group, so
/// (group, hash) pairs of different groups collide only with probability 2**-128.
fn group_salt(g: usize) -> BlockHash {
    const MIX: u128 = 0x9E37_79B9_7F4A_7C15_F39C_C060_5CED_C835;
    (g as u128).wrapping_mul(MIX)
}

/// Elastic arena: the pool of each group. Groups whose natural pages are equal (same
/// bytes per block and same block size) share one pool, as every group does in vLLM's
/// layout: one id space, one free queue, one prefix index keyed per group by its salt
/// (their pages are the same size already, so nothing is padded). State groups keep a
/// pool each: their checkpoint bookkeeping is per group and per block id. Pools are
/// numbered in the order of their first group.
pub(crate) fn page_classes(groups: &[GroupConfig], page_bytes: &[u64]) -> Vec<usize> {
    let mut pool_of: Vec<usize> = Vec::with_capacity(groups.len());
    let mut n_pools = 0;
    for (g, gc) in groups.iter().enumerate() {
        let same = (0..g).find(|&h| {
            gc.kind != GroupKind::State
                && groups[h].kind != GroupKind::State
                && page_bytes[h] == page_bytes[g]
                && groups[h].block_size == gc.block_size
        });
        match same {
            Some(h) => pool_of.push(pool_of[h]),
            None => {
                pool_of.push(n_pools);
                n_pools += 1;
            }
        }
    }
    pool_of
}

/// An explicit `pool_of` for static pools or an elastic arena, checked: one entry per
/// group, pools numbered in the order of their first group, groups sharing a pool of one
/// `num_blocks` (in an arena: of one page and block size, as `page_classes` pools them)
/// and none of them a state group. The planner keeps a window group whose floor it had
/// to cap out of its page class's pool (`python/hybridkv/planning/elastic.py`).
fn explicit_pools(cfg: &ManagerConfig) -> Result<Vec<usize>> {
    let bad = |m: String| Err(Error::InvalidArgument(format!("pool_of: {m}")));
    if cfg.shared_pool {
        return bad("not with a shared pool (it is all one pool)".into());
    }
    let p = &cfg.pool_of;
    if p.len() != cfg.groups.len() {
        return bad(format!(
            "{} entries for {} groups",
            p.len(),
            cfg.groups.len()
        ));
    }
    let mut next = 0;
    for (g, &q) in p.iter().enumerate() {
        if q > next {
            return bad(format!(
                "group {g} names pool {q}; pools are numbered in the order of their first group"
            ));
        }
        if q == next {
            next += 1;
            continue;
        }
        let h = p.iter().position(|&x| x == q).unwrap_or(g);
        let (a, b) = (&cfg.groups[h], &cfg.groups[g]);
        if let Some(arena) = &cfg.arena {
            let pages = &arena.page_bytes;
            if pages.get(h) != pages.get(g) || a.block_size != b.block_size {
                return bad(format!(
                    "groups {h} and {g} share pool {q} but their pages differ ({:?} and {:?} \
                     bytes, blocks of {} and {} tokens)",
                    pages.get(h),
                    pages.get(g),
                    a.block_size,
                    b.block_size
                ));
            }
        } else if a.num_blocks != b.num_blocks {
            return bad(format!(
                "groups {h} and {g} share pool {q} but have {} and {} blocks",
                a.num_blocks, b.num_blocks
            ));
        }
        if a.kind == GroupKind::State || b.kind == GroupKind::State {
            return bad(format!(
                "group {h} or {g} is a state group: it cannot share pool {q}"
            ));
        }
    }
    Ok(p.clone())
}

/// The arena of pools: one page size per pool, its floor the sum of its groups' floors.
fn pool_arena(a: ArenaConfig, pool_of: &[usize]) -> ArenaConfig {
    let n_pools = pool_of.iter().max().map_or(0, |&p| p + 1);
    let mut page_bytes = vec![0u64; n_pools];
    let mut floor_blocks = vec![0usize; n_pools];
    for (g, &p) in pool_of.iter().enumerate() {
        page_bytes[p] = a.page_bytes[g];
        floor_blocks[p] = floor_blocks[p].saturating_add(a.floor_blocks[g]);
    }
    ArenaConfig {
        page_bytes,
        floor_blocks,
        ..a
    }
}

/// Per pool: whether a kernel may read its null block (any group but state), and a
/// floor span for a bounded pool whose null block is never read (a state pool with
/// no growing group; window pools keep grid floors: `arena.rs`, "Floors").
fn pool_roles(groups: &[GroupConfig], pool_of: &[usize], floors: &[usize]) -> ArenaRoles {
    let n_pools = pool_of.iter().max().map_or(0, |&p| p + 1);
    let mut bounded = vec![true; n_pools];
    let mut null_read = vec![false; n_pools];
    for (g, &p) in pool_of.iter().enumerate() {
        bounded[p] &= !elastic::from_bottom(floors[g]);
        null_read[p] |= groups[g].kind != GroupKind::State;
    }
    let span = bounded
        .iter()
        .zip(&null_read)
        .map(|(&b, &r)| b && !r)
        .collect();
    ArenaRoles { span, null_read }
}

impl Manager {
    pub fn new(cfg: ManagerConfig) -> Result<Self> {
        if cfg.groups.is_empty() {
            return Err(Error::InvalidArgument(
                "a KV-cache manager needs at least one group".into(),
            ));
        }
        let mut cfg = cfg;
        let n = cfg.groups.len();
        // Which pool each group draws from: all one with a shared pool (vLLM's layout),
        // one per page class in an elastic arena, else one per group.
        let mut pool_of: Vec<usize> = (0..n)
            .map(|g| if cfg.shared_pool { 0 } else { g })
            .collect();
        let explicit = !cfg.pool_of.is_empty();
        if explicit {
            pool_of = explicit_pools(&cfg)?;
        }
        let mut group_floors = vec![0usize; n];
        let arena = match cfg.arena.take() {
            None => None,
            Some(a) => {
                if a.page_bytes.len() != n || a.floor_blocks.len() != n {
                    return Err(Error::InvalidArgument(format!(
                        "arena has {} page sizes and {} floors for {n} groups",
                        a.page_bytes.len(),
                        a.floor_blocks.len()
                    )));
                }
                // A kernel may read the null block of every kind but state: it must lie
                // in the null area (see `arena.rs`).
                let null = a.null_bytes;
                if let Some((g, p)) = cfg
                    .groups
                    .iter()
                    .zip(&a.page_bytes)
                    .enumerate()
                    .find(|(_, (gc, &p))| gc.kind != GroupKind::State && p > null)
                    .map(|(g, (_, &p))| (g, p))
                {
                    return Err(Error::InvalidArgument(format!(
                        "arena null_bytes {null} cannot hold the null block of group {g} \
                         ({p}-byte pages; only a state group's may reach past the null area)"
                    )));
                }
                if !explicit {
                    pool_of = page_classes(&cfg.groups, &a.page_bytes);
                }
                group_floors.clone_from(&a.floor_blocks);
                let arena = Arena::with_roles(
                    pool_arena(a, &pool_of),
                    pool_roles(&cfg.groups, &pool_of, &group_floors),
                )?;
                for (g, gc) in cfg.groups.iter_mut().enumerate() {
                    gc.num_blocks = arena.view_blocks(pool_of[g]);
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
        }
        let n_pools = pool_of.iter().max().map_or(0, |&p| p + 1);
        let mut pool_groups: Vec<Vec<usize>> = vec![Vec::new(); n_pools];
        for (g, &p) in pool_of.iter().enumerate() {
            pool_groups[p].push(g);
        }
        crate::block_pool::check_bookkeeping_fits(
            pool_groups.iter().map(|gs| cfg.groups[gs[0]].num_blocks),
        )?;
        let mut pools = Vec::with_capacity(n_pools);
        let mut sizes: Vec<usize> = Vec::new();
        let mut size_of = Vec::with_capacity(cfg.groups.len());
        for (pi, gs) in pool_groups.iter().enumerate() {
            let mut p = match arena.as_ref() {
                None => BlockPool::new(cfg.groups[gs[0]].num_blocks)?,
                Some(a) => BlockPool::new_elastic(a.region_map(pi), a.num_regions())?,
            };
            p.set_record_events(cfg.record_events);
            pools.push(p);
        }
        for g in cfg.groups.iter() {
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
        // Groups sharing a pool key its prefix index with their salts and record which
        // group each block's hash belongs to.
        let multi = |g: usize| pool_groups[pool_of[g]].len() > 1;
        let salt = (0..n)
            .map(|g| if multi(g) { group_salt(g) } else { 0 })
            .collect();
        let owner = pool_groups
            .iter()
            .enumerate()
            .map(|(p, gs)| {
                if gs.len() > 1 {
                    vec![gs[0] as u32; pools[p].num_blocks()]
                } else {
                    Vec::new()
                }
            })
            .collect();
        // A pool takes regions from the bottom when one of its groups grows (floor 0).
        let bottom = pool_groups
            .iter()
            .map(|gs| gs.iter().any(|&g| elastic::from_bottom(group_floors[g])))
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
        let prompt_keep_min = arena.as_ref().filter(|_| reuse).map_or(0, |a| {
            checkpoints::prompt_keep_min(&cfg.groups, a, &pool_of, &group_floors)
        });
        let eff_floor: Vec<usize> = arena.as_ref().map_or_else(Vec::new, |a| {
            (0..a.num_groups()).map(|p| a.floor(p)).collect()
        });
        let mut m = Manager {
            group_floor: group_floors.clone(),
            eff_floor,
            groups: cfg.groups,
            pools,
            pool_of,
            pool_groups,
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
            clock: 0,
            ckpt,
            prompt_keep_min,
        };
        m.grant_floors()?;
        Ok(m)
    }
}
