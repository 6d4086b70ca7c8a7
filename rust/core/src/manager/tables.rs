//! Outputs for the model runner and offload: block tables, slot mappings, counts and
//! block hashes.

use super::Manager;
use crate::block_pool::{BlockHash, BlockId, NULL_BLOCK};
use crate::error::{Error, Result};
use crate::request::Request;

impl Manager {
    // --- outputs -------------------------------------------------------------------

    /// Block tables of `group` for `ids`, row-major `(ids.len(), width)`, zero padded.
    /// `width = None` uses the longest table; a table longer than a given width fails.
    pub fn block_table(
        &self,
        group: usize,
        ids: &[i64],
        width: Option<usize>,
    ) -> Result<(Vec<i32>, usize)> {
        self.check_group(group)?;
        let mut rows: Vec<&[BlockId]> = Vec::with_capacity(ids.len());
        for &id in ids {
            rows.push(&self.request(id)?.tables[group]);
        }
        Self::pack_rows(&rows, width)
    }

    /// Widest explicit `max_blocks` accepted (2**24 blocks: 16M tokens at block size 1),
    /// so a wild value is an error, not an attempt to allocate terabytes.
    const MAX_TABLE_WIDTH: usize = 1 << 24;

    /// Rows of a block table packed row-major with zero padding.
    fn pack_rows(rows: &[&[BlockId]], width: Option<usize>) -> Result<(Vec<i32>, usize)> {
        let longest = rows.iter().map(|t| t.len()).max().unwrap_or(0);
        let w = match width {
            None => longest,
            Some(w) if w > longest.max(Self::MAX_TABLE_WIDTH) => {
                return Err(Error::InvalidArgument(format!(
                    "max_blocks {w} is above the limit of {} blocks per row",
                    Self::MAX_TABLE_WIDTH
                )))
            }
            Some(w) if w >= longest => w,
            Some(w) => {
                return Err(Error::InvalidArgument(format!(
                    "max_blocks {w} is smaller than the longest block table ({longest})"
                )))
            }
        };
        // A caller's width times its row count can be far more than memory holds:
        // refuse it as an error rather than let the allocation abort the process.
        let mut out = Vec::new();
        rows.len()
            .checked_mul(w)
            .and_then(|n| out.try_reserve_exact(n).ok())
            .ok_or_else(|| {
                Error::InvalidArgument(format!(
                    "a block table of {} rows x {w} blocks does not fit in memory",
                    rows.len()
                ))
            })?;
        for t in rows {
            out.extend_from_slice(t);
            out.resize(out.len() + (w - t.len()), NULL_BLOCK);
        }
        Ok((out, w))
    }

    /// Block tables of every group for `ids` (one id resolution for all groups).
    /// Write `group`'s block tables for `ids` into the rows of `out` (row-major, `width`
    /// entries per row, at least `ids.len()` rows), zero padding each row: a caller's
    /// persistent buffer, so a step allocates nothing. Fails (writing nothing) if a
    /// table is longer than `width` or `out` is too small.
    pub fn block_table_into(
        &self,
        group: usize,
        ids: &[i64],
        out: &mut [i32],
        width: usize,
    ) -> Result<()> {
        self.check_group(group)?;
        if out.len() < ids.len() * width {
            return Err(Error::InvalidArgument(format!(
                "out holds {} entries, {} rows of {width} need {}",
                out.len(),
                ids.len(),
                ids.len() * width
            )));
        }
        let mut rows: Vec<&[BlockId]> = Vec::with_capacity(ids.len());
        for &id in ids {
            let t = &self.request(id)?.tables[group];
            if t.len() > width {
                return Err(Error::InvalidArgument(format!(
                    "request {id}'s block table ({} blocks) is wider than out ({width})",
                    t.len()
                )));
            }
            rows.push(t);
        }
        for (row, t) in out.chunks_exact_mut(width.max(1)).zip(&rows) {
            row[..t.len()].copy_from_slice(t);
            row[t.len()..].fill(NULL_BLOCK);
        }
        Ok(())
    }

    /// The entries of `group`'s tables appended since the previous call for each
    /// request: per request its first new column, and the new ids (flat, with offsets).
    /// A table rebuilt by a prefix lookup or emptied by preemption starts again at
    /// column 0. Entries later released to the null block are not re-sent (a model
    /// runner keeping a persistent table never reads outside a request's window).
    pub fn new_block_ids(
        &mut self,
        group: usize,
        ids: &[i64],
    ) -> Result<(Vec<i64>, Vec<i64>, Vec<i32>)> {
        self.check_group(group)?;
        let slots: Vec<u32> = ids
            .iter()
            .map(|&id| {
                self.reqs.slot_of(id).ok_or_else(|| Error::UnknownRequest {
                    req_id: id.to_string(),
                })
            })
            .collect::<Result<_>>()?;
        let mut starts = Vec::with_capacity(ids.len());
        let mut offsets = Vec::with_capacity(ids.len() + 1);
        let mut out = Vec::new();
        offsets.push(0i64);
        for &s in &slots {
            if let Some(r) = self.reqs.get_mut(s) {
                let t = &r.tables[group];
                let from = r.exported[group].min(t.len());
                starts.push(from as i64);
                out.extend_from_slice(&t[from..]);
                r.exported[group] = t.len();
            }
            offsets.push(out.len() as i64);
        }
        Ok((starts, offsets, out))
    }

    /// `new_block_ids` of every group at once (one id resolution, one set of outputs):
    /// `starts[g * n + i]` is request `i`'s first new column in group `g`, and its new
    /// ids are `blocks[offsets[g * (n + 1) + i]..offsets[g * (n + 1) + i + 1]]` (group
    /// after group in one flat array; the offsets index that whole array).
    pub fn new_block_ids_all(&mut self, ids: &[i64]) -> Result<(Vec<i64>, Vec<i64>, Vec<i32>)> {
        let slots: Vec<u32> = ids
            .iter()
            .map(|&id| {
                self.reqs.slot_of(id).ok_or_else(|| Error::UnknownRequest {
                    req_id: id.to_string(),
                })
            })
            .collect::<Result<_>>()?;
        let ng = self.groups.len();
        let n = ids.len();
        let mut starts = Vec::with_capacity(ng * n);
        let mut offsets = Vec::with_capacity(ng * (n + 1));
        let mut out = Vec::new();
        for g in 0..ng {
            offsets.push(out.len() as i64);
            for &s in &slots {
                if let Some(r) = self.reqs.get_mut(s) {
                    let t = &r.tables[g];
                    let from = r.exported[g].min(t.len());
                    starts.push(from as i64);
                    out.extend_from_slice(&t[from..]);
                    r.exported[g] = t.len();
                }
                offsets.push(out.len() as i64);
            }
        }
        Ok((starts, offsets, out))
    }

    pub fn block_tables(&self, ids: &[i64]) -> Result<Vec<(Vec<i32>, usize)>> {
        let mut reqs: Vec<&Request> = Vec::with_capacity(ids.len());
        for &id in ids {
            reqs.push(self.request(id)?);
        }
        (0..self.groups.len())
            .map(|g| {
                let rows: Vec<&[BlockId]> = reqs.iter().map(|r| r.tables[g].as_slice()).collect();
                Self::pack_rows(&rows, None)
            })
            .collect()
    }

    /// The slot (`block * block_size + offset`) of each `(ids[i], positions[i])` in
    /// `group`'s address space; -1 where the entry is the null block.
    pub fn slot_mapping(&self, group: usize, ids: &[i64], positions: &[i64]) -> Result<Vec<i64>> {
        self.check_group(group)?;
        if ids.len() != positions.len() {
            return Err(Error::LengthMismatch {
                what: "slot_mapping request ids vs positions",
                left: ids.len(),
                right: positions.len(),
            });
        }
        let bs = self.groups[group].block_size as i64;
        let mut out = Vec::with_capacity(ids.len());
        let mut last: Option<(i64, &[BlockId])> = None;
        for (&id, &p) in ids.iter().zip(positions) {
            let table = match last {
                Some((lid, t)) if lid == id => t,
                _ => {
                    let t: &[BlockId] = &self.request(id)?.tables[group];
                    last = Some((id, t));
                    t
                }
            };
            if p < 0 || (p / bs) as usize >= table.len() {
                return Err(Error::InvalidArgument(format!(
                    "position {p} of request {id} is outside its {} allocated blocks in group {group}",
                    table.len()
                )));
            }
            let b = table[(p / bs) as usize];
            out.push(if b == NULL_BLOCK {
                -1
            } else {
                b as i64 * bs + p % bs
            });
        }
        Ok(out)
    }

    pub fn num_computed_tokens(&self, ids: &[i64]) -> Result<Vec<i64>> {
        ids.iter()
            .map(|&id| self.request(id).map(|r| r.num_computed as i64))
            .collect()
    }

    pub fn num_tokens(&self, ids: &[i64]) -> Result<Vec<i64>> {
        ids.iter()
            .map(|&id| self.request(id).map(|r| r.tokens.len() as i64))
            .collect()
    }

    /// The request's full-block hashes at `group`'s block size (all known tokens).
    pub fn block_hashes(&mut self, group: usize, id: i64) -> Result<Vec<BlockHash>> {
        self.check_group(group)?;
        let s = self.size_of[group];
        let bs = self.sizes[s];
        let slot = self.reqs.slot_of(id).ok_or_else(|| Error::UnknownRequest {
            req_id: id.to_string(),
        })?;
        let root = self.root;
        let buf = &mut self.buf;
        let r = self
            .reqs
            .get_mut(slot)
            .ok_or_else(|| Error::UnknownRequest {
                req_id: id.to_string(),
            })?;
        let n = r.tokens.len();
        r.ensure_hashes(s, bs, n, root, buf);
        Ok(r.hashes[s].clone())
    }
}
