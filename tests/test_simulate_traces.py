"""Traces: deterministic tokens, real prefix sharing, the file format, bundled files."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest
from hybridkv.errors import InvalidArgumentError
from hybridkv.traces import (
    GENERATORS,
    Trace,
    TraceBuilder,
    TraceError,
    list_traces,
    load_trace,
    synth_tokens,
)
from hypothesis import given
from hypothesis import strategies as st


def test_synth_tokens_pinned_and_prefix_stable() -> None:
    # Pinned values: a change of the generator would silently change every trace.
    assert synth_tokens(7, 5).tolist() == synth_tokens(7, 5).tolist()
    golden = synth_tokens(12345, 6, 32000).tolist()
    assert golden == [8173, 2367, 16504, 4981, 27875, 21187]
    long = synth_tokens(3, 1000)
    assert np.array_equal(long[:10], synth_tokens(3, 10))
    assert long.dtype == np.int32 and long.min() >= 1 and long.max() < 32000
    assert not np.array_equal(synth_tokens(3, 50), synth_tokens(4, 50))


@pytest.mark.parametrize("bad", [(-1, 4, 100), (1, -1, 100), (1, 4, 1)])
def test_synth_tokens_rejects_bad_args(bad: tuple[int, int, int]) -> None:
    with pytest.raises(InvalidArgumentError):
        synth_tokens(*bad)


def test_bundled_traces_match_a_fresh_generation(tmp_path: Path) -> None:
    assert set(list_traces()) == set(GENERATORS)
    for name, make in GENERATORS.items():
        fresh = tmp_path / f"{name}.json.gz"
        make().save(fresh)
        bundled = (
            Path(__file__).parents[1] / "python/hybridkv/serving/data/traces" / f"{name}.json.gz"
        )
        assert fresh.read_bytes() == bundled.read_bytes(), f"{name}: rerun scripts/make_traces.py"


@pytest.mark.parametrize("name", sorted(GENERATORS))
def test_bundled_traces_share_prefixes_and_chain_turns(name: str) -> None:
    t = load_trace(name)
    assert t.num_requests > 50
    lens = t.prompt_lens
    for i in range(t.num_requests):
        assert t.prompt_tokens(i).shape == (lens[i],)
    # Real sharing: many requests start with the same first 256 tokens.
    heads = {t.prompt_tokens(i)[:256].tobytes() for i in range(t.num_requests)}
    assert len(heads) < t.num_requests / 4
    # A closed-loop child's prompt begins with its parent's prompt and output.
    child = int(np.flatnonzero(t.parent >= 0)[0])
    parent = int(t.parent[child])
    prefix = np.concatenate([t.prompt_tokens(parent), t.output_tokens(parent)])
    assert np.array_equal(t.prompt_tokens(child)[: prefix.shape[0]], prefix)


def test_round_trip_plain_and_gz_with_literal_segments(tmp_path: Path) -> None:
    b = TraceBuilder("t", "d", seed=5, vocab_size=1000)
    s = b.segment(40)
    i, out = b.request([s], 8, arrival=0.5)
    b.request([s, out], 3, arrival=1.0, parent=i, priority=2)
    t = b.build()
    d = t.to_dict()
    d["segments"]["length"][0] = 3
    d["segments"]["tokens"] = {"0": [5, 6, 7]}
    lit = Trace.from_dict(d)
    assert lit.prompt_tokens(0).tolist() == [5, 6, 7]
    for suffix in (".json", ".json.gz"):
        p = tmp_path / f"x{suffix}"
        lit.save(p)
        back = load_trace(str(p))
        assert back.to_dict() == lit.to_dict()
        assert back.prompt_tokens(1).tolist() == [5, 6, 7, *lit.output_tokens(0).tolist()]
        assert back.priority.tolist() == [0, 2]


def _bad(d: dict, path: list[str], value: object) -> dict:  # type: ignore[type-arg]
    d = json.loads(json.dumps(d))
    node = d
    for k in path[:-1]:
        node = node[k]
    node[path[-1]] = value
    return d


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (["format"], "other/1"),
        (["requests", "parent"], [1, -1]),  # a parent must come earlier
        (["requests", "output"], [0, 99]),  # no such segment
        (["requests", "prompt"], [[0], []]),  # empty prompt
        (["requests", "arrival"], [0.0, -1.0]),
        (["segments", "length"], [40, 0, 3]),  # zero output tokens
        (["segments", "tokens"], {"0": [1, 2]}),  # literal of the wrong length
        (["segments"], "nope"),
    ],
)
def test_malformed_traces_raise_trace_error(path: list[str], value: object) -> None:
    b = TraceBuilder("t", "d", seed=5, vocab_size=1000)
    s = b.segment(40)
    i, _ = b.request([s], 8, arrival=0.0)
    b.request([s], 3, arrival=1.0, parent=i)
    d = b.build().to_dict()
    with pytest.raises(TraceError):
        Trace.from_dict(_bad(d, path, value))


def test_load_trace_errors(tmp_path: Path) -> None:
    with pytest.raises(TraceError, match="bundled traces are"):
        load_trace("no-such-trace")
    p = tmp_path / "x.json.gz"
    p.write_bytes(gzip.compress(b"[1, 2]"))
    with pytest.raises(TraceError, match="one JSON object"):
        load_trace(str(p))
    p.write_bytes(b"\x1f\x8bnot gzip")
    with pytest.raises(TraceError):
        load_trace(str(p))
    assert issubclass(TraceError, InvalidArgumentError)


@given(st.integers(0, 50), st.sampled_from(sorted(GENERATORS)))
def test_generators_are_deterministic_and_valid(seed: int, name: str) -> None:
    a = GENERATORS[name](seed=seed)
    b = GENERATORS[name](seed=seed)
    assert a.to_dict() == b.to_dict()
    assert np.all(a.output_lens >= 1) and np.all(a.prompt_lens >= 1)
