"""Specs: page sizes, growth, per-request bounds and validation."""

from __future__ import annotations

import dataclasses

import pytest
from hybridkv.errors import InvalidArgumentError
from hybridkv.specs import (
    KINDS,
    ChunkedLocalSpec,
    CrossAttentionSpec,
    EncoderOnlySpec,
    FullAttentionSpec,
    MLASpec,
    SlidingWindowSpec,
    StateSpec,
    cdiv,
    dtype_bytes,
    spec_to_dict,
)


def test_full_attention_page_is_k_plus_v_per_token() -> None:
    spec = FullAttentionSpec(num_kv_heads=8, head_size=128)
    assert spec.kind == "full_attention"
    assert spec.bytes_per_token == 2 * 8 * 128 * 2
    assert spec.page_size_bytes(16) == 16 * 4096
    assert spec.page_size_bytes(7) == 7 * 4096
    assert spec.grows_with_sequence
    assert spec.max_blocks_per_request(16, max_model_len=100, max_num_batched_tokens=8) is None


def test_value_head_size_and_scales_and_fp8() -> None:
    spec = FullAttentionSpec(num_kv_heads=1, head_size=192, head_size_v=128, dtype="fp8")
    assert spec.elements_per_token == 192 + 128
    assert spec.bytes_per_token == 192 + 128
    scaled = FullAttentionSpec(num_kv_heads=2, head_size=64, dtype="fp8", scale_bytes_per_token=8)
    assert scaled.bytes_per_token == 2 * 2 * 64 + 8


def test_custom_kv_dtype_any_integer() -> None:
    # packed 4-bit values plus a 4-byte norm: odd sizes are fine, nothing rounds.
    spec = FullAttentionSpec(num_kv_heads=8, head_size=128, custom_bytes_per_token=131)
    assert spec.bytes_per_token == 131
    assert spec.elements_per_token == 2 * 8 * 128  # still reported; bytes ignore it
    assert spec.page_size_bytes(16) == 2096
    assert spec.page_size_bytes(3) == 393


def test_mla_has_one_latent_per_token() -> None:
    spec = MLASpec(kv_lora_rank=512, qk_rope_head_dim=64)
    assert spec.kind == "mla"
    assert spec.elements_per_token == 512 + 64
    assert spec.bytes_per_token == (512 + 64) * 2  # no K/V factor 2
    assert spec.page_size_bytes(16) == 16 * 1152
    fp8 = MLASpec(kv_lora_rank=512, qk_rope_head_dim=64, custom_bytes_per_token=656)
    assert fp8.page_size_bytes(64) == 64 * 656
    assert fp8.grows_with_sequence


def test_state_page_is_its_tensors_whatever_the_block() -> None:
    spec = StateSpec(shapes=((3, 8192), (32, 128, 128)), dtypes=("bf16", "float32"), family="gdn")
    expected = 3 * 8192 * 2 + 32 * 128 * 128 * 4
    assert spec.state_bytes == expected
    assert spec.page_size_bytes(16) == spec.page_size_bytes(1000) == expected
    assert spec.bytes_per_token == 0
    assert not spec.grows_with_sequence
    kw = {"max_model_len": 10, "max_num_batched_tokens": 4}
    assert spec.max_blocks_per_request(16, mamba_cache_mode="none", **kw) == 1
    assert spec.max_blocks_per_request(16, mamba_cache_mode="align", **kw) == 2
    assert spec.max_blocks_per_request(16, mamba_cache_mode="all", **kw) is None
    with pytest.raises(InvalidArgumentError, match="mamba_cache_mode"):
        spec.max_blocks_per_request(16, mamba_cache_mode="sometimes", **kw)


def test_window_specs_are_bounded() -> None:
    sw = SlidingWindowSpec(num_kv_heads=4, head_size=64, window=100)
    assert not sw.grows_with_sequence
    # cdiv(min(W + b - 2 + B, M), b)
    assert sw.max_blocks_per_request(16, max_model_len=10_000, max_num_batched_tokens=50) == cdiv(
        100 + 16 - 2 + 50, 16
    )
    assert sw.max_blocks_per_request(16, max_model_len=64, max_num_batched_tokens=50) == 4
    cl = ChunkedLocalSpec(num_kv_heads=4, head_size=64, chunk_size=64)
    # chunk a multiple of the block: chunk starts are block aligned.
    assert cl.max_blocks_per_request(16, max_model_len=10_000, max_num_batched_tokens=1) == 4
    # span: the window or the chunk, whichever the kind has
    assert (sw.span, cl.span) == (100, 64)
    cross = CrossAttentionSpec(num_kv_heads=20, head_size=64, max_encoder_len=1500)
    assert cross.max_blocks_per_request(16, max_model_len=448, max_num_batched_tokens=8) == 94
    assert cross.page_size_bytes(16) == 16 * 2 * 20 * 64 * 2


def test_encoder_only_keeps_nothing() -> None:
    spec = EncoderOnlySpec()
    assert spec.kind == "encoder_only"
    assert spec.page_size_bytes(16) == 0
    assert spec.bytes_per_token == 0
    assert not spec.grows_with_sequence


def test_kinds_are_the_contract_strings() -> None:
    assert set(KINDS) == {
        "full_attention",
        "mla",
        "sparse_mla",
        "sliding_window",
        "chunked_local",
        "state",
        "cross_attention",
        "encoder_only",
    }


def test_specs_are_frozen_hashable_values() -> None:
    a = SlidingWindowSpec(num_kv_heads=4, head_size=64, window=128)
    b = SlidingWindowSpec(num_kv_heads=4, head_size=64, window=128)
    c = SlidingWindowSpec(num_kv_heads=4, head_size=64, window=256)
    assert a == b and hash(a) == hash(b)
    assert a != c
    assert FullAttentionSpec(num_kv_heads=4, head_size=64) != CrossAttentionSpec(
        num_kv_heads=4, head_size=64, max_encoder_len=128
    )
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.window = 3  # type: ignore[misc]


@pytest.mark.parametrize(
    "make",
    [
        lambda: FullAttentionSpec(num_kv_heads=0, head_size=64),
        lambda: FullAttentionSpec(num_kv_heads=2, head_size=-1),
        lambda: FullAttentionSpec(num_kv_heads=2, head_size=64, dtype="int3"),
        lambda: FullAttentionSpec(num_kv_heads=2, head_size=64, custom_bytes_per_token=0),
        lambda: FullAttentionSpec(num_kv_heads=True, head_size=64),
        lambda: SlidingWindowSpec(num_kv_heads=2, head_size=64, window=0),
        lambda: ChunkedLocalSpec(num_kv_heads=2, head_size=64, chunk_size=-8),
        lambda: CrossAttentionSpec(num_kv_heads=2, head_size=64, max_encoder_len=0),
        lambda: MLASpec(kv_lora_rank=0, qk_rope_head_dim=64),
        lambda: StateSpec(shapes=(), dtypes=()),
        lambda: StateSpec(shapes=((3, 4),), dtypes=("bf16", "bf16")),
        lambda: StateSpec(shapes=((3, 0),), dtypes=("bf16",)),
        lambda: StateSpec(shapes=((3, 4),), dtypes=("qint2",)),
    ],
)
def test_bad_specs_raise_named_errors(make: object) -> None:
    with pytest.raises(InvalidArgumentError):
        make()  # type: ignore[operator]


def test_bad_block_size() -> None:
    spec = FullAttentionSpec(num_kv_heads=1, head_size=8)
    with pytest.raises(InvalidArgumentError, match="block_size"):
        spec.page_size_bytes(0)


def test_dtype_bytes_and_to_dict() -> None:
    assert dtype_bytes("BF16") == 2
    assert dtype_bytes("float32") == 4
    with pytest.raises(InvalidArgumentError, match="unknown dtype"):
        dtype_bytes("nope")
    d = spec_to_dict(StateSpec(shapes=((3, 4), (2, 2, 2)), dtypes=("bf16", "fp32")))
    assert d == {
        "kind": "state",
        "shapes": [[3, 4], [2, 2, 2]],
        "dtypes": ["bf16", "fp32"],
        "family": "mamba2",
    }
    # JSON keys are the fields in declaration order (no helper properties such as span)
    sw = spec_to_dict(SlidingWindowSpec(num_kv_heads=2, head_size=8, window=5))
    assert list(sw) == [
        "kind",
        "num_kv_heads",
        "head_size",
        "head_size_v",
        "dtype",
        "scale_bytes_per_token",
        "custom_bytes_per_token",
        "window",
    ]
    mla = spec_to_dict(MLASpec(kv_lora_rank=512, qk_rope_head_dim=64))
    assert list(mla)[:3] == ["kind", "kv_lora_rank", "qk_rope_head_dim"]
