"""Offload keys, model fingerprints and the stored block layout."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from dataclasses import dataclass, field

import numpy as np
import pytest
from hybridkv.errors import InvalidArgumentError
from hybridkv.offload import BlockKey, block_keys, model_fingerprint
from hybridkv.offload.block_format import HEADER_BYTES, CorruptBlockError, decode, encode

DESC = {
    "name": "toy-hybrid",
    "groups": [
        {"kind": "full_attention", "block_size": 16, "layers": [0, 2], "dtype": "bf16"},
        {"kind": "state", "block_size": 528, "shapes": [[3, 64], [4, 16, 8]], "dtype": "fp32"},
    ],
}

# The documented derivation spelled out: BLAKE2b-128 of the canonical JSON. Pinned so
# that an accidental change (which would orphan every stored block) fails here. (The
# weights field joined it deliberately in issue 15 item 12: blocks stored before named
# no weights, so nothing can tell which model computed them; they are orphaned.)
CANONICAL = (
    '{"extra":{},"format_version":1,"source":{"description":{"groups":['
    '{"block_size":16,"dtype":"bf16","kind":"full_attention","layers":[0,2]},'
    '{"block_size":528,"dtype":"fp32","kind":"state","shapes":[[3,64],[4,16,8]]}],'
    '"name":"toy-hybrid"}},"tp_rank":0,"tp_size":1,"weights":"rev-1"}'
)
GOLDEN = "89a6a7d12e091982863cd43c09dba0b0"


def test_fingerprint_is_16_bytes_and_stable_across_hash_seeds() -> None:
    fp = model_fingerprint(DESC, weights="rev-1")
    assert isinstance(fp, bytes) and len(fp) == 16
    code = (
        "from hybridkv.offload import model_fingerprint;"
        f"print(model_fingerprint({DESC!r}, weights='rev-1').hex())"
    )
    outs = set()
    for seed in ("0", "1", "12345"):
        env = dict(os.environ, PYTHONHASHSEED=seed)
        out = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
        )
        outs.add(out.stdout.strip())
    assert outs == {fp.hex()}
    assert fp == hashlib.blake2b(CANONICAL.encode(), digest_size=16).digest()
    assert fp.hex() == GOLDEN


def test_fingerprint_covers_what_changes_bytes() -> None:
    base = model_fingerprint(DESC)
    assert model_fingerprint(DESC, tp_rank=1, tp_size=2) != base
    assert model_fingerprint(DESC, tp_size=2) != base
    assert model_fingerprint(DESC, extra={"revision": "abc"}) != base
    changed = {**DESC, "groups": [{**DESC["groups"][0], "block_size": 32}, DESC["groups"][1]]}
    assert model_fingerprint(changed) != base
    dtype = {**DESC, "groups": [DESC["groups"][0], {**DESC["groups"][1], "dtype": "bf16"}]}
    assert model_fingerprint(dtype) != base
    # Key order in the description does not matter (canonical JSON).
    assert model_fingerprint(dict(reversed(list(DESC.items())))) == base


@dataclass(frozen=True)
class _Spec:
    num_kv_heads: int
    dtype: np.dtype[np.generic]


@dataclass(frozen=True)
class _Group:
    index: int
    kind: str
    layers: tuple[int, ...]
    spec: _Spec
    block_size: int
    page_size_bytes: int
    num_blocks: int


@dataclass(frozen=True)
class _Model:
    name: str
    layer_specs: tuple[_Spec, ...]
    notes: tuple[str, ...] = field(default=(), compare=False)


@dataclass(frozen=True)
class _Plan:
    groups: tuple[_Group, ...]
    model: _Model
    memory_bytes: int


def _plan(num_blocks: int, memory: int, *, heads: int = 2, notes: tuple[str, ...] = ()) -> _Plan:
    spec = _Spec(heads, np.dtype(np.float16))
    group = _Group(0, "full_attention", (0, 1), spec, 16, 4096 * heads, num_blocks)
    return _Plan((group,), _Model("m", (spec, spec), notes), memory)


def test_plan_fingerprint_ignores_pool_sizes_and_notes() -> None:
    base = model_fingerprint(_plan(100, 1 << 30))
    assert model_fingerprint(_plan(5000, 8 << 30, notes=("hello",))) == base
    assert model_fingerprint(_plan(100, 1 << 30, heads=4)) != base


def test_fingerprint_refuses_unstable_values() -> None:
    with pytest.raises(InvalidArgumentError):
        model_fingerprint({"x": {1, 2}})
    with pytest.raises(InvalidArgumentError):
        model_fingerprint({"x": object()})
    with pytest.raises(InvalidArgumentError):
        model_fingerprint({"x": float("nan")})
    with pytest.raises(InvalidArgumentError):
        model_fingerprint(42)
    with pytest.raises(InvalidArgumentError):
        model_fingerprint(DESC, tp_rank=2, tp_size=2)


def test_block_keys_from_rows_and_ints() -> None:
    fp = model_fingerprint(DESC)
    big = (7 << 64) | 9
    rows = np.array([[9, 7], [1, 0]], dtype=np.uint64)
    assert block_keys(fp, 3, rows) == [BlockKey(fp, 3, big), BlockKey(fp, 3, 1)]
    assert block_keys(fp, 3, [big, 1]) == block_keys(fp, 3, rows)
    assert BlockKey(fp, 3, big).label() == f"{fp.hex()}:3:{big:032x}"
    with pytest.raises(InvalidArgumentError):
        block_keys(fp, 0, np.zeros((2, 3), dtype=np.uint64))
    with pytest.raises(InvalidArgumentError):
        block_keys(fp, 0, [1 << 128])
    with pytest.raises(InvalidArgumentError):
        block_keys(b"short", 0, [1])


@pytest.mark.parametrize(
    "bad",
    [
        np.array([[-1, 0]], dtype=np.int64),  # used to wrap to 2**64 - 1
        np.array([[5, -(2**63)]], dtype=np.int64),
        np.array([[1.0, 0.0]]),
        np.array([[True, False]]),
        [-1],
        [1.5],
        [True],
    ],
)
def test_block_keys_refuse_what_they_would_wrap_or_truncate(bad: object) -> None:
    """Issue 15 item 11: ``block_keys`` wrapped a -1 word to ``2**64 - 1`` (a key for
    another block) instead of refusing it."""
    with pytest.raises(InvalidArgumentError):
        block_keys(model_fingerprint(DESC), 0, bad)  # type: ignore[arg-type]


def test_block_format_roundtrip_and_every_mismatch() -> None:
    fp = model_fingerprint(DESC)
    key = BlockKey(fp, 1, (1 << 127) | 5)
    payload = bytes(range(256)) * 3
    data = encode(key, memoryview(payload))
    assert len(data) == HEADER_BYTES + len(payload)
    assert bytes(decode(key, data)) == payload
    assert bytes(decode(key, encode(key, memoryview(b"")))) == b""
    for other in (
        BlockKey(fp, 2, key.block_hash),
        BlockKey(fp, 1, key.block_hash ^ 1),
        BlockKey(bytes(16), 1, key.block_hash),
    ):
        with pytest.raises(CorruptBlockError):
            decode(other, data)
    for cut in (0, 10, HEADER_BYTES - 1, HEADER_BYTES, len(data) - 1):
        with pytest.raises(CorruptBlockError):
            decode(key, data[:cut])
    with pytest.raises(CorruptBlockError):
        decode(key, data + b"x")
    for pos in range(0, len(data), 7):  # every flipped byte is caught
        bad = bytearray(data)
        bad[pos] ^= 0x5A
        with pytest.raises(CorruptBlockError):
            decode(key, bad)


def test_real_plans_fingerprint_what_changes_bytes_only() -> None:
    from hybridkv.models import load_model
    from hybridkv.planner import plan_memory

    kw = {"max_num_seqs": 64, "max_model_len": 8192, "max_num_batched_tokens": 4096}
    model = load_model("qwen3-next-80b-a3b")
    base = model_fingerprint(plan_memory(model, memory_bytes=16 << 30, **kw))
    # Another memory budget: other pool sizes, same pages: same keys after a restart.
    assert model_fingerprint(plan_memory(model, memory_bytes=24 << 30, **kw)) == base
    # Other bytes per block: TP shard, KV dtype, block size, or the bare model spec.
    tp2 = load_model("qwen3-next-80b-a3b", tp=2)
    fp8 = load_model("qwen3-next-80b-a3b", kv_dtype="fp8")
    assert model_fingerprint(plan_memory(tp2, memory_bytes=16 << 30, **kw)) != base
    assert model_fingerprint(plan_memory(fp8, memory_bytes=16 << 30, **kw)) != base
    assert model_fingerprint(plan_memory(model, memory_bytes=16 << 30, block_size=32, **kw)) != base
    assert model_fingerprint(model) != base
    assert model_fingerprint(model) == model_fingerprint(load_model("qwen3-next-80b-a3b"))
