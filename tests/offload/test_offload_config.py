"""The ``--offload`` spec string and size parsing."""

from __future__ import annotations

import pytest
from hybridkv.errors import HybridKVError, OffloadConfigError
from hybridkv.offload import (
    CpuTierConfig,
    DiskTierConfig,
    OffloadConfig,
    RedisTierConfig,
    parse_offload_spec,
    parse_size,
)


def test_issue_example_parses_in_order() -> None:
    cfg = parse_offload_spec("cpu:8GiB,disk:/path:100GiB,redis://127.0.0.1:6379")
    assert cfg.tiers == (
        CpuTierConfig(budget_bytes=8 << 30),
        DiskTierConfig(path="/path", budget_bytes=100 << 30),
        RedisTierConfig(url="redis://127.0.0.1:6379", budget_bytes=None),
    )
    assert cfg.write_policy == "write-through"
    assert [t.kind for t in cfg.tiers] == ["cpu", "disk", "redis"]


def test_write_back_and_redis_budget() -> None:
    cfg = parse_offload_spec("write-back, redis://h:6380/2:4GiB , cpu:512MiB")
    assert cfg.write_policy == "write-back"
    assert cfg.tiers[0] == RedisTierConfig(url="redis://h:6380/2", budget_bytes=4 << 30)
    assert cfg.tiers[1] == CpuTierConfig(budget_bytes=512 << 20)
    assert "write-back" in cfg.describe()


def test_disk_path_may_contain_colons() -> None:
    cfg = parse_offload_spec("disk:/mnt/a:b/c:10GB")
    assert cfg.tiers == (DiskTierConfig(path="/mnt/a:b/c", budget_bytes=10 * 10**9),)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("4096", 4096),
        ("1KiB", 1024),
        ("1k", 1024),
        ("2MB", 2_000_000),
        ("1.5GiB", 3 << 29),
        ("8G", 8 << 30),
        ("1TiB", 1 << 40),
        (" 3 mib ", 3 << 20),
    ],
)
def test_parse_size(text: str, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize(
    "spec",
    [
        "",
        "cpu:",
        "cpu:abc",
        "cpu:0",
        "cpu:-1GiB",
        "cpu:8XB",
        "disk:/x",
        "disk::1GiB",
        "floppy:1MiB",
        "cpu:1GiB,cpu:2GiB",
        "cpu:1GiB,,disk:/x:1GiB",
        "redis://h:99999",
        "redis://h:port",
        "redis://",
        "write-sideways",
    ],
)
def test_bad_specs_raise_named_error(spec: str) -> None:
    with pytest.raises(OffloadConfigError) as err:
        parse_offload_spec(spec)
    assert isinstance(err.value, HybridKVError)
    assert str(err.value)


def test_config_validation() -> None:
    with pytest.raises(OffloadConfigError):
        OffloadConfig(tiers=())
    with pytest.raises(OffloadConfigError):
        OffloadConfig(tiers=(CpuTierConfig(1),), write_policy="never")  # type: ignore[arg-type]
