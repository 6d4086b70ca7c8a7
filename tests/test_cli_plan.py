"""`hybridkv plan` / `hybridkv models` and size parsing."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from hybridkv.cli import main
from hybridkv.errors import InvalidArgumentError
from hybridkv.models import list_models
from hybridkv.units import format_bytes, parse_size

GIB = 1 << 30


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("70GiB", 70 * GIB),
        ("60GB", 60 * 10**9),
        ("512MiB", 512 << 20),
        ("123456", 123456),
        ("1.5GiB", 3 * GIB // 2),
        ("2 gib", 2 * GIB),
        ("8KB", 8000),
        ("1TiB", 1 << 40),
        ("7b", 7),
    ],
)
def test_parse_size(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "GiB", "-1GiB", "0", "1.2.3GB", "12XB", "0.1B", "1e9"])
def test_parse_size_rejects(text: str) -> None:
    with pytest.raises(InvalidArgumentError):
        parse_size(text)


def test_format_bytes() -> None:
    assert format_bytes(512) == "512 B"
    assert format_bytes(3 * GIB // 2) == "1.50 GiB"


def test_plan_json(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["plan", "--model", "qwen3-next-80b-a3b", "--memory", "60GiB", "--json"])
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    assert out["memory_bytes"] == 60 * GIB
    for key in ("token_capacity", "max_concurrency", "unused_bytes", "groups"):
        assert key in out
    vb = out["vllm_baseline"]
    assert 0 < vb["token_capacity"] <= out["token_capacity"]
    assert vb["equal_split_token_capacity"] == vb["num_blocks"] // vb["num_groups"] * 544
    assert vb["boot_log_token_capacity"] > vb["equal_split_token_capacity"]
    kinds = sorted(g["kind"] for g in out["groups"])
    assert kinds == ["full_attention", "state"]
    for g in out["groups"]:
        assert g["slot_address_space"] == g["num_blocks"] * g["block_size"]
        for key in ("layers", "page_size_bytes", "bytes"):
            assert key in g


def test_plan_flags_reach_the_plan(capsys: pytest.CaptureFixture[str]) -> None:
    args = [
        "plan",
        "--model",
        "gemma-3-27b-it",
        "--memory",
        "80GB",
        "--max-num-seqs",
        "32",
        "--max-model-len",
        "16384",
        "--max-num-batched-tokens",
        "4096",
        "--block-size",
        "32",
        "--kv-dtype",
        "fp8",
        "--tp",
        "2",
        "--mamba-cache-mode",
        "none",
        "--bounded-sizing",
        "per_request",
        "--json",
    ]
    assert main(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["memory_bytes"] == 80 * 10**9
    assert (out["max_num_seqs"], out["max_model_len"], out["block_size"]) == (32, 16384, 32)
    assert out["max_num_batched_tokens"] == 4096 and out["mamba_cache_mode"] == "none"
    sw = out["groups"][0]
    assert sw["spec"]["num_kv_heads"] == 8 and sw["spec"]["dtype"] == "fp8"
    # Elastic (the default): the bounded size is the group's floor; its num_blocks is
    # its view of the whole arena.
    per_request = 32 * (-(-(1023 + 4096) // 32) + 1)
    assert sw["floor_blocks"] == per_request
    assert sw["num_blocks"] == out["memory_bytes"] // sw["page_size_bytes"]
    assert out["layout"] == "elastic" and out["elastic_bytes"] > 0
    assert main([*args[:-1], "--layout", "static", "--json"]) == 0
    static = json.loads(capsys.readouterr().out)
    assert static["groups"][0]["num_blocks"] == per_request + 1
    assert static["groups"][0]["floor_blocks"] == per_request and static["elastic_bytes"] == 0


def test_plan_state_cache_slots_flag(capsys: pytest.CaptureFixture[str]) -> None:
    base = ["plan", "--model", "qwen3-next-80b-a3b", "--memory", "60GiB", "--json"]
    assert main(base) == 0
    old = json.loads(capsys.readouterr().out)
    assert old["state_cache_slots"] == 0
    assert main([*base, "--state-cache-slots", "32"]) == 0
    new = json.loads(capsys.readouterr().out)
    assert new["state_cache_slots"] == 32
    for a, b in zip(old["groups"], new["groups"], strict=True):
        extra = 32 if a["kind"] == "state" else 0
        if not a["grows"]:
            assert b["floor_blocks"] == a["floor_blocks"] + extra
    state_pages = sum(g["page_size_bytes"] for g in old["groups"] if g["kind"] == "state")
    assert new["bounded_bytes"] == old["bounded_bytes"] + 32 * state_pages
    assert new["token_capacity"] < old["token_capacity"]
    assert main([*base[:-1], "--state-cache-slots", "32"]) == 0
    assert "state cache slots: 32" in capsys.readouterr().out


def test_plan_custom_bytes_and_config_path(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    from hybridkv.models.registry import CONFIG_DIR

    cfg = tmp_path / "config.json"
    cfg.write_text((CONFIG_DIR / "llama-3.1-8b" / "config.json").read_text())
    assert (
        main(["plan", "--config", str(cfg), "--memory", "10GiB", "--kv-dtype", "131", "--json"])
        == 0
    )
    out = json.loads(capsys.readouterr().out)
    assert out["groups"][0]["page_size_bytes"] == 32 * 16 * 131


def test_plan_table(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["plan", "--model", "whisper-large-v3", "--memory", "8GiB", "--max-model-len", "448"]
    assert main([*argv, "--max-num-seqs", "16"]) == 0
    out = capsys.readouterr().out
    assert "token capacity" in out and "cross_attention" in out and "encoder-only" in out
    assert "vLLM 0.33 baseline" in out and "boot log prints" in out


def test_models(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in rows] == list(list_models())
    assert main(["models"]) == 0
    assert "qwen3-next-80b-a3b" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["bogus"],
        ["plan", "--memory", "60GiB"],
        ["plan", "--model", "qwen3-next-80b-a3b"],
        ["plan", "--model", "qwen3-next-80b-a3b", "--memory", "lots"],
        ["plan", "--model", "qwen3-next-80b-a3b", "--memory", "-5GiB"],
        ["plan", "--model", "qwen3-next-80b-a3b", "--memory", "60GiB", "--max-num-seqs", "0"],
        ["plan", "--model", "qwen3-next-80b-a3b", "--memory", "60GiB", "--block-size", "x"],
        ["plan", "--model", "qwen3-next-80b-a3b", "--memory", "60GiB", "--kv-dtype", "int3"],
        ["plan", "--model", "qwen3-next-80b-a3b", "--memory", "60GiB", "--kv-dtype", "0"],
        ["plan", "--model", "qwen3-next-80b-a3b", "--memory", "60GiB", "--tp", "3"],
        ["plan", "--model", "qwen3-next-80b-a3b", "--memory", "60GiB", "--mamba-cache-mode", "x"],
        ["plan", "--model", "no-such-model", "--memory", "60GiB"],
        ["plan", "--model", "qwen3-next-80b-a3b", "--memory", "1MiB"],
        ["plan", "--model", "a", "--config", "b", "--memory", "1GiB"],
        ["plan", "--config", "/nonexistent/config.json", "--memory", "1GiB"],
        ["plan", "--model", "qwen3-next-80b-a3b", "--memory", "60GiB", "--state-cache-slots", "-1"],
        ["plan", "--model", "qwen3-next-80b-a3b", "--memory", "60GiB", "--state-cache-slots", "x"],
        [
            "plan",
            "--model",
            "qwen3-next-80b-a3b",
            "--memory",
            "60GiB",
            "--mamba-cache-mode",
            "all",
            "--state-cache-slots",
            "1",
        ],
        [
            "plan",
            "--model",
            "qwen3-next-80b-a3b",
            "--memory",
            "4GiB",
            "--state-cache-slots",
            "9999",
        ],
    ],
)
def test_bad_arguments_exit_2_with_one_line(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and "error" in lines[0]
    assert "Traceback" not in captured.err


def test_console_script_in_venv() -> None:
    script = Path(sys.executable).parent / "hybridkv"
    ok = subprocess.run(
        [str(script), "plan", "--model", "qwen3-next-80b-a3b", "--memory", "60GiB", "--json"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["token_capacity"] > 0
    bad = subprocess.run(
        [str(script), "plan", "--model", "qwen3-next-80b-a3b", "--memory", "sixty"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert bad.returncode == 2
    assert len(bad.stderr.strip().splitlines()) == 1 and "Traceback" not in bad.stderr
