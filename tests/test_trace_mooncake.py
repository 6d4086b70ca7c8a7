"""Mooncake JSON-lines reader, trace windows and time scaling, on tiny hand-written files."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hybridkv.errors import HybridKVError
from hybridkv.mooncake_trace import HASH_ID_LIMIT, read_mooncake
from hybridkv.trace_sources import open_trace
from hybridkv.traces import TraceError, TraceWindow, make_chat, synth_tokens


def _write(path: Path, rows: list[dict[str, object] | str]) -> Path:
    lines = [r if isinstance(r, str) else json.dumps(r) for r in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


ROWS: list[dict[str, object] | str] = [
    {"timestamp": 0, "input_length": 1000, "output_length": 5, "hash_ids": [7, 8]},
    {"timestamp": 1500, "input_length": 600, "output_length": 3, "hash_ids": [7, 9]},
    {"timestamp": 2500, "input_length": 512, "output_length": 1, "hash_ids": [7]},
    {"timestamp": 4000, "input_length": 1100, "output_length": 2, "hash_ids": [7, 8, 10]},
]


def test_hash_ids_become_deterministic_512_token_blocks(tmp_path: Path) -> None:
    t = read_mooncake(_write(tmp_path / "t.jsonl", ROWS))
    assert t.num_requests == 4
    assert t.prompt_lens.tolist() == [1000, 600, 512, 1100]
    assert t.output_lens.tolist() == [5, 3, 1, 2]
    assert t.arrival.tolist() == [0.0, 1.5, 2.5, 4.0]  # milliseconds -> seconds
    assert np.all(t.parent == -1)
    p = [t.prompt_tokens(i) for i in range(4)]
    # Same id, same 512 tokens, whichever request carries it.
    block7 = synth_tokens(7, 512)
    for toks in p:
        assert np.array_equal(toks[:512], block7)
    # The partial last block is the first tokens of its id's block.
    assert np.array_equal(p[0][512:], synth_tokens(8, 488))
    assert np.array_equal(p[3][512:1024], synth_tokens(8, 512))
    assert np.array_equal(p[3][512:1000], p[0][512:])
    assert np.array_equal(p[1][512:], synth_tokens(9, 88))
    # Different ids differ; outputs are fresh tokens, disjoint from every hash id's.
    assert not np.array_equal(p[1][512:600], p[0][512:600])
    assert np.array_equal(t.output_tokens(0), synth_tokens(HASH_ID_LIMIT + 0, 5))
    assert not np.array_equal(t.output_tokens(0), t.output_tokens(1)[:3].repeat(2)[:5])


def test_gzip_is_read_as_a_stream(tmp_path: Path) -> None:
    raw = _write(tmp_path / "t.jsonl", ROWS)
    gz = tmp_path / "t.jsonl.gz"
    gz.write_bytes(gzip.compress(raw.read_bytes()))
    a, b = read_mooncake(raw), read_mooncake(gz)
    assert a.prompt_lens.tolist() == b.prompt_lens.tolist()
    assert all(np.array_equal(a.prompt_tokens(i), b.prompt_tokens(i)) for i in range(4))
    # A gzip bomb: far more text than the bound, never inflated whole.
    bomb = tmp_path / "bomb.jsonl.gz"
    with gzip.open(bomb, "wb") as f:
        row = (json.dumps(ROWS[0]) + "\n").encode()
        for _ in range(20000):
            f.write(row)
    with pytest.raises(TraceError, match="more than 100000 bytes"):
        read_mooncake(bomb, max_trace_bytes=100_000)
    # ...unless the window stops reading early.
    assert read_mooncake(bomb, window=TraceWindow(max_requests=3)).num_requests == 3
    cut = tmp_path / "cut.jsonl.gz"
    cut.write_bytes(gz.read_bytes()[:-12])
    with pytest.raises(TraceError, match="cannot read"):
        read_mooncake(cut)


@pytest.mark.parametrize(
    ("row", "needle"),
    [
        ("{not json", "not JSON"),
        ("[1, 2]", "JSON object"),
        ({"input_length": 10, "output_length": 1, "hash_ids": [1]}, "'timestamp'"),
        ({"timestamp": -5, "input_length": 10, "output_length": 1, "hash_ids": [1]}, ">= 0"),
        ({"timestamp": "0", "input_length": 10, "output_length": 1, "hash_ids": [1]}, "number"),
        ({"timestamp": 0, "input_length": 0, "output_length": 1, "hash_ids": []}, "input_length"),
        ({"timestamp": 0, "input_length": 10.5, "output_length": 1, "hash_ids": [1]}, "integer"),
        (
            {"timestamp": 0, "input_length": 10, "output_length": 0, "hash_ids": [1]},
            "output_length",
        ),
        ({"timestamp": 0, "input_length": 10, "output_length": True, "hash_ids": [1]}, "integer"),
        ({"timestamp": 0, "input_length": 10, "output_length": 1, "hash_ids": 3}, "list"),
        ({"timestamp": 0, "input_length": 513, "output_length": 1, "hash_ids": [1]}, "need 2"),
        ({"timestamp": 0, "input_length": 10, "output_length": 1, "hash_ids": [1, 2]}, "need 1"),
        ({"timestamp": 0, "input_length": 10, "output_length": 1, "hash_ids": [-1]}, "hash_ids"),
        ({"timestamp": 0, "input_length": 10, "output_length": 1, "hash_ids": ["a"]}, "hash_ids"),
        ({"timestamp": 0, "input_length": 10, "output_length": 1, "hash_ids": [2**40]}, "hash_ids"),
    ],
)
def test_malformed_line_names_its_number(
    tmp_path: Path, row: dict[str, object] | str, needle: str
) -> None:
    path = _write(tmp_path / "bad.jsonl", [ROWS[0], "", ROWS[1], row, ROWS[2]])
    with pytest.raises(TraceError, match="line 4") as e:
        read_mooncake(path)
    assert needle in str(e.value)
    assert isinstance(e.value, HybridKVError)


def test_bounds_and_missing_file(tmp_path: Path) -> None:
    long = _write(tmp_path / "long.jsonl", [ROWS[0], ROWS[1]])
    with pytest.raises(TraceError, match="line 1: longer than 50 bytes"):
        read_mooncake(long, max_line_bytes=50)
    with pytest.raises(TraceError, match="no trace file"):
        read_mooncake(tmp_path / "none.jsonl")
    with pytest.raises(TraceError, match="no request"):
        read_mooncake(_write(tmp_path / "empty.jsonl", [""]))


def test_window_first_n_and_time_scale(tmp_path: Path) -> None:
    path = _write(tmp_path / "t.jsonl", ROWS)
    w = read_mooncake(path, window=TraceWindow(start_s=1.0, end_s=4.0))
    assert w.prompt_lens.tolist() == [600, 512]
    assert w.arrival.tolist() == [0.5, 1.5]  # rebased to the window start
    first = read_mooncake(path, window=TraceWindow(max_requests=2))
    assert first.prompt_lens.tolist() == [1000, 600]
    both = read_mooncake(path, window=TraceWindow(start_s=1.0, max_requests=1))
    assert both.prompt_lens.tolist() == [600]
    fast = read_mooncake(path, window=TraceWindow(time_scale=0.5))
    assert fast.arrival.tolist() == [0.0, 0.75, 1.25, 2.0]
    # The same through the resolver ``simulate --trace`` uses.
    via = open_trace(str(path), window=TraceWindow(start_s=1.0, end_s=4.0, time_scale=2.0))
    assert via.arrival.tolist() == [1.0, 3.0]
    with pytest.raises(TraceError, match="no request"):
        read_mooncake(path, window=TraceWindow(start_s=100.0))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"start_s": -1.0},
        {"end_s": float("nan")},
        {"start_s": 5.0, "end_s": 5.0},
        {"max_requests": 0},
        {"max_requests": 2.5},
        {"time_scale": 0.0},
        {"time_scale": float("inf")},
    ],
)
def test_bad_windows_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(TraceError):
        TraceWindow(**kwargs)  # type: ignore[arg-type]


def test_window_keeps_whole_sessions_of_closed_loop_traces() -> None:
    t = make_chat(seed=4, conversations=30)
    w = t.windowed(TraceWindow(start_s=1.0, end_s=2.0))
    roots = t.parent < 0
    picked = roots & (t.arrival >= 1.0) & (t.arrival < 2.0)
    # Every turn of a picked conversation, nothing else.
    sessions = np.cumsum(roots) - 1
    want = np.isin(sessions, sessions[picked])
    assert w.num_requests == int(want.sum())
    assert w.prompt_lens.tolist() == t.prompt_lens[want].tolist()
    assert np.all(w.arrival[w.parent >= 0] == t.arrival[want][t.parent[want] >= 0])
    assert np.all(w.parent < np.arange(w.num_requests))
    # A child's prompt still starts with its parent's prompt and output.
    child = int(np.flatnonzero(w.parent >= 0)[0])
    par = int(w.parent[child])
    head = np.concatenate([w.prompt_tokens(par), w.output_tokens(par)])
    assert np.array_equal(w.prompt_tokens(child)[: head.shape[0]], head)
    # First N keeps parents before children; scaling scales the think delays too.
    n = t.windowed(TraceWindow(max_requests=7, time_scale=3.0))
    assert n.num_requests == 7
    assert np.allclose(n.arrival, t.arrival[:7] * 3.0)


_DIGEST = """
import hashlib, sys
from hybridkv.mooncake_trace import read_mooncake
t = read_mooncake(sys.argv[1])
h = hashlib.sha256()
for i in range(t.num_requests):
    h.update(t.prompt_tokens(i).tobytes()); h.update(t.output_tokens(i).tobytes())
print(h.hexdigest())
"""


def test_tokens_do_not_depend_on_pythonhashseed(tmp_path: Path) -> None:
    path = _write(tmp_path / "t.jsonl", ROWS)
    digests = set()
    for seed in ("0", "1", "12345"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        out = subprocess.run(
            [sys.executable, "-c", _DIGEST, str(path)],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        digests.add(out.stdout.strip())
    assert len(digests) == 1


def test_simulate_cli_reads_a_mooncake_file(tmp_path: Path) -> None:
    path = _write(tmp_path / "t.jsonl", ROWS)
    cmd = [
        sys.executable,
        "-m",
        "hybridkv.cli",
        "simulate",
        "--model",
        "qwen3.5-4b",
        "--memory",
        "8GiB",
        "--trace",
        str(path),
        "--layout",
        "static",
        "--trace-max-requests",
        "3",
        "--time-scale",
        "2",
        "--json",
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    rep = json.loads(out.stdout)
    assert rep["trace"]["requests"] == 3
    # Requests 1 and 2 share block 7 with request 0: (512 + 512) of 2112 prompt tokens
    # for an infinite cache (request 2's hit stops at prompt - 1 = 511 -> 496 tokens).
    assert rep["ideal_hit_rate"] == pytest.approx((512 + 496) / 2112)
    assert rep["layouts"]["static"]["requests"] == 3
    assert rep["measured"]["sim_requests_per_wall_s"] > 0
    bad = _write(tmp_path / "bad.jsonl", [ROWS[0], "{oops"])
    err = subprocess.run(
        [*cmd[:9], str(bad), "--json"], capture_output=True, text=True, check=False
    )
    assert err.returncode != 0
    assert "line 2" in err.stderr and "Traceback" not in err.stderr
    assert len(err.stderr.strip().splitlines()) == 1
