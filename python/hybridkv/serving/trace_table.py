"""Serving traces for the simulator: who arrives when, with which prompt, wanting how much.

A trace is a table of requests whose prompts are concatenations of token *segments*.
Segments are what make prefix sharing real: two requests that start with the same
segments share those tokens exactly, so the prefix cache can hit. A segment is stored
as ``(seed, length)`` and expanded by :func:`synth_tokens`, a counter-based generator
(SplitMix64 of ``seed * 2**32 + position``) that is the same on every machine and numpy
version, so a trace file stays a few kilobytes however many tokens it describes. A
segment may instead carry literal token ids (``tokens`` in the file), for traces built
from real prompts.

Each request names one *output* segment: the tokens the simulated model "samples", in
order. A later turn of the same conversation lists that segment in its prompt, so the
blocks the earlier turn computed while decoding are hit again, as in a real chat.

Arrivals are either absolute (``parent == -1``: ``arrival`` seconds from the start) or
closed-loop (``arrival`` seconds after request ``parent`` finished: a user's think time
or a tool's latency), which is how multi-turn chat and agent loops behave.

File format (``.json`` or ``.json.gz``), every array one entry per request unless said::

    {"format": "hybridkv-trace/1", "name": str, "description": str, "vocab_size": int,
     "segments": {"seed": [int, ...], "length": [int, ...],        # one per segment
                  "tokens": {"<segment index>": [int, ...], ...}},  # optional literals
     "requests": {"arrival": [float], "parent": [int], "priority": [int],
                  "output": [segment index], "prompt": [[segment index, ...], ...]}}

The bundled traces (:func:`list_traces`) are written by ``scripts/make_traces.py`` from
the generators in :mod:`hybridkv.serving.synthetic_traces`; a test checks the files
match a fresh generation.
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from hybridkv.bounded_read import parse_json, read_bytes
from hybridkv.errors import InvalidArgumentError

TRACE_FORMAT = "hybridkv-trace/1"
DEFAULT_VOCAB_SIZE = 32000
_TRACE_DIR = Path(__file__).parent / "data" / "traces"

I64 = npt.NDArray[np.int64]
I32 = npt.NDArray[np.int32]
F64 = npt.NDArray[np.float64]


class TraceError(InvalidArgumentError):
    """A trace file or trace name that cannot be loaded (also an ``InvalidArgumentError``)."""


def synth_tokens(seed: int, length: int, vocab_size: int = DEFAULT_VOCAB_SIZE) -> I32:
    """``length`` deterministic token ids in ``[1, vocab_size)`` for segment ``seed``.

    SplitMix64 over the counter ``seed * 2**32 + i``: no global RNG state, identical
    output on every platform, and position ``i`` never depends on the length asked for.
    """
    if length < 0 or vocab_size < 2 or seed < 0:
        raise InvalidArgumentError(
            f"synth_tokens needs seed >= 0, length >= 0, vocab_size >= 2 "
            f"(got {seed}, {length}, {vocab_size})"
        )
    x = (np.uint64(seed) << np.uint64(32)) + np.arange(length, dtype=np.uint64)
    return _splitmix_tokens(x, vocab_size)


def _splitmix_tokens(x: npt.NDArray[np.uint64], vocab_size: int) -> I32:
    """SplitMix64 of each counter, folded into ``[1, vocab_size)``."""
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    x = x ^ (x >> np.uint64(31))
    return (np.uint64(1) + x % np.uint64(vocab_size - 1)).astype(np.int32)


@dataclass(frozen=True)
class TraceWindow:
    """Which part of a trace to run, and how fast.

    ``start_s``/``end_s`` keep the requests arriving in ``[start_s, end_s)`` seconds of
    trace time (closed-loop turns follow their session's first request), rebased so
    ``start_s`` is time 0; ``max_requests`` then keeps the first N of those in trace
    order; ``time_scale`` multiplies every arrival time and think/tool delay (0.5 = the
    same requests twice as fast)."""

    start_s: float | None = None
    end_s: float | None = None
    max_requests: int | None = None
    time_scale: float = 1.0

    def __post_init__(self) -> None:
        for name in ("start_s", "end_s"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not math.isfinite(v) or v < 0):
                raise TraceError(f"trace window {name} must be a finite number >= 0, got {v!r}")
        if self.start_s is not None and self.end_s is not None and self.end_s <= self.start_s:
            raise TraceError(
                f"trace window end {self.end_s} s must come after its start {self.start_s} s"
            )
        m = self.max_requests
        if m is not None and (isinstance(m, bool) or not isinstance(m, int) or m < 1):
            raise TraceError(f"max_requests must be a positive integer, got {m!r}")
        ts = self.time_scale
        if (
            isinstance(ts, bool)
            or not isinstance(ts, (int, float))
            or not (math.isfinite(ts) and ts > 0)
        ):
            raise TraceError(f"time scale must be a finite number > 0, got {ts!r}")

    @property
    def is_everything(self) -> bool:
        return (
            self.start_s is None
            and self.end_s is None
            and self.max_requests is None
            and self.time_scale == 1.0
        )

    def contains(self, t: float) -> bool:
        """Whether an arrival at trace time ``t`` seconds lies in the window."""
        return (self.start_s is None or t >= self.start_s) and (
            self.end_s is None or t < self.end_s
        )

    def contains_array(self, t: F64) -> npt.NDArray[np.bool_]:
        ok = np.ones(t.shape, dtype=bool)
        if self.start_s is not None:
            ok &= t >= self.start_s
        if self.end_s is not None:
            ok &= t < self.end_s
        return ok

    def rebase(self, t: F64) -> F64:
        """Trace times moved so the window starts at 0."""
        out: F64 = t - self.start_s if self.start_s is not None else t
        return out


@dataclass(frozen=True, eq=False)
class Trace:
    """An immutable request table; see the module docstring for the meaning of each field."""

    name: str
    description: str
    vocab_size: int
    seg_seed: I64
    seg_len: I64
    arrival: F64
    parent: I64
    priority: I64
    output_seg: I64
    prompt_segs: I64
    prompt_offsets: I64
    seg_tokens: Mapping[int, I32] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = self.arrival.shape[0]
        s = self.seg_seed.shape[0]
        for name in ("parent", "priority", "output_seg"):
            if getattr(self, name).shape != (n,):
                raise TraceError(f"trace {self.name!r}: {name} must have {n} entries")
        if self.seg_len.shape != (s,):
            raise TraceError(f"trace {self.name!r}: segment seeds and lengths differ in count")
        if self.prompt_offsets.shape != (n + 1,) or self.prompt_offsets[0] != 0:
            raise TraceError(
                f"trace {self.name!r}: prompt offsets must have {n + 1} entries from 0"
            )
        if np.any(np.diff(self.prompt_offsets) < 1):
            raise TraceError(f"trace {self.name!r}: every prompt needs at least one segment")
        if self.prompt_offsets[-1] != self.prompt_segs.shape[0]:
            raise TraceError(f"trace {self.name!r}: prompt offsets do not cover the segment list")
        segs = np.concatenate([self.prompt_segs, self.output_seg])
        if segs.size and (segs.min() < 0 or segs.max() >= s):
            raise TraceError(f"trace {self.name!r}: a request names a segment outside 0..{s - 1}")
        if np.any(self.seg_len < 0) or np.any(self.seg_seed < 0):
            raise TraceError(f"trace {self.name!r}: negative segment seed or length")
        if np.any(self.seg_len[self.output_seg] < 1):
            raise TraceError(f"trace {self.name!r}: every request must ask for >= 1 output token")
        if np.any(self.parent >= np.arange(n)) or np.any(self.parent < -1):
            raise TraceError(f"trace {self.name!r}: a parent must be an earlier request or -1")
        if np.any(~np.isfinite(self.arrival)) or np.any(self.arrival < 0):
            raise TraceError(f"trace {self.name!r}: arrivals must be finite and >= 0")
        for idx, toks in self.seg_tokens.items():
            if not 0 <= idx < s:
                raise TraceError(
                    f"trace {self.name!r}: literal segment key {idx} is outside 0..{s - 1}"
                )
            if toks.shape != (int(self.seg_len[idx]),):
                raise TraceError(f"trace {self.name!r}: literal segment {idx} has the wrong length")
            if toks.size and (toks.min() < 0 or toks.max() >= self.vocab_size):
                raise TraceError(f"trace {self.name!r}: literal segment {idx} leaves the vocab")

    @property
    def num_requests(self) -> int:
        return int(self.arrival.shape[0])

    @property
    def prompt_lens(self) -> I64:
        """Prompt length of every request (segment lengths summed, vectorised)."""
        per_seg = self.seg_len[self.prompt_segs]
        cum = np.concatenate([[0], np.cumsum(per_seg)])
        lens: I64 = (cum[self.prompt_offsets[1:]] - cum[self.prompt_offsets[:-1]]).astype(np.int64)
        return lens

    @property
    def output_lens(self) -> I64:
        return self.seg_len[self.output_seg].astype(np.int64)

    def segment(self, index: int) -> I32:
        """The token ids of segment ``index``."""
        lit = self.seg_tokens.get(index)
        if lit is not None:
            return lit
        return synth_tokens(int(self.seg_seed[index]), int(self.seg_len[index]), self.vocab_size)

    def segments_tokens(self, segs: npt.ArrayLike) -> I32:
        """The token ids of segments ``segs``, concatenated: one vectorised SplitMix
        pass for all synthetic segments (what :meth:`segment` gives, piece by piece)."""
        idx = np.asarray(segs, dtype=np.int64).reshape(-1)
        lens = self.seg_len[idx]
        total = int(lens.sum())
        starts = np.concatenate([[0], np.cumsum(lens)[:-1]]).astype(np.int64)
        pos = np.arange(total, dtype=np.int64) - np.repeat(starts, lens)
        seeds = np.repeat(self.seg_seed[idx], lens).astype(np.uint64)
        toks = _splitmix_tokens((seeds << np.uint64(32)) + pos.astype(np.uint64), self.vocab_size)
        if self.seg_tokens:
            for k, sg in enumerate(idx.tolist()):
                lit = self.seg_tokens.get(sg)
                if lit is not None:
                    toks[starts[k] : starts[k] + lens[k]] = lit
        return toks

    def prompt_tokens(self, i: int) -> I32:
        """Request ``i``'s prompt token ids."""
        lo, hi = int(self.prompt_offsets[i]), int(self.prompt_offsets[i + 1])
        return self.segments_tokens(self.prompt_segs[lo:hi])

    def output_tokens(self, i: int) -> I32:
        """The token ids request ``i`` generates, in order."""
        return self.segment(int(self.output_seg[i]))

    def subset(self, keep: npt.NDArray[np.bool_]) -> Trace:
        """The requests where ``keep`` is true, renumbered in order (segments are kept
        whole). Every kept request's parent must be kept too."""
        keep = np.asarray(keep, dtype=bool)
        if keep.shape != (self.num_requests,):
            raise TraceError(f"trace {self.name!r}: subset mask needs {self.num_requests} entries")
        idx = np.flatnonzero(keep)
        par = self.parent[idx]
        if np.any(par >= 0) and not bool(keep[par[par >= 0]].all()):
            raise TraceError(f"trace {self.name!r}: a subset must keep every kept request's parent")
        new_id = np.cumsum(keep) - 1
        parent = np.where(par >= 0, new_id[np.maximum(par, 0)], -1).astype(np.int64)
        lo, hi = self.prompt_offsets[idx], self.prompt_offsets[idx + 1]
        lens = hi - lo
        # Gather every kept request's prompt segments in one vectorised pass.
        starts = np.repeat(lo - np.concatenate([[0], np.cumsum(lens)[:-1]]), lens)
        segs = self.prompt_segs[starts + np.arange(int(lens.sum()))]
        return Trace(
            name=self.name,
            description=self.description,
            vocab_size=self.vocab_size,
            seg_seed=self.seg_seed,
            seg_len=self.seg_len,
            arrival=self.arrival[idx],
            parent=parent,
            priority=self.priority[idx],
            output_seg=self.output_seg[idx],
            prompt_segs=segs.astype(np.int64),
            prompt_offsets=np.concatenate([[0], np.cumsum(lens)]).astype(np.int64),
            seg_tokens=self.seg_tokens,
        )

    def scaled(self, factor: float) -> Trace:
        """Every arrival time (absolute and closed-loop delays alike) times ``factor``."""
        if factor == 1.0:
            return self
        if not (math.isfinite(factor) and factor > 0):
            raise TraceError(f"time scale must be a finite number > 0, got {factor!r}")
        return dataclasses.replace(self, arrival=self.arrival * float(factor))

    def windowed(self, window: TraceWindow) -> Trace:
        """The requests ``window`` selects, with its time scale applied (see
        :class:`TraceWindow`)."""
        if window.is_everything:
            return self
        root = self.parent < 0
        keep = root & window.contains_array(self.arrival)
        for i in np.flatnonzero(~root).tolist():  # parents come first: one pass
            keep[i] = keep[int(self.parent[i])]
        if window.max_requests is not None:
            keep &= np.cumsum(keep) <= window.max_requests
        if not keep.any():
            raise TraceError(f"trace {self.name!r}: no request in the window asked for")
        sub = self.subset(keep)
        arrival = np.where(sub.parent < 0, window.rebase(sub.arrival), sub.arrival)
        return dataclasses.replace(sub, arrival=arrival).scaled(window.time_scale)

    def summary(self) -> dict[str, Any]:
        """Sizes and sharing of the trace, for reports."""
        p = self.prompt_lens
        o = self.output_lens
        return {
            "name": self.name,
            "requests": self.num_requests,
            "prompt_tokens": int(p.sum()),
            "output_tokens": int(o.sum()),
            "mean_prompt_len": float(p.mean()) if p.size else 0.0,
            "max_prompt_len": int(p.max()) if p.size else 0,
            "mean_output_len": float(o.mean()) if o.size else 0.0,
            "max_seq_len": int((p + o).max()) if p.size else 0,
            "closed_loop_requests": int((self.parent >= 0).sum()),
        }

    # -- files ---------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        lo, hi = self.prompt_offsets[:-1], self.prompt_offsets[1:]
        segs = self.prompt_segs.tolist()
        return {
            "format": TRACE_FORMAT,
            "name": self.name,
            "description": self.description,
            "vocab_size": self.vocab_size,
            "segments": {
                "seed": self.seg_seed.tolist(),
                "length": self.seg_len.tolist(),
                "tokens": {str(k): v.tolist() for k, v in sorted(self.seg_tokens.items())},
            },
            "requests": {
                "arrival": [round(float(a), 6) for a in self.arrival],
                "parent": self.parent.tolist(),
                "priority": self.priority.tolist(),
                "output": self.output_seg.tolist(),
                "prompt": [segs[a:b] for a, b in zip(lo.tolist(), hi.tolist(), strict=True)],
            },
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], *, source: str = "<dict>") -> Trace:
        """Parse the file format; any problem raises :class:`TraceError` naming ``source``."""
        try:
            if d.get("format") != TRACE_FORMAT:
                raise TraceError(f"{source}: not a {TRACE_FORMAT} trace")
            seg = d["segments"]
            req = d["requests"]
            prompts = req["prompt"]
            lens = [len(p) for p in prompts]
            n = len(prompts)
            return cls(
                name=str(d.get("name", Path(source).name)),
                description=str(d.get("description", "")),
                vocab_size=int(d.get("vocab_size", DEFAULT_VOCAB_SIZE)),
                seg_seed=np.asarray(seg["seed"], dtype=np.int64).reshape(-1),
                seg_len=np.asarray(seg["length"], dtype=np.int64).reshape(-1),
                arrival=np.asarray(req["arrival"], dtype=np.float64).reshape(-1),
                parent=np.asarray(req.get("parent", [-1] * n), dtype=np.int64).reshape(-1),
                priority=np.asarray(req.get("priority", [0] * n), dtype=np.int64).reshape(-1),
                output_seg=np.asarray(req["output"], dtype=np.int64).reshape(-1),
                prompt_segs=np.asarray([s for p in prompts for s in p], dtype=np.int64),
                prompt_offsets=np.concatenate([[0], np.cumsum(lens)]).astype(np.int64),
                seg_tokens={
                    int(k): np.asarray(v, dtype=np.int32)
                    for k, v in dict(seg.get("tokens", {})).items()
                },
            )
        except TraceError:
            raise
        except (KeyError, TypeError, ValueError, OverflowError) as e:
            raise TraceError(f"{source}: malformed trace ({type(e).__name__}: {e})") from None

    def save(self, path: str | Path) -> None:
        """Write the trace as JSON (gzip-compressed, reproducibly, when the name ends .gz)."""
        text = json.dumps(self.to_dict(), separators=(",", ":"), sort_keys=True).encode()
        p = Path(path)
        if p.name.endswith(".gz"):
            # mtime=0 and no file name: the same trace always gives the same bytes.
            with open(p, "wb") as raw, gzip.GzipFile("", "wb", 9, raw, mtime=0) as f:
                f.write(text)
        else:
            p.write_bytes(text)


def list_traces() -> list[str]:
    """Names of the bundled traces."""
    return sorted(p.name.removesuffix(".json.gz") for p in _TRACE_DIR.glob("*.json.gz"))


#: The most (decompressed) bytes a trace file may hold: a gzip bomb stops here.
MAX_TRACE_FILE_BYTES = 512 << 20


def load_trace(name_or_path: str | Path) -> Trace:
    """A bundled trace by name (see :func:`list_traces`) or a trace file by path."""
    s = str(name_or_path)
    bundled = _TRACE_DIR / f"{s}.json.gz"
    path = bundled if "/" not in s and bundled.exists() else Path(s)
    if not path.is_file():
        raise TraceError(
            f"no trace {s!r}: not a file, and the bundled traces are {', '.join(list_traces())}"
        )
    raw = read_bytes(
        path, max_bytes=MAX_TRACE_FILE_BYTES, error=TraceError, what="trace", gunzip=True
    )
    data = parse_json(raw, error=TraceError, what=f"trace {str(path)!r}")
    if not isinstance(data, dict):
        raise TraceError(f"{path}: a trace file holds one JSON object")
    return Trace.from_dict(data, source=str(path))


__all__ = [
    "DEFAULT_VOCAB_SIZE",
    "MAX_TRACE_FILE_BYTES",
    "TRACE_FORMAT",
    "Trace",
    "TraceError",
    "TraceWindow",
    "list_traces",
    "load_trace",
    "synth_tokens",
]
