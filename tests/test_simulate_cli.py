"""``hybridkv simulate`` command line: bad arguments give one line on stderr and exit 2."""

from __future__ import annotations

import subprocess
import sys

import pytest
from hybridkv.cli import main

BASE = ["simulate", "--model", "qwen3-next-80b-a3b", "--memory", "8GiB", "--trace", "chat"]


def _replace(flag: str, value: str) -> list[str]:
    args = list(BASE)
    args[args.index(flag) + 1] = value
    return args


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["simulate", "--model", "qwen3-next-80b-a3b", "--memory", "8GiB"], "--trace"),
        (_replace("--memory", "lots"), "invalid size"),
        (_replace("--memory", "0"), "size"),
        (_replace("--model", "no-such-model"), "no-such-model"),
        (_replace("--trace", "no-such-trace"), "no-such-trace"),
        ([*BASE, "--layout", "paged"], "--layout"),
        ([*BASE, "--max-num-seqs", "0"], "--max-num-seqs"),
        ([*BASE, "--max-num-batched-tokens", "x"], "--max-num-batched-tokens"),
        ([*BASE, "--gpu", "tpu-v9"], "--gpu"),
        ([*BASE, "--plot", "out.svg"], ".png"),
        ([*BASE, "--seed", "3", "--trace", "/tmp/x.json"], "--seed"),
        (_replace("--memory", "1MiB"), "short by"),  # the bounded pools do not fit
        ([*BASE, "--max-model-len", "64"], "max_model_len"),  # trace requests are longer
        ([*BASE, "--state-cache-slots", "-1"], "--state-cache-slots"),
        ([*BASE, "--state-cache-slots", "many"], "--state-cache-slots"),
        ([*BASE, "--mamba-cache-mode", "all", "--state-cache-slots", "2"], "state_cache_slots"),
        # An 80B bf16 model beside 8 GiB of KV cannot run on one 80 GB H100.
        ([*BASE, "--num-gpus", "1"], "does not fit on 1 x NVIDIA H100 SXM"),
        ([*BASE, "--num-gpus", "0"], "--num-gpus"),
        ([*BASE, "--trace-start", "-3"], "--trace-start"),
        ([*BASE, "--trace-end", "nan"], "--trace-end"),
        ([*BASE, "--trace-start", "9", "--trace-end", "2"], "after its start"),
        ([*BASE, "--trace-start", "1e9"], "no request in the window"),
        ([*BASE, "--trace-max-requests", "0"], "--trace-max-requests"),
        ([*BASE, "--time-scale", "0"], "--time-scale"),
        ([*BASE, "--time-scale", "inf"], "--time-scale"),
        ([*BASE, "--sharegpt-sessions", "3"], "--trace sharegpt"),
        (_replace("--trace", "/no/such/trace.jsonl"), "no trace file"),
        ([*BASE, "--seed", "-1"], "--seed"),
    ],
)
def test_bad_arguments_one_line_exit_2(
    argv: list[str], needle: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert err.count("\n") == 0, err
    assert err.startswith("hybridkv simulate: error:") or err.startswith("hybridkv: error:")
    assert needle in err
    assert "Traceback" not in captured.err + captured.out


def test_entry_point_reports_without_traceback() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "hybridkv.cli", *_replace("--memory", "12 parsecs")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0
    assert "Traceback" not in proc.stderr
