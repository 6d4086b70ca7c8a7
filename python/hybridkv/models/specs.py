"""What one layer keeps in the KV cache: one frozen spec per layer kind.

A spec knows the bytes one layer needs per block (``page_size_bytes``), whether that
memory grows with the sequence (``grows_with_sequence``) and, when it does not, the
most blocks one request can hold at once (``max_blocks_per_request``). Sizes are plain
integers: a custom KV dtype is given as bytes per token per layer
(``custom_bytes_per_token``), so page sizes may be any integer and nothing here
assumes powers of two or divisibility.

Kinds: ``"full_attention"``, ``"mla"``, ``"sparse_mla"``, ``"sliding_window"``,
``"chunked_local"``, ``"state"``, ``"cross_attention"``, ``"encoder_only"``. All specs are keyword-only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, TypeAlias

from hybridkv.errors import InvalidArgumentError
from hybridkv.models.window_bound import window_request_blocks

#: Bytes per element of the dtype names accepted by specs and ``--kv-dtype``.
DTYPE_BYTES: dict[str, int] = {
    "bf16": 2,
    "bfloat16": 2,
    "fp16": 2,
    "float16": 2,
    "half": 2,
    "fp32": 4,
    "float32": 4,
    "float": 4,
    "fp8": 1,
    "fp8_e4m3": 1,
    "fp8_e5m2": 1,
    "float8_e4m3fn": 1,
    "float8_e5m2": 1,
    "int8": 1,
    "uint8": 1,
}

MAMBA_CACHE_MODES = ("none", "align", "all")


def dtype_bytes(dtype: str) -> int:
    """Bytes per element of ``dtype`` (a name from :data:`DTYPE_BYTES`)."""
    try:
        return DTYPE_BYTES[dtype.lower()]
    except (KeyError, AttributeError):
        known = ", ".join(sorted(DTYPE_BYTES))
        raise InvalidArgumentError(f"unknown dtype {dtype!r}; known: {known}") from None


def cdiv(a: int, b: int) -> int:
    """Ceiling division of non-negative ``a`` by positive ``b``."""
    return -(-a // b)


def _check_positive(name: str, value: object, *, allow_zero: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidArgumentError(f"{name} must be an int, got {value!r}")
    if value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise InvalidArgumentError(f"{name} must be {bound}, got {value}")


def _check_block_size(block_size: int) -> None:
    _check_positive("block_size", block_size)


class _TokenPages:
    """Mixin of attention and MLA specs: a block holds ``block_size`` tokens, each of
    ``elements_per_token`` elements of ``dtype`` plus ``scale_bytes_per_token``, or of
    ``custom_bytes_per_token`` bytes when that is set."""

    # Dataclass fields of the specs using this mixin.
    dtype: str
    scale_bytes_per_token: int
    custom_bytes_per_token: int | None

    @property
    def elements_per_token(self) -> int:
        """Cache elements one token takes in one layer."""
        raise NotImplementedError

    @property
    def bytes_per_token(self) -> int:
        """Bytes one token takes in one layer's cache (plus scales)."""
        if self.custom_bytes_per_token is not None:
            return self.custom_bytes_per_token
        return self.elements_per_token * dtype_bytes(self.dtype) + self.scale_bytes_per_token

    def page_size_bytes(self, block_size: int) -> int:
        """Bytes of one block of ``block_size`` tokens in one layer."""
        _check_block_size(block_size)
        return block_size * self.bytes_per_token

    def _check_token_bytes(self) -> None:
        dtype_bytes(self.dtype)  # raises InvalidArgumentError naming the known dtypes
        _check_positive("scale_bytes_per_token", self.scale_bytes_per_token, allow_zero=True)
        if self.custom_bytes_per_token is not None:
            _check_positive("custom_bytes_per_token", self.custom_bytes_per_token)


class _Growing:
    """Mixin of specs whose memory grows with the sequence (no per-request bound)."""

    @property
    def grows_with_sequence(self) -> bool:
        """True: the request's length decides how many blocks it holds."""
        return True

    def max_blocks_per_request(
        self, block_size: int, *, max_model_len: int, max_num_batched_tokens: int
    ) -> int | None:
        """``None``: unbounded, the request's length decides."""
        return None


class _Bounded:
    """Mixin of specs whose memory per request is bounded (a fixed-size pool)."""

    @property
    def grows_with_sequence(self) -> bool:
        """False: a request holds at most ``max_blocks_per_request`` blocks."""
        return False


@dataclass(frozen=True, kw_only=True)
class _AttentionFields(_TokenPages):
    """Fields shared by every attention-like spec (K and V per token per layer)."""

    num_kv_heads: int
    head_size: int
    head_size_v: int | None = None
    dtype: str = "bf16"
    #: Extra bytes per token per layer, e.g. per-token quantisation scales.
    scale_bytes_per_token: int = 0
    #: A custom KV dtype: bytes per token per layer, overriding heads x dtype.
    custom_bytes_per_token: int | None = None

    def __post_init__(self) -> None:
        _check_positive("num_kv_heads", self.num_kv_heads)
        _check_positive("head_size", self.head_size)
        if self.head_size_v is not None:
            _check_positive("head_size_v", self.head_size_v)
        self._check_token_bytes()

    @property
    def elements_per_token(self) -> int:
        """K and V elements of one token in one layer: ``heads * (head_size + head_size_v)``."""
        v = self.head_size if self.head_size_v is None else self.head_size_v
        return self.num_kv_heads * (self.head_size + v)


@dataclass(frozen=True, kw_only=True)
class FullAttentionSpec(_Growing, _AttentionFields):
    """Causal self-attention over the whole sequence: grows with it."""

    kind: ClassVar[str] = "full_attention"


class _Windowed(_Bounded):
    """Mixin of attention that sees only the last ``span`` positions (window or chunk)."""

    kind: ClassVar[str]

    @property
    def span(self) -> int:
        """The window (sliding window) or chunk size (chunked local) in positions."""
        raise NotImplementedError

    def max_blocks_per_request(
        self, block_size: int, *, max_model_len: int, max_num_batched_tokens: int
    ) -> int | None:
        """Most blocks one request holds at once (see :mod:`hybridkv.models.window_bound`)."""
        return window_request_blocks(
            self.kind, self.span, block_size, max_model_len, max_num_batched_tokens
        )


@dataclass(frozen=True, kw_only=True)
class SlidingWindowSpec(_Windowed, _AttentionFields):
    """Attention over the last ``window`` positions (the token itself included)."""

    window: int
    kind: ClassVar[str] = "sliding_window"

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_positive("window", self.window)

    @property
    def span(self) -> int:
        """``window``."""
        return self.window


@dataclass(frozen=True, kw_only=True)
class ChunkedLocalSpec(_Windowed, _AttentionFields):
    """Attention within fixed chunks of ``chunk_size`` positions (Llama-4 local layers)."""

    chunk_size: int
    kind: ClassVar[str] = "chunked_local"

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_positive("chunk_size", self.chunk_size)

    @property
    def span(self) -> int:
        """``chunk_size``."""
        return self.chunk_size


@dataclass(frozen=True, kw_only=True)
class CrossAttentionSpec(_Bounded, _AttentionFields):
    """Decoder attention over the encoder output: ``max_encoder_len`` positions, fixed."""

    max_encoder_len: int
    kind: ClassVar[str] = "cross_attention"

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_positive("max_encoder_len", self.max_encoder_len)

    def max_blocks_per_request(
        self, block_size: int, *, max_model_len: int, max_num_batched_tokens: int
    ) -> int | None:
        """The encoder output's blocks: ``cdiv(max_encoder_len, block_size)``."""
        _check_block_size(block_size)
        return cdiv(self.max_encoder_len, block_size)


@dataclass(frozen=True, kw_only=True)
class MLASpec(_Growing, _TokenPages):
    """Multi-head latent attention: ONE latent vector per token (no separate K and V).

    Bytes per token per layer are ``(kv_lora_rank + qk_rope_head_dim) * dtype`` plus
    ``scale_bytes_per_token``, or ``custom_bytes_per_token`` (e.g. 656 for a packed fp8
    latent with scales and a bf16 rope part).
    """

    kv_lora_rank: int
    qk_rope_head_dim: int
    dtype: str = "bf16"
    scale_bytes_per_token: int = 0
    custom_bytes_per_token: int | None = None
    kind: ClassVar[str] = "mla"

    def __post_init__(self) -> None:
        _check_positive("kv_lora_rank", self.kv_lora_rank)
        _check_positive("qk_rope_head_dim", self.qk_rope_head_dim, allow_zero=True)
        self._check_token_bytes()

    @property
    def elements_per_token(self) -> int:
        """Latent elements of one token in one layer: ``kv_lora_rank + qk_rope_head_dim``."""
        return self.kv_lora_rank + self.qk_rope_head_dim


@dataclass(frozen=True, kw_only=True)
class SparseMLASpec(_Growing, _TokenPages):
    """MLA with a sparse-attention indexer (DeepSeek-V3.2 DSA, GLM-5 ``glm_moe_dsa``).

    Each token keeps its MLA latent (``kv_lora_rank + qk_rope_head_dim`` elements of
    ``dtype``, plus ``scale_bytes_per_token``) AND one indexer key of ``index_head_dim``
    elements of ``index_dtype`` (plus ``index_scale_bytes_per_token``, e.g. one fp32
    scale per 128 fp8 elements). Both are read through the same block table, so one
    page holds both and the group grows like MLA. ``custom_bytes_per_token`` overrides
    the whole per-token size.
    """

    kv_lora_rank: int
    qk_rope_head_dim: int
    index_head_dim: int
    dtype: str = "bf16"
    index_dtype: str = "bf16"
    scale_bytes_per_token: int = 0
    index_scale_bytes_per_token: int = 0
    custom_bytes_per_token: int | None = None
    kind: ClassVar[str] = "sparse_mla"

    def __post_init__(self) -> None:
        _check_positive("kv_lora_rank", self.kv_lora_rank)
        _check_positive("qk_rope_head_dim", self.qk_rope_head_dim, allow_zero=True)
        _check_positive("index_head_dim", self.index_head_dim)
        dtype_bytes(self.index_dtype)
        _check_positive(
            "index_scale_bytes_per_token", self.index_scale_bytes_per_token, allow_zero=True
        )
        self._check_token_bytes()

    @property
    def elements_per_token(self) -> int:
        """Latent elements of one token in one layer (the indexer key is added apart)."""
        return self.kv_lora_rank + self.qk_rope_head_dim

    @property
    def index_bytes_per_token(self) -> int:
        """Bytes of one token's indexer key (with its scales) in one layer."""
        return (
            self.index_head_dim * dtype_bytes(self.index_dtype) + self.index_scale_bytes_per_token
        )

    @property
    def bytes_per_token(self) -> int:
        """Latent plus indexer key bytes of one token in one layer."""
        if self.custom_bytes_per_token is not None:
            return self.custom_bytes_per_token
        latent = self.elements_per_token * dtype_bytes(self.dtype) + self.scale_bytes_per_token
        return latent + self.index_bytes_per_token


@dataclass(frozen=True, kw_only=True)
class StateSpec(_Bounded):
    """A fixed-size recurrent state per request (Mamba / Mamba-2 / gated delta net).

    ``shapes`` and ``dtypes`` list the state tensors of one layer for one request, e.g.
    Mamba-2 ``((conv_kernel - 1, conv_dim), (heads, head_dim, d_state))``. A "block" of a
    state group is one such state (a slot); the planner decides how many a request
    keeps (``mamba_cache_mode``). ``family`` is informative ("mamba2", "gdn", ...).
    ``grows_with_sequence`` is False: one slot per request; ``mamba_cache_mode="all"``
    (a checkpoint per block) makes the planner grow the group instead.
    """

    shapes: tuple[tuple[int, ...], ...]
    dtypes: tuple[str, ...]
    family: str = "mamba2"
    kind: ClassVar[str] = "state"

    def __post_init__(self) -> None:
        if not self.shapes:
            raise InvalidArgumentError("a StateSpec needs at least one state tensor")
        if len(self.shapes) != len(self.dtypes):
            raise InvalidArgumentError(
                f"StateSpec has {len(self.shapes)} shapes but {len(self.dtypes)} dtypes"
            )
        for shape in self.shapes:
            if not isinstance(shape, tuple) or not shape:
                raise InvalidArgumentError(f"state shape must be a non-empty tuple: {shape!r}")
            for dim in shape:
                _check_positive("state dimension", dim)
        for dtype in self.dtypes:
            dtype_bytes(dtype)

    @property
    def state_bytes(self) -> int:
        """Bytes of one request's state in one layer."""
        return sum(
            math.prod(shape) * dtype_bytes(dtype)
            for shape, dtype in zip(self.shapes, self.dtypes, strict=True)
        )

    @property
    def bytes_per_token(self) -> int:
        """0: a state does not scale with tokens (see ``state_bytes``)."""
        return 0

    def page_size_bytes(self, block_size: int) -> int:
        """One state, whatever the block size."""
        _check_block_size(block_size)
        return self.state_bytes

    def max_blocks_per_request(
        self,
        block_size: int,
        *,
        max_model_len: int,
        max_num_batched_tokens: int,
        mamba_cache_mode: str = "align",
    ) -> int | None:
        """1 in mode ``none``, 2 in ``align`` (running state + last checkpoint), else None."""
        _check_block_size(block_size)
        if mamba_cache_mode == "none":
            return 1
        if mamba_cache_mode == "align":
            return 2
        if mamba_cache_mode == "all":
            return None
        raise InvalidArgumentError(
            f"mamba_cache_mode must be one of {MAMBA_CACHE_MODES}, got {mamba_cache_mode!r}"
        )


@dataclass(frozen=True, kw_only=True)
class EncoderOnlySpec(_Bounded):
    """A layer that keeps no cache (bidirectional encoder layers)."""

    kind: ClassVar[str] = "encoder_only"

    @property
    def bytes_per_token(self) -> int:
        """0: nothing is cached."""
        return 0

    def page_size_bytes(self, block_size: int) -> int:
        """0: nothing is cached, whatever the block size."""
        _check_block_size(block_size)
        return 0

    def max_blocks_per_request(
        self, block_size: int, *, max_model_len: int, max_num_batched_tokens: int
    ) -> int | None:
        """0: the layer holds no blocks."""
        return 0


KVSpec: TypeAlias = (
    FullAttentionSpec
    | SlidingWindowSpec
    | ChunkedLocalSpec
    | CrossAttentionSpec
    | MLASpec
    | SparseMLASpec
    | StateSpec
    | EncoderOnlySpec
)

ATTENTION_SPECS = (FullAttentionSpec, SlidingWindowSpec, ChunkedLocalSpec, CrossAttentionSpec)
SPEC_TYPES = (*ATTENTION_SPECS, MLASpec, SparseMLASpec, StateSpec, EncoderOnlySpec)
KINDS = tuple(t.kind for t in SPEC_TYPES)


def spec_to_dict(spec: KVSpec) -> dict[str, object]:
    """A JSON-ready description of ``spec`` (its kind and fields)."""
    out: dict[str, object] = {"kind": spec.kind}
    for name in spec.__dataclass_fields__:
        value = getattr(spec, name)
        if isinstance(value, tuple):
            value = [list(v) if isinstance(v, tuple) else v for v in value]
        out[name] = value
    return out


__all__ = [
    "ATTENTION_SPECS",
    "DTYPE_BYTES",
    "KINDS",
    "MAMBA_CACHE_MODES",
    "SPEC_TYPES",
    "ChunkedLocalSpec",
    "CrossAttentionSpec",
    "EncoderOnlySpec",
    "FullAttentionSpec",
    "KVSpec",
    "MLASpec",
    "SlidingWindowSpec",
    "SparseMLASpec",
    "StateSpec",
    "cdiv",
    "dtype_bytes",
    "spec_to_dict",
]
