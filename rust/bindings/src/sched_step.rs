//! The scheduler's per-step loops (`hybridkv_core::sched_step`): `running_plan`,
//! `block_growth` and `TokenLists`, for `python/hybridkv/serving/scheduler.py` and
//! `request_table.py`.
//!
//! Each is one call per step over the ~256 running rows: microseconds of work, so the
//! GIL is kept (releasing and re-taking it would cost more than the work). Arguments
//! are checked here once: a contiguous int64 array is read in place, any other integer
//! array-like converted once (`arrays::int_vec`); bad input raises
//! `InvalidArgumentError` and changes nothing.

use hybridkv_core::sched_step::{self, Sampled, TokenLists};
use numpy::{IntoPyArray, PyArray1, PyArrayMethods, PyUntypedArrayMethods};
use pyo3::prelude::*;
use pyo3::types::PyList;

use crate::arrays::int_vec;
use crate::errors::{invalid_arg, IntoPy};
use crate::shared::Shared;

/// Run `f` on an int64 batch: a contiguous int64 array is lent in place, anything else
/// converted first.
fn with_i64<R>(
    obj: &Bound<'_, PyAny>,
    what: &str,
    f: impl FnOnce(&[i64]) -> PyResult<R>,
) -> PyResult<R> {
    if let Ok(a) = obj.cast::<PyArray1<i64>>() {
        if a.is_c_contiguous() {
            let ro = a.try_readonly().map_err(|_| {
                invalid_arg(format!(
                    "{what}: the array is being written elsewhere and cannot be read"
                ))
            })?;
            if let Ok(s) = ro.as_slice() {
                return f(s);
            }
        }
    }
    f(&int_vec(obj, what)?)
}

type Plan<'py> = (
    Bound<'py, PyArray1<i64>>,
    Bound<'py, PyArray1<i64>>,
    Bound<'py, PyArray1<i64>>,
    Vec<i64>,
    Vec<i64>,
    i64,
);

/// `running_plan(computed, tokens, slots)`: for the running rows in table slots
/// `slots`, `(computed, tokens, one, multi, ones_before, ones)` (see the core docs):
/// three int64 arrays by row, two lists (the rows with more than one token left, and
/// the one-token rows before each of them) and the count of one-token rows.
#[pyfunction]
pub fn running_plan<'py>(
    py: Python<'py>,
    computed: &Bound<'py, PyAny>,
    tokens: &Bound<'py, PyAny>,
    slots: &Bound<'py, PyAny>,
) -> PyResult<Plan<'py>> {
    let plan = with_i64(computed, "computed", |c| {
        with_i64(tokens, "tokens", |t| {
            with_i64(slots, "slots", |s| {
                sched_step::running_plan(c, t, s).py_err()
            })
        })
    })?;
    Ok((
        plan.computed.into_pyarray(py),
        plan.tokens.into_pyarray(py),
        plan.one.into_pyarray(py),
        plan.multi,
        plan.ones_before,
        plan.ones,
    ))
}

/// `block_growth(computed, new, block_sizes, caps)`: per group, the blocks it adds
/// when each row goes from `computed` to `computed + new` tokens (each row's share
/// capped at the group's cap), as a list of ints.
#[pyfunction]
pub fn block_growth(
    computed: &Bound<'_, PyAny>,
    new: &Bound<'_, PyAny>,
    block_sizes: &Bound<'_, PyAny>,
    caps: &Bound<'_, PyAny>,
) -> PyResult<Vec<i64>> {
    let bs = int_vec(block_sizes, "block_sizes")?;
    let caps = int_vec(caps, "caps")?;
    with_i64(computed, "computed", |c| {
        with_i64(new, "new", |n| {
            sched_step::block_growth(c, n, &bs, &caps).py_err()
        })
    })
}

/// `hybridkv._core.TokenLists`: the tokens each request sampled, by table slot
/// (`request_table.RequestTable.outs`). Behind a mutex like the other classes.
#[pyclass(name = "TokenLists", module = "hybridkv._core", frozen)]
pub struct PyTokenLists {
    inner: Shared<TokenLists>,
}

#[pymethods]
impl PyTokenLists {
    #[new]
    fn new() -> Self {
        PyTokenLists {
            inner: Shared::new(TokenLists::new(), "TokenLists"),
        }
    }

    /// Slots `0..num_slots` exist (new ones empty).
    fn reserve_slots(&self, py: Python<'_>, num_slots: usize) -> PyResult<()> {
        self.inner.with(py, |t| t.reserve_slots(num_slots))
    }

    #[getter]
    fn num_slots(&self, py: Python<'_>) -> PyResult<usize> {
        self.inner.with(py, |t| t.num_slots())
    }

    /// Empty `slot`'s list.
    fn clear(&self, py: Python<'_>, slot: i64) -> PyResult<()> {
        self.inner.with(py, |t| t.clear(slot))?.py_err()
    }

    /// Append `tokens[i]` to slot `slots[i]`'s list for every `i` (all or nothing).
    fn append(
        &self,
        py: Python<'_>,
        slots: &Bound<'_, PyAny>,
        tokens: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        with_i64(slots, "slots", |s| {
            with_i64(tokens, "tokens", |t| {
                self.inner.with(py, |lists| lists.append(s, t))?.py_err()
            })
        })
    }

    /// A copy of `slot`'s tokens as a list of ints.
    fn get<'py>(&self, py: Python<'py>, slot: i64) -> PyResult<Bound<'py, PyList>> {
        let v = self
            .inner
            .with(py, |t| t.get(slot).map(<[i64]>::to_vec))?
            .py_err()?;
        PyList::new(py, v)
    }

    /// The number of tokens in `slot`'s list.
    fn len_of(&self, py: Python<'_>, slot: i64) -> PyResult<usize> {
        self.inner
            .with(py, |t| t.get(slot).map(<[i64]>::len))?
            .py_err()
    }

    /// A step's sampled tokens (`hybridkv_core::sched_step::TokenLists::sample`):
    /// `counts` (a writable int64 array by slot) grows by one per row. Returns
    /// `(finished rows, by length, bad row)`: the rows that finish and whether each
    /// did by length, and -1, or `([], [], row)` for the first continuing row whose
    /// token is outside `0..token_end`, when nothing changed.
    #[pyo3(signature = (slots, tokens, counts, length_at, stop, token_end))]
    fn sample(
        &self,
        slots: &Bound<'_, PyAny>,
        tokens: &Bound<'_, PyAny>,
        counts: &Bound<'_, PyArray1<i64>>,
        length_at: &Bound<'_, PyAny>,
        stop: Option<&Bound<'_, PyArray1<bool>>>,
        token_end: i64,
    ) -> PyResult<(Vec<usize>, Vec<bool>, i64)> {
        let py = slots.py();
        let busy = |what: &str| invalid_arg(format!("{what}: the array is being used elsewhere"));
        let stop_ro = stop
            .map(|a| a.try_readonly().map_err(|_| busy("stop")))
            .transpose()?;
        let stop_v: Vec<bool> = match &stop_ro {
            Some(ro) => ro.as_array().to_vec(),
            None => Vec::new(),
        };
        let mut counts_rw = counts.try_readwrite().map_err(|_| busy("counts"))?;
        let counts_s = counts_rw
            .as_slice_mut()
            .map_err(|_| invalid_arg("counts must be a contiguous int64 array"))?;
        let out = with_i64(slots, "slots", |s| {
            with_i64(tokens, "tokens", |t| {
                with_i64(length_at, "length_at", |l| {
                    self.inner
                        .with(py, |lists| {
                            lists.sample(s, t, counts_s, l, &stop_v, token_end)
                        })?
                        .py_err()
                })
            })
        })?;
        Ok(match out {
            Sampled::Done {
                finished,
                by_length,
            } => (finished, by_length, -1),
            Sampled::BadToken { row } => (Vec::new(), Vec::new(), row as i64),
        })
    }

    /// `slot`'s tokens as a list of ints, leaving its list empty.
    fn take<'py>(&self, py: Python<'py>, slot: i64) -> PyResult<Bound<'py, PyList>> {
        let v = self.inner.with(py, |t| t.take(slot))?.py_err()?;
        PyList::new(py, v)
    }
}
