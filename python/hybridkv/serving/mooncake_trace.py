"""Mooncake trace files (one JSON object a line) as simulator traces.

The FAST'25 Mooncake release describes each request by its arrival and its prompt's
content as block hashes, never its text::

    {"timestamp": 27482, "input_length": 6955, "output_length": 52, "hash_ids": [46, ...]}

``timestamp`` is milliseconds from the start, ``hash_ids`` one id per 512-token block
of the prompt (the last block holds ``input_length - 512 * (len(hash_ids) - 1)``
tokens, 1 to 512). Equal ids mean equal content, so prefix sharing is exact at block
granularity.

Each hash id ``h`` becomes the segment of seed ``h`` (:func:`hybridkv.serving.traces.synth_tokens`:
counter-based, the same on every machine and under every ``PYTHONHASHSEED``); a partial
last block is the first tokens of its id's block, so the same id always gives the same
tokens. Outputs are fresh segments of seeds ``2**31 + request index``, disjoint from every
hash id (ids must be below ``2**31``). The file states no conversation structure, so
every request arrives at its own timestamp (``parent == -1``).

Reading is bounded: lines of at most :data:`MAX_LINE_BYTES`, at most
:data:`MAX_TRACE_BYTES` of (decompressed) text and :data:`MAX_REQUESTS` requests, a
gzip file decompressed as a stream, and reading stops once the window's first
``max_requests`` requests are in.
"""

from __future__ import annotations

import gzip
import json
import math
from pathlib import Path
from typing import IO, Any

import numpy as np

from hybridkv.serving.traces import DEFAULT_VOCAB_SIZE, Trace, TraceError, TraceWindow

#: Tokens per hash id in the Mooncake release.
MOONCAKE_BLOCK_TOKENS = 512
#: Longest line accepted (a 126k-token prompt is about 1.5 MB of ids).
MAX_LINE_BYTES = 16 << 20
#: Most (decompressed) bytes read from one file.
MAX_TRACE_BYTES = 2 << 30
#: Most requests kept from one file.
MAX_REQUESTS = 5_000_000
#: Hash ids (segment seeds) must lie below this; output seeds start here.
HASH_ID_LIMIT = 1 << 31
_MAX_INPUT = 1 << 31


def _int_field(d: dict[str, Any], key: str, lo: int, hi: int, where: str) -> int:
    v = d.get(key)
    if isinstance(v, bool) or not isinstance(v, int):
        raise TraceError(f"{where}: {key!r} must be an integer, got {v!r}")
    if not lo <= v < hi:
        raise TraceError(f"{where}: {key!r} = {v} outside [{lo}, {hi})")
    return v


def _open(path: Path) -> IO[bytes]:
    f: IO[bytes] = open(path, "rb")  # noqa: SIM115 - returned to the caller's with
    if f.read(2) == b"\x1f\x8b":
        f.seek(0)
        gz: IO[bytes] = gzip.GzipFile(fileobj=f, mode="rb")  # type: ignore[assignment]
        return gz  # streamed: never decompressed whole
    f.seek(0)
    return f


def read_mooncake(
    path: str | Path,
    *,
    window: TraceWindow | None = None,
    block_tokens: int = MOONCAKE_BLOCK_TOKENS,
    vocab_size: int = DEFAULT_VOCAB_SIZE,
    max_line_bytes: int = MAX_LINE_BYTES,
    max_trace_bytes: int = MAX_TRACE_BYTES,
) -> Trace:
    """The Mooncake JSON-lines file ``path`` as a :class:`Trace` (module docstring).

    ``window`` keeps requests whose arrival lies in ``[start_s, end_s)`` (rebased so
    ``start_s`` is time 0), then the first ``max_requests`` of those, then scales
    arrival times by ``time_scale``. Any malformed line raises :class:`TraceError`
    naming the file and the line number."""
    p = Path(path)
    w = window or TraceWindow()
    if not p.is_file():
        raise TraceError(f"no trace file {str(p)!r}")
    seg_index: dict[tuple[int, int], int] = {}
    seg_seed: list[int] = []
    seg_len: list[int] = []
    arrival: list[float] = []
    output_len: list[int] = []
    prompt: list[int] = []
    offsets = [0]
    read = 0
    try:
        with _open(p) as f:
            lineno = 0
            while w.max_requests is None or len(arrival) < w.max_requests:
                line = f.readline(max_line_bytes + 1)
                if not line:
                    break
                lineno += 1
                where = f"{p}: line {lineno}"
                read += len(line)
                if len(line) > max_line_bytes:
                    raise TraceError(f"{where}: longer than {max_line_bytes} bytes")
                if read > max_trace_bytes:
                    raise TraceError(f"{p}: more than {max_trace_bytes} bytes of trace text")
                if not line.strip():
                    continue
                try:
                    d = json.loads(line)
                except ValueError as e:
                    raise TraceError(f"{where}: not JSON ({e})") from None
                if not isinstance(d, dict):
                    raise TraceError(f"{where}: expected a JSON object")
                ts = d.get("timestamp")
                if isinstance(ts, bool) or not isinstance(ts, (int, float)):
                    raise TraceError(f"{where}: 'timestamp' must be a number, got {ts!r}")
                if not math.isfinite(ts) or ts < 0:
                    raise TraceError(f"{where}: 'timestamp' must be finite and >= 0, got {ts}")
                n_in = _int_field(d, "input_length", 1, _MAX_INPUT, where)
                n_out = _int_field(d, "output_length", 1, _MAX_INPUT, where)
                ids = d.get("hash_ids")
                if not isinstance(ids, list):
                    raise TraceError(f"{where}: 'hash_ids' must be a list of integers")
                want = -(-n_in // block_tokens)
                if len(ids) != want:
                    raise TraceError(
                        f"{where}: {len(ids)} hash_ids for input_length {n_in}; "
                        f"{block_tokens}-token blocks need {want}"
                    )
                t = ts / 1000.0
                if not w.contains(t):
                    continue
                if len(arrival) >= MAX_REQUESTS:
                    raise TraceError(f"{p}: more than {MAX_REQUESTS} requests")
                last = n_in - block_tokens * (want - 1)
                for k, h in enumerate(ids):
                    if isinstance(h, bool) or not isinstance(h, int) or not 0 <= h < HASH_ID_LIMIT:
                        raise TraceError(
                            f"{where}: hash_ids[{k}] = {h!r} is not an integer in "
                            f"[0, {HASH_ID_LIMIT})"
                        )
                    key = (h, block_tokens if k < want - 1 else last)
                    s = seg_index.get(key)
                    if s is None:
                        s = seg_index[key] = len(seg_seed)
                        seg_seed.append(h)
                        seg_len.append(key[1])
                    prompt.append(s)
                offsets.append(len(prompt))
                arrival.append(t)
                output_len.append(n_out)
    except OSError as e:
        raise TraceError(f"{p}: cannot read trace ({e})") from None
    except EOFError as e:  # a truncated gzip stream
        raise TraceError(f"{p}: cannot read trace ({e})") from None
    if not arrival:
        raise TraceError(f"{p}: no request in the trace (or in the window asked for)")
    n = len(arrival)
    n_seg = len(seg_seed)
    seeds = np.concatenate(
        [np.asarray(seg_seed, dtype=np.int64), HASH_ID_LIMIT + np.arange(n, dtype=np.int64)]
    )
    lens = np.concatenate([np.asarray(seg_len, dtype=np.int64), np.asarray(output_len)])
    trace = Trace(
        name=p.name,
        description=f"Mooncake trace {p.name} ({block_tokens}-token hash blocks)",
        vocab_size=vocab_size,
        seg_seed=seeds,
        seg_len=lens.astype(np.int64),
        arrival=w.rebase(np.asarray(arrival, dtype=np.float64)),
        parent=np.full(n, -1, dtype=np.int64),
        priority=np.zeros(n, dtype=np.int64),
        output_seg=n_seg + np.arange(n, dtype=np.int64),
        prompt_segs=np.asarray(prompt, dtype=np.int64),
        prompt_offsets=np.asarray(offsets, dtype=np.int64),
    )
    return trace.scaled(w.time_scale)


def is_mooncake_path(spec: str) -> bool:
    """Whether ``spec`` names a JSON-lines file (``.jsonl`` or ``.jsonl.gz``)."""
    s = spec.lower()
    return s.endswith(".jsonl") or s.endswith(".jsonl.gz")


__all__ = [
    "HASH_ID_LIMIT",
    "MAX_LINE_BYTES",
    "MAX_REQUESTS",
    "MAX_TRACE_BYTES",
    "MOONCAKE_BLOCK_TOKENS",
    "is_mooncake_path",
    "read_mooncake",
]
