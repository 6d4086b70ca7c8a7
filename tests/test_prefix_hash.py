"""hybridkv.hash_token_blocks: pinned values, independence from PYTHONHASHSEED, bad input."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import numpy as np
import pytest
from hybridkv import errors, hash_token_blocks
from hybridkv.hashes import to_ints
from hypothesis import given
from hypothesis import strategies as st

# The same golden values the Rust tests pin (rust/core/src/prefix_hash.rs).
GOLD_PLAIN = [0x61C33249693622822DACE80BA2A30BE5, 0x090A30FBFD6A7BC57C0D006D1570BABC]
GOLD_EXTRA = [0x475D0D5226E8067866AFDBD1AA918B21, 0x6D79A1E955ECF7BB7329B9C1F8BC9003]


def test_golden_values_through_python() -> None:
    toks = np.arange(8, dtype=np.int32)
    assert to_ints(hash_token_blocks(toks, 4)) == GOLD_PLAIN
    got = hash_token_blocks(toks, 4, lora_id=7, cache_salt="salt", mm_features=[(0xABC, 2, 4)])
    assert to_ints(got) == GOLD_EXTRA
    # Other integer dtypes and lists give the same hashes; a partial block is dropped.
    assert to_ints(hash_token_blocks(list(range(10)), 4)) == GOLD_PLAIN
    assert hash_token_blocks(np.arange(3), 4).shape == (0, 2)


def test_independent_of_python_hash_seed() -> None:
    code = (
        "import numpy as np, hybridkv; from hybridkv.hashes import to_ints;"
        "print(to_ints(hybridkv.hash_token_blocks(np.arange(64), 16, seed=5)))"
    )
    outs = set()
    for seed in ("0", "1", "random"):
        env = dict(os.environ, PYTHONHASHSEED=seed)
        outs.add(
            subprocess.run(
                [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
            ).stdout
        )
    assert len(outs) == 1


@pytest.mark.parametrize(
    "kwargs",
    [
        {"block_size": 0},
        {"block_size": True},
        {"seed": -1},
        {"parent": 1 << 128},
        {"lora_id": -2},
        {"cache_salt": 5},
        {"mm_features": [(1, -1, 2)]},
        {"mm_features": [(1 << 128, 0, 2)]},
        {"mm_features": [(1, 2)]},
        {"block_size": 2**63},
        {"block_size": 4.0},
        {"seed": "x"},
        {"seed": 1.5},
        {"seed": 2**64},
        {"parent": -1},
        {"lora_id": 2**64},
        {"lora_id": 1.0},
        {"cache_salt": "\ud800"},
        {"mm_features": 5},
        {"mm_features": [(float("inf"), 0, 1)]},
        {"mm_features": [(1, 2**64, 1)]},
    ],
)
def test_bad_arguments(kwargs: dict[str, object]) -> None:
    args: dict[str, object] = {"block_size": 4, **kwargs}
    with pytest.raises(errors.InvalidArgumentError):
        hash_token_blocks(np.arange(8), **args)  # type: ignore[arg-type]


def test_bad_tokens() -> None:
    with pytest.raises(errors.InvalidTokenError):
        hash_token_blocks(np.array([1, -3, 2, 2]), 2)
    with pytest.raises(errors.InvalidArgumentError):
        hash_token_blocks(np.array([1.5, 2.0]), 2)


junk = st.one_of(
    st.integers(-(2**130), 2**130),
    st.sampled_from([0, 1, -1, 2**63 - 1, 2**63, 2**64 - 1, 2**64, 2**128]),
    st.floats(),
    st.booleans(),
    st.none(),
    st.text(max_size=3),
    st.binary(max_size=3),
    st.lists(st.integers(-(2**65), 2**65), max_size=3),
    st.lists(st.tuples(st.integers(-1, 2**64), st.integers(-1, 2**64), st.floats()), max_size=2),
    st.sampled_from([np.uint64(2**64 - 1), np.float64(2.0), np.array([[1, 2]]), object()]),
)


@given(
    tokens=st.one_of(
        st.lists(st.integers(-(2**65), 2**65), max_size=6),
        st.lists(st.integers(0, 9), max_size=6),
        junk,
    ),
    block_size=st.one_of(st.integers(1, 4), junk),
    seed=st.one_of(st.integers(0, 9), junk),
    parent=junk,
    lora_id=junk,
    cache_salt=junk,
    mm_features=junk,
)
def test_junk_arguments_raise_only_named_errors(
    tokens: Any,
    block_size: Any,
    seed: Any,
    parent: Any,
    lora_id: Any,
    cache_salt: Any,
    mm_features: Any,
) -> None:
    try:
        out = hash_token_blocks(
            tokens,
            block_size,
            seed=seed,
            parent=parent,
            lora_id=lora_id,
            cache_salt=cache_salt,
            mm_features=mm_features,
        )
    except BaseException as e:  # a Rust panic is a BaseException
        assert isinstance(e, errors.HybridKVError), f"{type(e).__module__}.{e!r}"
    else:
        assert out.dtype == np.uint64
        assert out.shape == (len(tokens) // block_size, 2)
