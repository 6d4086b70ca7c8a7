"""``hybridkv simulate --offload``: external hits per tier, and across a restart."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hybridkv.cli import main
from hybridkv.traces import make_agentic


@pytest.fixture(scope="module")
def small_trace(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("trace") / "agentic-small.json.gz"
    make_agentic(sessions=4).save(path)
    return str(path)


def simulate(trace: str, offload: str, capsys: pytest.CaptureFixture[str]) -> dict:  # type: ignore[type-arg]
    code = main(
        ["simulate", "--model", "qwen3-next-80b-a3b", "--memory", "16GiB", "--trace", trace,
         "--layout", "static", "--no-progress", "--json", "--offload", offload,
         "--offload-weights", "test-weights"]
    )  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0
    report: dict = json.loads(out)["layouts"]["static"]  # type: ignore[type-arg]
    return report


def test_restarted_simulation_hits_the_disk_tier(
    small_trace: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = f"cpu:1GiB,disk:{tmp_path}:10GiB"
    first = simulate(small_trace, spec, capsys)
    off = first["offload"]
    assert off["stored_blocks"] > 0 and off["load_mismatches"] == 0
    assert [t["kind"] for t in off["tiers"]] == ["cpu", "disk"]
    again = simulate(small_trace, spec, capsys)
    off2 = again["offload"]
    assert again["external_hit_tokens"] > 0
    assert off2["external_tokens_loaded"] == again["external_hit_tokens"]
    assert off2["load_mismatches"] == 0
    assert off2["tier_share"]["disk"] > 0  # RAM was empty after the restart
    assert again["prefix_hit_rate"] > first["prefix_hit_rate"]


def test_bad_offload_spec_is_a_one_line_error(
    small_trace: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        ["simulate", "--model", "qwen3-next-80b-a3b", "--memory", "16GiB", "--trace",
         small_trace, "--offload", "floppy:1MiB"]
    )  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and "floppy" in err
