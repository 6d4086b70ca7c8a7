"""Offload keys: (model fingerprint, group, block hash) at the group's own block size.

A block's bytes depend on the model (weights, layer specs, dtypes, the tensor-parallel
rank's slice of heads), on the group and its block size, and on the tokens it covers.
The block hash covers the tokens (chained, so it covers the whole prefix); the
fingerprint covers everything else. Two models, two TP ranks or two block sizes never
share a key. A state group's "block" is the checkpoint taken at a prefix position, keyed
by the group's prefix hash there, so it needs nothing special.

The fingerprint is a 16-byte BLAKE2b digest of a canonical JSON description (sorted
keys, no whitespace), never Python's ``hash``: it is stable across processes, machines
and ``PYTHONHASHSEED``, which is what lets a restarted server find its old blocks.

Weights: a model config says nothing about the weights loaded with it (a fine-tune, a
new checkpoint, a re-quantisation keep the config and change every block). So the
fingerprint takes ``weights``, an identity of the weights (a revision such as a Hugging
Face commit, or :func:`weights_checksum` of the files), and a tier that outlives the
process (disk, Redis) refuses a fingerprint made without one: see
:func:`require_weights` and :class:`ModelFingerprint`.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt

from hybridkv.errors import InvalidArgumentError, OffloadConfigError

#: Version of the offload key derivation and of the stored block format. Bumping it
#: makes every old block a miss (old files are recognised as foreign and removed).
FORMAT_VERSION = 1

FINGERPRINT_BYTES = 16

#: The longest weights identity accepted (a revision, a tag, a checksum).
MAX_WEIGHTS_CHARS = 1024


class ModelFingerprint(bytes):
    """The 16 bytes :func:`model_fingerprint` returns, remembering the weights identity
    that went into them (``None``: made without one).

    It is ``bytes`` everywhere a fingerprint is used; the attribute only lets the
    persistent tiers refuse a fingerprint that cannot tell two sets of weights apart
    (:func:`require_weights`). Plain ``bytes`` from elsewhere (a caller's own digest)
    carry no such record and are taken as given.
    """

    weights: str | None

    def __new__(cls, digest: bytes, weights: str | None = None) -> ModelFingerprint:
        self = super().__new__(cls, digest)
        self.weights = weights
        return self

    def __repr__(self) -> str:
        return f"ModelFingerprint({bytes(self)!r}, weights={self.weights!r})"


def check_weights(weights: object) -> str | None:
    """``weights`` if it is ``None`` or a usable weights identity: a non-blank ``str`` of
    at most :data:`MAX_WEIGHTS_CHARS` printable characters."""
    if weights is None:
        return None
    if not isinstance(weights, str):
        raise InvalidArgumentError(
            f"a weights identity is a str (a revision or checksum), got {weights!r}"
        )
    if not weights.strip() or len(weights) > MAX_WEIGHTS_CHARS or not weights.isprintable():
        shown = weights if len(weights) <= 80 else weights[:80] + "..."
        raise InvalidArgumentError(
            f"a weights identity is 1 to {MAX_WEIGHTS_CHARS} printable characters, "
            f"not blank, got {shown!r}"
        )
    return weights


def require_weights(fingerprint: bytes, tier: str) -> None:
    """Refuse to open the persistent ``tier`` (its blocks outlive this process) for a
    fingerprint :func:`model_fingerprint` made without a weights identity: blocks kept
    there from another model's weights under the same config would be served."""
    if isinstance(fingerprint, ModelFingerprint) and fingerprint.weights is None:
        raise OffloadConfigError(
            f"the {tier} tier keeps blocks across restarts, so its fingerprint must name "
            "the weights: pass weights='<revision or checksum>' (the CLI: "
            "--offload-weights); without it, blocks computed with other weights under the "
            "same config would be served"
        )


class BlockKey(NamedTuple):
    """Where one block lives in every tier: ``(fingerprint, group, block_hash)``.

    ``fingerprint`` is the 16-byte model digest, ``group`` the KV-cache group index and
    ``block_hash`` the 128-bit chained hash at that group's block size. A tuple so that
    hashing and comparing keys costs what a tuple costs.
    """

    fingerprint: bytes
    group: int
    block_hash: int

    def label(self) -> str:
        """A stable printable name: ``<fingerprint hex>:<group>:<hash hex>``."""
        return f"{self.fingerprint.hex()}:{self.group}:{self.block_hash:032x}"


#: Groups are stored as u32 in block headers.
MAX_GROUP = (1 << 32) - 1
_HASH_LIMIT = 1 << 128


def _is_int(value: object) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool | np.bool_)


def check_group(group: object) -> int:
    """``group`` as a Python int if it is a group index a block header can hold."""
    value = int(group) if isinstance(group, int | np.integer) else -1
    if not _is_int(group) or not 0 <= value <= MAX_GROUP:
        raise InvalidArgumentError(f"a group index is an int in [0, 2**32), got {group!r}")
    return value


def check_key(key: object) -> BlockKey:
    """``key`` if it is a well-formed :class:`BlockKey` (16-byte fingerprint, u32 group,
    128-bit unsigned hash); an :class:`InvalidArgumentError` naming the field otherwise.
    Every tier checks a whole batch this way before it changes anything."""
    if not isinstance(key, tuple) or len(key) != 3:
        raise InvalidArgumentError(f"a block key is (fingerprint, group, hash), got {key!r}")
    fingerprint, group, block_hash = key
    _check_fingerprint(fingerprint)
    check_group(group)
    if not _is_int(block_hash) or not 0 <= int(block_hash) < _HASH_LIMIT:
        raise InvalidArgumentError(f"a block hash is an int in [0, 2**128), got {block_hash!r}")
    if type(key) is BlockKey and type(group) is int and type(block_hash) is int:
        return key
    return BlockKey(fingerprint, int(group), int(block_hash))


def block_keys(
    fingerprint: bytes, group: int, hashes: npt.ArrayLike | Iterable[int]
) -> list[BlockKey]:
    """Keys for one group's hashes, given as an ``(n, 2)`` uint64 array or 128-bit ints.

    An array must hold unsigned 64-bit words (or non-negative signed ones): a negative
    word is refused rather than wrapped to ``2**64 - 1``.
    """
    _check_fingerprint(fingerprint)
    group = check_group(group)
    if isinstance(hashes, np.ndarray):
        arr = np.asarray(hashes)
        if arr.ndim != 2 or arr.shape[1] != 2:
            raise InvalidArgumentError(
                f"block hashes must be an (n, 2) uint64 array, got shape {arr.shape}"
            )
        if arr.dtype.kind not in "ui":
            raise InvalidArgumentError(
                f"block hashes must be an integer (n, 2) array, got dtype {arr.dtype}"
            )
        if arr.dtype.kind == "i" and arr.size and int(arr.min()) < 0:
            raise InvalidArgumentError(
                "block hashes must be unsigned: the array holds a negative word"
            )
        rows = arr.astype(np.uint64, copy=False).tolist()
        return [BlockKey(fingerprint, group, int(lo) | (int(hi) << 64)) for lo, hi in rows]
    out = []
    for h in hashes:  # type: ignore[union-attr]
        if not _is_int(h):
            raise InvalidArgumentError(f"a block hash is an int, got {h!r}")
        value = int(h)  # type: ignore[arg-type]
        if not 0 <= value < _HASH_LIMIT:
            raise InvalidArgumentError(f"block hash {value} is not a 128-bit unsigned value")
        out.append(BlockKey(fingerprint, group, value))
    return out


def _check_fingerprint(fingerprint: bytes) -> None:
    if not isinstance(fingerprint, bytes) or len(fingerprint) != FINGERPRINT_BYTES:
        raise InvalidArgumentError(
            f"a model fingerprint is {FINGERPRINT_BYTES} bytes, got {fingerprint!r}"
        )


def model_fingerprint(
    source: Any,
    *,
    weights: str | None = None,
    tp_rank: int = 0,
    tp_size: int = 1,
    extra: Mapping[str, Any] | None = None,
) -> ModelFingerprint:
    """The 16-byte digest that namespaces a model's offloaded blocks.

    ``source`` is a ``MemoryPlan`` (preferred: it carries each group's layers, spec and
    block size), a ``ModelSpec``, or a plain description dict (anything JSON-like).
    Only what changes a block's bytes goes in: the model name, every group's kind,
    layers, spec and block size, ``weights`` (a revision or checksum of the weights:
    the config alone does not tell a fine-tune from its base model), the TP rank and
    size, the format version, and ``extra``. The pool sizes and memory budget stay out,
    so a server restarted with another budget still finds its blocks.

    Without ``weights`` the fingerprint serves process-local tiers only: the disk and
    Redis tiers refuse it (:func:`require_weights`).
    """
    weights = check_weights(weights)
    if tp_size < 1 or not 0 <= tp_rank < tp_size:
        raise InvalidArgumentError(f"tp_rank {tp_rank} is not in range for tp_size {tp_size}")
    description = {
        "format_version": FORMAT_VERSION,
        "source": describe_source(source),
        "weights": weights,
        "tp_rank": int(tp_rank),
        "tp_size": int(tp_size),
        "extra": _canonical(dict(extra) if extra is not None else {}),
    }
    text = json.dumps(description, sort_keys=True, separators=(",", ":"), allow_nan=False)
    digest = hashlib.blake2b(text.encode(), digest_size=FINGERPRINT_BYTES).digest()
    return ModelFingerprint(digest, weights)


#: File names :func:`weights_checksum` reads in a directory.
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")


def weights_checksum(path: str | os.PathLike[str]) -> str:
    """A weights identity from the files themselves: ``blake2b:<hex>`` over every weight
    file (:data:`WEIGHT_SUFFIXES`) of a directory, in name order, or over one file.

    Each file's relative name and whole content go in, so a changed tensor changes the
    identity; it reads every byte (minutes for hundreds of GB), so an engine that knows
    its revision can pass that instead. Symbolic links to files are followed (a Hugging
    Face snapshot links into its blob store); anything that is not a regular file is
    refused.
    """
    root = Path(path)
    if root.is_file():
        files = [root]
        names = [root.name]
    elif root.is_dir():
        files = sorted(p for p in root.rglob("*") if p.suffix in WEIGHT_SUFFIXES and p.is_file())
        names = [p.relative_to(root).as_posix() for p in files]
    else:
        raise InvalidArgumentError(f"weights_checksum: {str(root)!r} is not a file or directory")
    if not files:
        raise InvalidArgumentError(
            f"weights_checksum: no weight files ({', '.join(WEIGHT_SUFFIXES)}) under {str(root)!r}"
        )
    h = hashlib.blake2b(digest_size=FINGERPRINT_BYTES)
    for name, file in zip(names, files, strict=True):
        h.update(name.encode() + b"\0")
        with open(file, "rb") as f:  # a regular file (checked above), links followed
            size = os.fstat(f.fileno()).st_size
            h.update(size.to_bytes(8, "little"))
            while chunk := f.read(1 << 22):
                h.update(chunk)
    return f"blake2b:{h.hexdigest()}"


def describe_source(source: Any) -> Any:
    """The canonical, JSON-ready description of a plan, model spec or dict."""
    groups = getattr(source, "groups", None)
    if groups is not None and hasattr(source, "model"):
        # A MemoryPlan: the model plus, per group, what fixes the page layout.
        return {
            "plan": {
                "model": describe_source(source.model),
                "groups": [
                    {
                        "index": int(g.index),
                        "kind": str(g.kind),
                        "layers": [int(x) for x in g.layers],
                        "block_size": int(g.block_size),
                        "page_size_bytes": int(g.page_size_bytes),
                        "spec": _canonical(g.spec),
                    }
                    for g in groups
                ],
            }
        }
    if hasattr(source, "layer_specs") and hasattr(source, "name"):
        return {"model": _canonical(source)}
    if isinstance(source, Mapping):
        return {"description": _canonical(source)}
    raise InvalidArgumentError(
        "a model fingerprint needs a MemoryPlan, a ModelSpec or a description dict, "
        f"got {type(source).__name__}"
    )


def _canonical(value: Any) -> Any:
    """Turn specs and containers into JSON values whose text never varies between runs."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            raise InvalidArgumentError(f"cannot fingerprint the float {value}")
        return value
    if isinstance(value, enum.Enum):
        return _canonical(value.value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return _canonical(float(value))
    if isinstance(value, np.dtype):
        return {"dtype": value.str}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        # Fields excluded from equality (notes, caches) don't change what a block holds.
        fields = {
            f.name: _canonical(getattr(value, f.name))
            for f in dataclasses.fields(value)
            if f.compare
        }
        return {"__type__": type(value).__name__, **fields}
    if isinstance(value, Mapping):
        return {str(k): _canonical(v) for k, v in value.items()}
    if isinstance(value, Sequence) and not isinstance(value, bytes | bytearray):
        return [_canonical(v) for v in value]
    if isinstance(value, bytes | bytearray):
        return {"bytes": bytes(value).hex()}
    module = type(value).__module__
    if module.startswith("torch") and type(value).__name__ == "dtype":
        return {"dtype": str(value)}
    # Anything else could print an address or a set order: refuse rather than guess.
    raise InvalidArgumentError(f"cannot fingerprint a value of type {type(value).__name__}")
