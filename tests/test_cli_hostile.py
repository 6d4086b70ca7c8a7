"""The CLI under hostile inputs (issue 15 item 9): every bad value, file or number is
one line on stderr and a non-zero exit, within seconds, never a traceback or a hang."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hybridkv.cli import main
from hybridkv.models.registry import CONFIG_DIR
from hybridkv.serving.traces import make_agentic

MODEL = "bamba-9b"
PLAN = ["plan", "--model", MODEL, "--memory", "16GiB"]
SIM = ["simulate", "--model", MODEL, "--memory", "16GiB", "--trace", "chat", "--no-progress"]
SECONDS = 15.0  # CPU seconds (not wall: shared machines are loaded); each attack used to take minutes or hang


def _config() -> dict:  # type: ignore[type-arg]
    config: dict = json.loads((CONFIG_DIR / MODEL / "config.json").read_text())  # type: ignore[type-arg]
    return config


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The hostile files, made once."""
    d = tmp_path_factory.mktemp("hostile")
    out: dict[str, str] = {}

    def put(name: str, text: str | bytes) -> None:
        p = d / name
        p.write_bytes(text.encode() if isinstance(text, str) else text)
        out[name] = str(p)

    put("nested_list.json", "[" * 200_000 + "]" * 200_000)
    put("nested_obj.json", '{"a":' * 100_000 + "1" + "}" * 100_000)
    text = json.dumps(_config())
    put("bigint.json", text.replace('"vocab_size": ', '"vocab_size": ' + "9" * 5000 + ', "x": '))
    for n in (10**7, 10**12, 10**18):
        put(f"layers_{n}.json", json.dumps({**_config(), "num_hidden_layers": n}))
    put("not_json.json", "{not json")
    put("binary.json", b"\xff\xfe\x00garbage")
    put("list.json", "[1, 2, 3]")
    put("empty.json", "")
    sparse = d / "sparse.json"
    with open(sparse, "wb") as f:
        f.truncate(8 << 30)  # an 8 GB config file (sparse: no disk used)
    out["sparse.json"] = str(sparse)
    (d / "dir.png").mkdir()
    out["dir.png"] = str(d / "dir.png")
    fifo = d / "fifo.json"
    os.mkfifo(fifo)
    out["fifo.json"] = str(fifo)
    # A hybridkv trace gzip bomb: 600 MiB of zeros in well under 1 MiB.
    with gzip.open(d / "bomb.json.gz", "wb", compresslevel=1) as f:
        zeros = b"\0" * (1 << 20)
        for _ in range(600):
            f.write(zeros)
    out["bomb.json.gz"] = str(d / "bomb.json.gz")
    # A Mooncake gzip bomb of newlines (read line by line it took minutes).
    with gzip.open(d / "bomb.jsonl.gz", "wb", compresslevel=1) as f:
        f.write(b"\n" * (64 << 20))
    out["bomb.jsonl.gz"] = str(d / "bomb.jsonl.gz")
    put("nested.jsonl", "[" * 100_000 + "]" * 100_000 + "\n")
    put("trace_nested.json", "[" * 200_000 + "]" * 200_000)
    trace = make_agentic(sessions=1).to_dict()
    for key in ("-1", "999999", "1e3"):
        bad = json.loads(json.dumps(trace))
        seg = bad["segments"]
        seg["tokens"] = {key: [1] * int(seg["length"][-1])}
        put(f"trace_segkey_{key}.json", json.dumps(bad))
    return out


def _attacks() -> list[tuple[str, list[str], str]]:
    """(id, argv with {file} placeholders, a word the message must hold)."""
    cfg = ["plan", "--memory", "16GiB", "--config"]
    sim_trace = ["simulate", "--model", MODEL, "--memory", "16GiB", "--no-progress", "--trace"]
    return [
        ("config-nested-list", [*cfg, "{nested_list.json}"], "nested"),
        ("config-nested-object", [*cfg, "{nested_obj.json}"], "nested"),
        ("config-5000-digit-int", [*cfg, "{bigint.json}"], "digits"),
        ("config-1e7-layers", [*cfg, "{layers_10000000.json}"], "layers"),
        ("config-1e12-layers", [*cfg, "{layers_1000000000000.json}"], "layers"),
        ("config-1e18-layers", [*cfg, "{layers_1000000000000000000.json}"], "layers"),
        ("config-8GB", [*cfg, "{sparse.json}"], "bytes"),
        ("config-fifo", [*cfg, "{fifo.json}"], "config file"),
        ("config-missing", [*cfg, "/nonexistent/dir/config.json"], "config"),
        ("config-not-json", [*cfg, "{not_json.json}"], "JSON"),
        ("config-binary", [*cfg, "{binary.json}"], "config"),
        ("config-a-list", [*cfg, "{list.json}"], "object"),
        ("config-empty", [*cfg, "{empty.json}"], "JSON"),
        ("config-dev-zero", [*cfg, "/dev/zero"], "config file"),
        ("memory-1e400", [*PLAN[:-1], "1e400"], "--memory"),
        ("memory-nan", [*PLAN[:-1], "nan"], "--memory"),
        ("memory-inf", [*PLAN[:-1], "inf"], "--memory"),
        ("memory-5000-digits", [*PLAN[:-1], "9" * 5000], "8 EiB"),
        ("memory-2**63", [*PLAN[:-1], str(2**63)], "8 EiB"),
        ("max-num-seqs-5000-digits", [*PLAN, "--max-num-seqs", "9" * 5000], "--max-num-seqs"),
        ("max-num-seqs-1e18", [*PLAN, "--max-num-seqs", str(10**18)], "short by"),
        ("max-model-len-nan", [*PLAN, "--max-model-len", "nan"], "--max-model-len"),
        ("block-size-1e18", [*PLAN, "--block-size", str(10**18)], "short by"),
        ("kv-dtype-5000-digits", [*PLAN, "--kv-dtype", "9" * 5000], "--kv-dtype"),
        ("tp-1e18", [*PLAN, "--tp", str(10**18)], "tp"),
        ("tp-negative", [*PLAN, "--tp", "-3"], "--tp"),
        ("state-cache-slots-1e18", [*PLAN, "--state-cache-slots", str(10**18)], "short by"),
        ("simulate-memory-1e400", [*SIM[:4], "1e400", *SIM[5:]], "--memory"),
        ("simulate-seed--1", [*SIM, "--seed", "-1"], "--seed"),
        ("simulate-num-gpus-1e400", [*SIM, "--num-gpus", "1e400"], "--num-gpus"),
        ("simulate-num-gpus-1e18", [*SIM, "--num-gpus", str(10**18)], "--num-gpus"),
        ("simulate-num-gpus-nan", [*SIM, "--num-gpus", "nan"], "--num-gpus"),
        ("simulate-plot-missing-dir", [*SIM, "--plot", "/nonexistent/dir/x.png"], "--plot"),
        ("simulate-plot-a-directory", [*SIM, "--plot", "{dir.png}"], "--plot"),
        ("simulate-offload-empty", [*SIM, "--offload", ""], "offload"),
        ("simulate-offload-blank", [*SIM, "--offload", " , "], "offload"),
        ("simulate-offload-bad-size", [*SIM, "--offload", "cpu:1e400GiB"], "size"),
        ("simulate-time-scale-nan", [*SIM, "--time-scale", "nan"], "--time-scale"),
        ("simulate-trace-start-inf", [*SIM, "--trace-start", "inf"], "--trace-start"),
        ("simulate-max-model-len-1e18", [*SIM, "--max-model-len", str(10**18)], "max_model_len"),
        ("trace-missing", [*sim_trace, "/nonexistent/trace.json"], "trace"),
        ("trace-gzip-bomb", [*sim_trace, "{bomb.json.gz}"], "decompresses"),
        ("trace-mooncake-newline-bomb", [*sim_trace, "{bomb.jsonl.gz}"], "blank lines"),
        ("trace-mooncake-nested-line", [*sim_trace, "{nested.jsonl}"], "nested"),
        ("trace-nested", [*sim_trace, "{trace_nested.json}"], "nested"),
        ("trace-segment-key--1", [*sim_trace, "{trace_segkey_-1.json}"], "segment"),
        ("trace-segment-key-huge", [*sim_trace, "{trace_segkey_999999.json}"], "segment"),
        ("trace-segment-key-float", [*sim_trace, "{trace_segkey_1e3.json}"], "malformed"),
        ("trace-fifo", [*sim_trace, "{fifo.json}"], "trace"),
        ("unknown-subcommand", ["explode"], "invalid choice"),
        ("models-bad-flag", ["models", "--jsn"], "unrecognized"),
    ]


@pytest.mark.parametrize(
    ("argv", "needle"), [a[1:] for a in _attacks()], ids=[a[0] for a in _attacks()]
)
def test_hostile_input_is_one_line_and_a_nonzero_exit(
    files: dict[str, str], argv: list[str], needle: str, capsys: pytest.CaptureFixture[str]
) -> None:
    args = [files[a[1:-1]] if a.startswith("{") and a.endswith("}") else a for a in argv]
    start = time.process_time()
    code = main(args)
    elapsed = time.process_time() - start
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert code != 0, out[-500:]
    assert len(lines) == 1, err[-2000:]
    assert "Traceback" not in err and "internal error" not in err, lines[0]
    assert needle.lower() in lines[0].lower(), lines[0]
    assert elapsed < SECONDS, f"{elapsed:.1f}s"


@pytest.mark.parametrize(
    "argv",
    [
        ["plan", "--memory", "16GiB", "--config", "{nested_list.json}"],
        ["plan", "--memory", "16GiB", "--config", "{sparse.json}"],
        ["plan", "--memory", "16GiB", "--config", "{layers_1000000000000000000.json}"],
        ["plan", "--model", MODEL, "--memory", "1e400"],
        ["simulate", "--model", MODEL, "--memory", "16GiB", "--trace", "{bomb.json.gz}"],
    ],
    ids=["nested", "8GB", "1e18-layers", "memory-1e400", "gzip-bomb"],
)
def test_the_installed_command_prints_no_traceback(
    files: dict[str, str], argv: list[str], tmp_path: Path
) -> None:
    """The real entry point, in its own process: one line, exit 2, bounded time."""
    args = [files[a[1:-1]] if a.startswith("{") else a for a in argv]
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "hybridkv.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert time.monotonic() - start < 60
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr


def test_an_unexpected_bug_is_still_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Defence in depth: an exception no validator foresaw is one line and exit 1."""
    import hybridkv.cli as cli

    def broken(args: object) -> int:
        raise IndexError("index 7 is out of bounds")

    monkeypatch.setattr(cli, "run_models", broken)
    monkeypatch.delenv("HYBRIDKV_TRACEBACK", raising=False)
    assert main(["models"]) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    assert "internal error (IndexError: index 7 is out of bounds)" in err


def test_plot_is_checked_before_the_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Before: a missing --plot directory failed only after the whole simulation."""
    start = time.monotonic()
    code = main([*SIM, "--trace", "agentic", "--plot", str(tmp_path / "no" / "x.png")])
    assert code == 2 and time.monotonic() - start < 2.0
    assert "does not exist" in capsys.readouterr().err
