"""hybridkv.hash_token_blocks: pinned values, independence from PYTHONHASHSEED, bad input."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from hybridkv import errors, hash_token_blocks
from hybridkv.hashes import to_ints

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
