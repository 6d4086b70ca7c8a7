"""Weights in the offload fingerprint (issue 15 item 12).

A model config does not identify the weights loaded with it. Before, the fingerprint
covered the config only, so a disk or Redis tier reused after a weights change (a
fine-tune, a new checkpoint, under the same config path) served the old model's blocks
unless the caller thought of passing ``extra``. Now the fingerprint takes ``weights``
(a revision or checksum) and every tier that outlives the process refuses a fingerprint
made without one: the connector, the tiers themselves and ``simulate --offload``.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from hybridkv.cache.manager import KVCacheManager
from hybridkv.cli import main
from hybridkv.errors import InvalidArgumentError, OffloadConfigError
from hybridkv.offload import (
    DiskTier,
    ModelFingerprint,
    RedisTier,
    model_fingerprint,
    parse_offload_spec,
    weights_checksum,
)
from hybridkv.offload.connector import OffloadConnector
from hybridkv.offload.pages import HostPages
from hybridkv.serving.traces import make_agentic
from offload_helpers import RedisServer, check_loaded, hybrid_plan, model_step

PROMPT = np.random.default_rng(12).integers(1, 1000, 1200).astype(np.int32)
DESC = {"name": "weights-test", "layers": 4}


def _serve(c: OffloadConnector, rid: int) -> None:
    """Compute and store ``PROMPT`` for ``rid`` (a chunk ending on the checkpoint)."""
    m = c.manager
    m.add_requests([rid], [PROMPT])
    done = 0
    for n in (1056, 144):
        assert m.allocate_slots([rid], [n])[0]
        model_step(m, c.pages, c.fingerprint, rid, done, done + n)
        done += n
        c.store([rid])
    c.flush()


def _external(c: OffloadConnector, rid: int) -> int:
    m = c.manager
    m.add_requests([rid], [PROMPT])
    dev = m.get_computed_tokens([rid])
    return int(c.lookup_external([rid], dev).external_tokens[0])


# ------------------------------------------------------------------ the fingerprint


def test_fingerprint_covers_the_weights() -> None:
    a = model_fingerprint(DESC, weights="rev-a")
    b = model_fingerprint(DESC, weights="rev-b")
    none = model_fingerprint(DESC)
    assert len({a, b, none}) == 3
    assert model_fingerprint(DESC, weights="rev-a") == a  # stable
    assert isinstance(a, ModelFingerprint) and isinstance(a, bytes) and len(a) == 16
    assert (a.weights, none.weights) == ("rev-a", None)
    # A weights identity is not the same thing as an extra field of the same text.
    assert model_fingerprint(DESC, extra={"weights": "rev-a"}) != a


def test_fingerprint_is_stable_across_processes_and_pickles() -> None:
    fp = model_fingerprint(DESC, weights="sha256:00ff")
    code = (
        "from hybridkv.offload import model_fingerprint;"
        f"print(model_fingerprint({DESC!r}, weights='sha256:00ff').hex())"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONHASHSEED": "123"},
    )
    assert out.stdout.strip() == fp.hex()
    back = pickle.loads(pickle.dumps(fp))
    assert back == fp and isinstance(back, ModelFingerprint) and back.weights == "sha256:00ff"


@pytest.mark.parametrize("bad", ["", "   ", "a\nb", "x" * 1025, 7, b"rev", ["rev"], True])
def test_bad_weights_identity_is_refused(bad: object) -> None:
    with pytest.raises(InvalidArgumentError, match="weights"):
        model_fingerprint(DESC, weights=bad)  # type: ignore[arg-type]


# ------------------------------------------------------------------ the persistent tiers


def test_disk_tier_refuses_a_fingerprint_without_weights(tmp_path: Path) -> None:
    with pytest.raises(OffloadConfigError, match="weights"):
        DiskTier(tmp_path / "cache", 1 << 20, model_fingerprint(DESC), fsync=False)
    assert not (tmp_path / "cache").exists()  # refused before anything was made
    # With weights, or a caller's own 16-byte digest, it opens.
    DiskTier(tmp_path / "cache", 1 << 20, model_fingerprint(DESC, weights="r"), fsync=False)
    DiskTier(tmp_path / "cache", 1 << 20, bytes(16), fsync=False)


def test_redis_tier_refuses_a_fingerprint_without_weights() -> None:
    with pytest.raises(OffloadConfigError, match="weights"):
        RedisTier("redis://127.0.0.1:1/0", model_fingerprint(DESC))
    with pytest.raises(InvalidArgumentError, match="16 bytes"):
        RedisTier("redis://127.0.0.1:1/0", b"short")
    RedisTier("redis://127.0.0.1:1/0", model_fingerprint(DESC, weights="r")).close()


# ------------------------------------------------------------------ the connector


@pytest.mark.parametrize("spec", ["disk:{dir}:64MiB", "cpu:1MiB,disk:{dir}:64MiB,write-back"])
def test_connector_refuses_a_persistent_tier_without_weights(tmp_path: Path, spec: str) -> None:
    plan = hybrid_plan()
    cfg = parse_offload_spec(spec.format(dir=tmp_path / "cache"))
    with pytest.raises(OffloadConfigError, match="weights"):
        OffloadConnector(KVCacheManager(plan), cfg, HostPages(plan), background=False)
    assert not (tmp_path / "cache").exists()
    # The caller's fingerprint from model_fingerprint without weights is refused too.
    with pytest.raises(OffloadConfigError, match="weights"):
        OffloadConnector(
            KVCacheManager(plan),
            cfg,
            HostPages(plan),
            fingerprint=model_fingerprint(plan),
            background=False,
        )
    with pytest.raises(InvalidArgumentError, match="not both"):
        OffloadConnector(
            KVCacheManager(plan),
            cfg,
            HostPages(plan),
            weights="r",
            fingerprint=bytes(16),
            background=False,
        )


def test_cpu_only_needs_no_weights() -> None:
    plan = hybrid_plan()
    c = OffloadConnector(
        KVCacheManager(plan), parse_offload_spec("cpu:64MiB"), HostPages(plan), background=False
    )
    _serve(c, 1)
    c.manager.free([1])
    c.manager.reset_prefix_cache()
    assert _external(c, 2) > 0
    c.close()


@pytest.mark.parametrize("tier", ["disk", "redis"])
def test_new_weights_never_see_old_blocks(
    tmp_path: Path, request: pytest.FixtureRequest, tier: str
) -> None:
    """The attack: serve with weights A, restart on the same tier with weights B under
    the same config. Before, B's lookups hit A's blocks; now they miss, and A's own
    restart still hits, byte-exact."""
    plan = hybrid_plan()
    if tier == "disk":
        spec = f"disk:{tmp_path}:64MiB"
    else:
        server: RedisServer = request.getfixturevalue("redis_server")
        spec = f"{server.url}:64MiB"
    cfg = parse_offload_spec(spec)
    tag = f"{tier}-{time.monotonic_ns()}"  # the Redis server is shared by the session

    def connector(weights: str) -> OffloadConnector:
        return OffloadConnector(
            KVCacheManager(plan, enable_prefix_caching=True),
            cfg,
            HostPages(plan),
            weights=weights,
            background=False,
        )

    first = connector(f"A-{tag}")
    _serve(first, 1)
    assert first.stats.stored_blocks > 0
    first.close()

    other = connector(f"B-{tag}")
    assert _external(other, 1) == 0
    found = other.lookup_external([1], [0])
    assert found.group_tokens.max() == 0  # no group sees a single block of A's
    other.close()

    same = connector(f"A-{tag}")
    x = _external(same, 1)
    assert x >= 1056
    m = same.manager
    assert m.allocate_slots([1], [x + 1])[0]
    written = same.load_scheduled([1], [0], [x + 1], [x])
    assert check_loaded(m, same.pages, same.fingerprint, 1, x, x + 1) == written > 0
    same.close()


# ------------------------------------------------------------------ weights_checksum


def test_weights_checksum_reads_the_weight_files(tmp_path: Path) -> None:
    d = tmp_path / "ckpt"
    d.mkdir()
    (d / "model-00001.safetensors").write_bytes(b"\x01" * 1000)
    (d / "model-00002.safetensors").write_bytes(b"\x02" * 1000)
    (d / "config.json").write_text("{}")
    base = weights_checksum(d)
    assert base.startswith("blake2b:") and weights_checksum(d) == base
    (d / "config.json").write_text('{"x": 1}')  # not a weight file
    assert weights_checksum(d) == base
    (d / "model-00002.safetensors").write_bytes(b"\x02" * 999 + b"\x03")  # one byte
    changed = weights_checksum(d)
    assert changed != base
    (d / "model-00002.safetensors").rename(d / "model-00003.safetensors")
    assert weights_checksum(d) not in (base, changed)
    one = weights_checksum(d / "model-00001.safetensors")
    assert one not in (base, changed)
    # A Hugging Face snapshot links into its blob store: links to files are followed.
    link = tmp_path / "snap"
    link.mkdir()
    (link / "model-00001.safetensors").symlink_to(d / "model-00001.safetensors")
    (link / "model-00003.safetensors").symlink_to(d / "model-00003.safetensors")
    assert weights_checksum(link) == weights_checksum(d)


def test_weights_checksum_refuses_what_holds_no_weights(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    fifo = tmp_path / "w.safetensors.fifo"
    os.mkfifo(fifo)
    for bad in (tmp_path / "empty", tmp_path / "missing", fifo):
        with pytest.raises(InvalidArgumentError, match="weights_checksum"):
            weights_checksum(bad)


# ------------------------------------------------------------------ the CLI


@pytest.fixture(scope="module")
def small_trace(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("trace") / "agentic-small.json.gz"
    make_agentic(sessions=4).save(path)
    return str(path)


SIM = ["simulate", "--model", "qwen3-next-80b-a3b", "--memory", "16GiB", "--layout", "static"]


@pytest.mark.parametrize("tiers", ["disk:{dir}:1GiB", "cpu:1GiB,disk:{dir}:1GiB",
                                   "redis://:secret@127.0.0.1:1/0"])  # fmt: skip
def test_simulate_refuses_a_persistent_tier_without_weights(
    small_trace: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], tiers: str
) -> None:
    spec = tiers.format(dir=tmp_path / "cache")
    start = time.monotonic()
    code = main([*SIM, "--trace", small_trace, "--no-progress", "--offload", spec])
    elapsed = time.monotonic() - start
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert code == 2 and not out
    assert len(lines) == 1 and "--offload-weights" in lines[0], err
    assert "secret" not in err
    assert elapsed < 15  # refused before the run
    assert not (tmp_path / "cache").exists()


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--offload-weights", "rev"], "--offload"),  # without --offload
        (["--offload", "cpu:1GiB", "--offload-weights", "  "], "weights"),
        (["--offload", "cpu:1GiB", "--offload-weights", "a\tb"], "weights"),
    ],
)
def test_simulate_offload_weights_hostile(
    small_trace: str, capsys: pytest.CaptureFixture[str], extra: list[str], needle: str
) -> None:
    code = main([*SIM, "--trace", small_trace, "--no-progress", *extra])
    err = capsys.readouterr().err
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and needle in err, err


def _simulate(trace: str, spec: str, weights: str, capsys: pytest.CaptureFixture[str]) -> dict:  # type: ignore[type-arg]
    import json

    code = main([*SIM, "--trace", trace, "--no-progress", "--json", "--offload", spec,
                 "--offload-weights", weights])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0
    report: dict = json.loads(out)["layouts"]["static"]  # type: ignore[type-arg]
    return report


def test_simulate_restart_hits_only_with_the_same_weights(
    small_trace: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = f"disk:{tmp_path}:10GiB"
    first = _simulate(small_trace, spec, "rev-a", capsys)
    assert first["offload"]["stored_blocks"] > 0
    other = _simulate(small_trace, spec, "rev-b", capsys)
    # Exactly what a cold run of rev-a got: nothing of rev-a's is served to rev-b.
    assert other["external_hit_tokens"] == first["external_hit_tokens"]
    assert other["offload"]["fingerprint"] != first["offload"]["fingerprint"]
    same = _simulate(small_trace, spec, "rev-a", capsys)
    assert same["external_hit_tokens"] > first["external_hit_tokens"]
    assert same["offload"]["tier_share"]["disk"] > 0
