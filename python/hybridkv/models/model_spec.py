"""A model as the KV cache sees it: one spec per cache-holding (sub)layer."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from hybridkv.errors import InvalidArgumentError
from hybridkv.models.specs import SPEC_TYPES, KVSpec


@dataclass(frozen=True)
class ModelSpec:
    """A model's per-layer KV-cache specs, in layer order.

    ``layer_specs`` has one entry per cache layer. A model whose blocks hold two caches
    (Falcon-H1: attention and Mamba-2 side by side) lists both, and ``layer_names`` says
    which is which (default ``"layers.{i}"``). ``layer_indices`` gives each cache layer's
    index as the model numbers its layers (default: the first number in its name, e.g. 7
    for ``"layers.7.self_attn"``, else its position), so a model whose MLP-only layers
    hold no cache (Nemotron-H) still reports its own layer numbers. Build one by hand
    from a list of specs, or
    with :func:`hybridkv.models.load_model`. ``hidden_size``, ``vocab_size`` and
    ``num_attention_heads`` are informative (cost models), taken from the config.
    ``max_model_len``, when set, is the longest sequence the model can run (decoders
    with learned positions: Whisper's 448, BART's 1024); the planner refuses more.
    """

    name: str
    #: Stored as a tuple (a list is accepted and converted).
    layer_specs: Sequence[KVSpec]
    layer_names: Sequence[str] = ()
    model_type: str = "custom"
    source: str | None = None
    tp: int = 1
    hidden_size: int | None = None
    vocab_size: int | None = None
    num_attention_heads: int | None = None
    notes: Sequence[str] = field(default=(), compare=False)
    layer_indices: Sequence[int] = ()
    max_model_len: int | None = None

    def __post_init__(self) -> None:
        specs = self.layer_specs
        if isinstance(specs, (str, bytes)) or not isinstance(specs, Sequence):
            raise InvalidArgumentError("layer_specs must be a sequence of specs")
        specs = tuple(specs)
        if not specs:
            raise InvalidArgumentError(f"model {self.name!r} has no layers")
        for i, spec in enumerate(specs):
            if not isinstance(spec, SPEC_TYPES):
                raise InvalidArgumentError(
                    f"layer {i} of {self.name!r} is not a spec: {type(spec).__name__}"
                )
        names = tuple(self.layer_names) or tuple(f"layers.{i}" for i in range(len(specs)))
        if len(names) != len(specs):
            raise InvalidArgumentError(
                f"{len(names)} layer names for {len(specs)} layer specs in {self.name!r}"
            )
        indices = tuple(self.layer_indices) or tuple(
            _index_in_name(name, i) for i, name in enumerate(names)
        )
        if len(indices) != len(specs) or not all(
            isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in indices
        ):
            raise InvalidArgumentError(
                f"layer_indices of {self.name!r} must be {len(specs)} non-negative ints"
            )
        bound = self.max_model_len
        if bound is not None and (
            isinstance(bound, bool) or not isinstance(bound, int) or bound < 1
        ):
            raise InvalidArgumentError(
                f"max_model_len of {self.name!r} must be a positive int or None, got {bound!r}"
            )
        if isinstance(self.tp, bool) or not isinstance(self.tp, int) or self.tp < 1:
            raise InvalidArgumentError(f"tp must be a positive int, got {self.tp!r}")
        object.__setattr__(self, "layer_specs", specs)
        object.__setattr__(self, "layer_names", names)
        object.__setattr__(self, "layer_indices", indices)
        object.__setattr__(self, "notes", tuple(self.notes))

    def model_layers(self, positions: Sequence[int]) -> list[int]:
        """The model's layer numbers of the cache layers at ``positions``."""
        return [self.layer_indices[i] for i in positions]

    @property
    def num_layers(self) -> int:
        """Number of cache layers (sublayers counted separately)."""
        return len(self.layer_specs)

    def layers_of_kind(self, kind: str) -> tuple[int, ...]:
        """Indices of the layers whose spec has ``kind``."""
        return tuple(i for i, s in enumerate(self.layer_specs) if s.kind == kind)

    def kind_counts(self) -> dict[str, int]:
        """How many layers of each kind, in first-seen order."""
        counts: dict[str, int] = {}
        for spec in self.layer_specs:
            counts[spec.kind] = counts.get(spec.kind, 0) + 1
        return counts


_FIRST_NUMBER = re.compile(r"\d+")


def _index_in_name(name: str, position: int) -> int:
    """The first number in a layer name (``"decoder.layers.3.self_attn"`` -> 3)."""
    match = _FIRST_NUMBER.search(name)
    return int(match.group()) if match else position
