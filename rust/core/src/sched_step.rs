//! The per-step loops of the Python scheduler (`python/hybridkv/serving/scheduler.py`)
//! over its running requests, and the token lists those requests sample into.
//!
//! Pure data work over the scheduler's counters: which request runs, how long its
//! chunk is and whom to preempt stay in Python (the policy). What moves here is what
//! numpy did as a dozen passes over the ~256 running rows per step, each costing more
//! in dispatch than in arithmetic:
//! - [`running_plan`]: the running rows' computed and known token counts (read by
//!   slot), the rows with exactly one token left (decoding: they take that token,
//!   no chunk rule applies) and those with more (their chunks are Python's to cut);
//! - [`block_growth`]: the blocks each growing group gains when every row goes from
//!   `computed` to `computed + new` tokens (admission control's room);
//! - [`TokenLists`]: each request's sampled tokens by slot; [`TokenLists::sample`]
//!   takes a whole step's (which requests finish, the continuing ones' tokens
//!   range-checked, every token recorded and every count advanced) in one pass.
//!
//! Every function checks its whole input before it changes anything.

use crate::error::{Error, Result};

/// The running rows' counters for one step (see [`running_plan`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunningPlan {
    /// Computed (or cache-hit) tokens, per running row.
    pub computed: Vec<i64>,
    /// Known tokens (prompt and sampled), per running row.
    pub tokens: Vec<i64>,
    /// 1 where the row has exactly one token left (it takes that token), else 0.
    pub one: Vec<i64>,
    /// The rows with more than one token left, ascending.
    pub multi: Vec<i64>,
    /// For each row of `multi`: the one-token rows before it.
    pub ones_before: Vec<i64>,
    /// One-token rows in all.
    pub ones: i64,
}

fn slot_of(slot: i64, len: usize) -> Result<usize> {
    usize::try_from(slot)
        .ok()
        .filter(|&s| s < len)
        .ok_or_else(|| {
            Error::InvalidArgument(format!(
                "slot {slot} is out of range for a table of {len} slots"
            ))
        })
}

/// The counters of the running rows whose table slots are `slots` (in rank order),
/// from the per-slot arrays `computed` and `tokens`.
pub fn running_plan(computed: &[i64], tokens: &[i64], slots: &[i64]) -> Result<RunningPlan> {
    if computed.len() != tokens.len() {
        return Err(Error::LengthMismatch {
            what: "computed and token counts",
            left: computed.len(),
            right: tokens.len(),
        });
    }
    let idx = slots
        .iter()
        .map(|&s| slot_of(s, computed.len()))
        .collect::<Result<Vec<usize>>>()?;
    let n = idx.len();
    let mut plan = RunningPlan {
        computed: Vec::with_capacity(n),
        tokens: Vec::with_capacity(n),
        one: Vec::with_capacity(n),
        ..RunningPlan::default()
    };
    for (row, &s) in idx.iter().enumerate() {
        let (c, t) = (computed[s], tokens[s]);
        let left = t.saturating_sub(c);
        plan.computed.push(c);
        plan.tokens.push(t);
        plan.one.push(i64::from(left == 1));
        if left == 1 {
            plan.ones += 1;
        } else if left > 1 {
            plan.multi.push(row as i64);
            plan.ones_before.push(plan.ones);
        }
    }
    Ok(plan)
}

/// `ceil(a / b)` for `b > 0`, any sign of `a` (as Python's `-(-a // b)`).
fn cdiv(a: i64, b: i64) -> i64 {
    -((-(a as i128)).div_euclid(b as i128)) as i64
}

/// Per group `g`: the sum over rows of `min(ceil((c + n) / bs[g]) - ceil(c / bs[g]),
/// caps[g])`, the blocks group `g` adds when each row goes from `computed` to
/// `computed + new` tokens (a state group's cap is 1: one block per step at most).
pub fn block_growth(
    computed: &[i64],
    new: &[i64],
    block_sizes: &[i64],
    caps: &[i64],
) -> Result<Vec<i64>> {
    if computed.len() != new.len() {
        return Err(Error::LengthMismatch {
            what: "computed and new token counts",
            left: computed.len(),
            right: new.len(),
        });
    }
    if block_sizes.len() != caps.len() {
        return Err(Error::LengthMismatch {
            what: "block sizes and caps",
            left: block_sizes.len(),
            right: caps.len(),
        });
    }
    if let Some(&bs) = block_sizes.iter().find(|&&b| b < 1) {
        return Err(Error::InvalidArgument(format!(
            "block sizes must be positive, got {bs}"
        )));
    }
    Ok(block_sizes
        .iter()
        .zip(caps)
        .map(|(&bs, &cap)| {
            let sum: i128 = computed
                .iter()
                .zip(new)
                .map(|(&c, &n)| {
                    let grow = cdiv(c.saturating_add(n), bs) - cdiv(c, bs);
                    i128::from(grow.min(cap))
                })
                .sum();
            sum.clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64
        })
        .collect())
}

/// The tokens each live request sampled, by table slot: one append per step for the
/// whole batch ([`TokenLists::append`]), one list handed back when a request finishes.
#[derive(Debug, Clone, Default)]
pub struct TokenLists {
    lists: Vec<Vec<i64>>,
}

impl TokenLists {
    pub fn new() -> Self {
        TokenLists::default()
    }

    /// Slots `0..len` exist (empty lists for new ones).
    pub fn reserve_slots(&mut self, len: usize) {
        if self.lists.len() < len {
            self.lists.resize_with(len, Vec::new);
        }
    }

    /// Number of slots.
    pub fn num_slots(&self) -> usize {
        self.lists.len()
    }

    /// Empty `slot`'s list (a new request takes the slot).
    pub fn clear(&mut self, slot: i64) -> Result<()> {
        let s = slot_of(slot, self.lists.len())?;
        self.lists[s] = Vec::new();
        Ok(())
    }

    /// Append `tokens[i]` to the list of `slots[i]`, for every `i`; nothing changes
    /// when a slot is out of range or the lengths differ.
    pub fn append(&mut self, slots: &[i64], tokens: &[i64]) -> Result<()> {
        if slots.len() != tokens.len() {
            return Err(Error::LengthMismatch {
                what: "slots and tokens",
                left: slots.len(),
                right: tokens.len(),
            });
        }
        let len = self.lists.len();
        for &s in slots {
            slot_of(s, len)?;
        }
        for (&s, &t) in slots.iter().zip(tokens) {
            self.lists[s as usize].push(t);
        }
        Ok(())
    }

    /// `slot`'s tokens.
    pub fn get(&self, slot: i64) -> Result<&[i64]> {
        Ok(&self.lists[slot_of(slot, self.lists.len())?])
    }

    /// `slot`'s tokens, leaving its list empty.
    pub fn take(&mut self, slot: i64) -> Result<Vec<i64>> {
        let s = slot_of(slot, self.lists.len())?;
        Ok(std::mem::take(&mut self.lists[s]))
    }

    /// A step's sampled tokens: row `i`'s request (table slot `slots[i]`) sampled
    /// `tokens[i]`. It finishes by length when its known-token count `counts[slot]`
    /// has reached `length_at[slot]`, or by its stop token where `stop[i]` (empty:
    /// no row has one). Every row that does not finish must have sampled a token in
    /// `0..token_end` (it goes on to the manager): the first that did not is returned
    /// as [`Sampled::BadToken`] and nothing changes. Otherwise every row's token joins
    /// its list and its count grows by one.
    pub fn sample(
        &mut self,
        slots: &[i64],
        tokens: &[i64],
        counts: &mut [i64],
        length_at: &[i64],
        stop: &[bool],
        token_end: i64,
    ) -> Result<Sampled> {
        if slots.len() != tokens.len() || (!stop.is_empty() && stop.len() != slots.len()) {
            return Err(Error::LengthMismatch {
                what: "slots, tokens and stop flags",
                left: slots.len(),
                right: if stop.is_empty() {
                    tokens.len()
                } else {
                    stop.len()
                },
            });
        }
        if counts.len() != length_at.len() {
            return Err(Error::LengthMismatch {
                what: "token counts and length limits",
                left: counts.len(),
                right: length_at.len(),
            });
        }
        let width = self.lists.len().min(counts.len());
        let idx = slots
            .iter()
            .map(|&s| slot_of(s, width))
            .collect::<Result<Vec<usize>>>()?;
        let mut finished = Vec::new();
        let mut by_length = Vec::new();
        for (row, &s) in idx.iter().enumerate() {
            let length = counts[s] >= length_at[s];
            if length || stop.get(row).copied().unwrap_or(false) {
                finished.push(row);
                by_length.push(length);
            } else if !(0..token_end).contains(&tokens[row]) {
                return Ok(Sampled::BadToken { row });
            }
        }
        for (&s, &t) in idx.iter().zip(tokens) {
            self.lists[s].push(t);
            counts[s] += 1;
        }
        Ok(Sampled::Done {
            finished,
            by_length,
        })
    }
}

/// What [`TokenLists::sample`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sampled {
    /// Recorded; these rows finished (ascending), each by length or else by its stop
    /// token.
    Done {
        finished: Vec<usize>,
        by_length: Vec<bool>,
    },
    /// Nothing recorded: this row continues with a token outside `0..token_end`.
    BadToken { row: usize },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn running_plan_splits_one_token_rows_from_longer_ones() {
        // slots:            0  1  2   3
        let computed = [10, 5, 7, 0];
        let tokens = [11, 9, 8, 300];
        let plan = running_plan(&computed, &tokens, &[2, 1, 0, 3]).unwrap();
        assert_eq!(plan.computed, vec![7, 5, 10, 0]);
        assert_eq!(plan.tokens, vec![8, 9, 11, 300]);
        assert_eq!(plan.one, vec![1, 0, 1, 0]);
        assert_eq!(plan.multi, vec![1, 3]);
        assert_eq!(plan.ones_before, vec![1, 2]);
        assert_eq!(plan.ones, 2);
        // A row with nothing left is neither.
        let plan = running_plan(&[4], &[4], &[0]).unwrap();
        assert_eq!((plan.one, plan.multi, plan.ones), (vec![0], vec![], 0));
    }

    #[test]
    fn running_plan_refuses_bad_slots_and_lengths() {
        assert!(matches!(
            running_plan(&[1, 2], &[2, 3], &[2]),
            Err(Error::InvalidArgument(_))
        ));
        assert!(matches!(
            running_plan(&[1, 2], &[2, 3], &[-1]),
            Err(Error::InvalidArgument(_))
        ));
        assert!(matches!(
            running_plan(&[1], &[2, 3], &[0]),
            Err(Error::LengthMismatch { .. })
        ));
    }

    #[test]
    fn block_growth_matches_the_ceiling_formula() {
        let c = [0, 15, 16, 17, 100];
        let n = [1, 1, 1, 40, 0];
        // Block 16: 0->1 takes 1, 15->16 takes 0, 16->17 takes 1, 17->57 takes 2, 0.
        assert_eq!(block_growth(&c, &n, &[16], &[1 << 62]).unwrap(), vec![4]);
        // A cap of 1 per row (a state group).
        assert_eq!(block_growth(&c, &n, &[16], &[1]).unwrap(), vec![3]);
        // Several groups at once, the same as each alone.
        assert_eq!(
            block_growth(&c, &n, &[16, 64], &[1 << 62, 1 << 62]).unwrap(),
            vec![4, 1]
        );
        // Plain formula over a grid of values, negative counts included.
        for bs in 1..20i64 {
            for c in -40..40i64 {
                for n in 0..40i64 {
                    let want = (-((-(c + n)).div_euclid(bs))) + (-c).div_euclid(bs);
                    assert_eq!(
                        block_growth(&[c], &[n], &[bs], &[i64::MAX]).unwrap(),
                        vec![want]
                    );
                }
            }
        }
        assert!(block_growth(&c, &n, &[0], &[1]).is_err());
        assert!(block_growth(&c, &n[..2], &[16], &[1]).is_err());
        assert!(block_growth(&c, &n, &[16, 8], &[1]).is_err());
    }

    #[test]
    fn sample_records_tokens_and_reports_finished_rows() {
        let mut t = TokenLists::new();
        t.reserve_slots(4);
        // Slots 0..4: counts 10, 20, 30, 40; slot 1 reaches its length now.
        let mut counts = [10, 20, 30, 40];
        let length_at = [15, 20, 99, 99];
        let got = t
            .sample(&[3, 1, 0], &[5, 6, 7], &mut counts, &length_at, &[], 100)
            .unwrap();
        assert_eq!(
            got,
            Sampled::Done {
                finished: vec![1],
                by_length: vec![true]
            }
        );
        assert_eq!(counts, [11, 21, 30, 41]);
        assert_eq!(t.get(3).unwrap(), &[5]);
        assert_eq!(t.get(1).unwrap(), &[6]);
        // A stop token finishes a row (not by length); a finishing row may carry any
        // token, a continuing one must be below the end.
        let got = t
            .sample(
                &[0, 2],
                &[-4, 8],
                &mut counts,
                &length_at,
                &[true, false],
                100,
            )
            .unwrap();
        assert_eq!(
            got,
            Sampled::Done {
                finished: vec![0],
                by_length: vec![false]
            }
        );
        assert_eq!(t.get(0).unwrap(), &[7, -4]);
        // A continuing row with a bad token: its row, and nothing changes.
        let before = counts;
        for bad in [100, -1] {
            let got = t
                .sample(&[2, 3], &[1, bad], &mut counts, &length_at, &[], 100)
                .unwrap();
            assert_eq!(got, Sampled::BadToken { row: 1 });
        }
        assert_eq!(counts, before);
        assert_eq!(t.get(2).unwrap(), &[8]);
        // Bad slots and lengths are refused, nothing changed.
        assert!(t
            .sample(&[4], &[1], &mut counts, &length_at, &[], 100)
            .is_err());
        assert!(t
            .sample(&[0], &[1, 2], &mut counts, &length_at, &[], 100)
            .is_err());
        assert!(t
            .sample(&[0], &[1], &mut counts, &length_at, &[true, true], 100)
            .is_err());
        assert!(t
            .sample(&[0], &[1], &mut counts, &length_at[..3], &[], 100)
            .is_err());
        assert_eq!(counts, before);
    }

    #[test]
    fn token_lists_append_by_slot_and_hand_back() {
        let mut t = TokenLists::new();
        t.reserve_slots(3);
        t.append(&[2, 0], &[7, 8]).unwrap();
        t.append(&[2], &[9]).unwrap();
        assert_eq!(t.get(2).unwrap(), &[7, 9]);
        assert_eq!(t.get(0).unwrap(), &[8]);
        assert!(t.get(1).unwrap().is_empty());
        // A bad slot anywhere in the batch changes nothing.
        assert!(t.append(&[1, 3], &[5, 5]).is_err());
        assert!(t.append(&[1, -1], &[5, 5]).is_err());
        assert!(t.append(&[1], &[5, 5]).is_err());
        assert!(t.get(1).unwrap().is_empty());
        assert_eq!(t.take(2).unwrap(), vec![7, 9]);
        assert!(t.get(2).unwrap().is_empty());
        t.append(&[0], &[1]).unwrap();
        t.clear(0).unwrap();
        assert!(t.get(0).unwrap().is_empty());
        t.reserve_slots(5);
        assert_eq!(t.num_slots(), 5);
        assert!(t.clear(5).is_err());
    }
}
