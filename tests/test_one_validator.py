"""Arguments are checked once, in the bindings: the Python faces of the manager and of
the prefix hashes hold no checks of their own, and the raw ``hybridkv._core`` objects take
the very forms the faces document and refuse bad ones with the same messages."""

from __future__ import annotations

import ast
import inspect
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from hybridkv import KVCacheManager, ManagerConfig, ManagerGroup, _core, errors
from hybridkv.cache import manager as manager_module
from hybridkv.cache import prefix_hash

CONFIG = ManagerConfig(
    (
        ManagerGroup("full_attention", 4, 40),
        ManagerGroup("sliding_window", 4, 24, window=7),
        ManagerGroup("cross_attention", 4, 12, max_encoder_len=12),
    ),
    "align",
)


@pytest.mark.parametrize("module", [manager_module, prefix_hash])
def test_faces_hold_no_checks(module: Any) -> None:
    tree = ast.parse(inspect.getsource(module))
    raises = [n.lineno for n in ast.walk(tree) if isinstance(n, ast.Raise)]
    assert raises == [], f"{module.__name__} raises at lines {raises}: checks belong in Rust"
    imported = {
        n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module is not None
    }
    assert "hybridkv.errors" not in imported


def _core_manager() -> Any:
    return _core.KVCacheManager(CONFIG.groups, "align", True, 0, 500, False)


def test_core_takes_the_documented_forms() -> None:
    face = KVCacheManager(CONFIG, vocab_size=500)
    core = _core_manager()
    prompts = [np.arange(1, 10, dtype=np.int32), [3, 4, 5, 6, 7], np.arange(2, 7, dtype=np.int64)]
    kw: dict[str, Any] = {
        "lora_ids": [None, 3, np.int64(4)],
        "cache_salts": ["salt", None, b"s"],
        "mm_features": [[(2**100, 1, 2)], None, []],
        "encoder_lens": 8,
    }
    face.add_requests([1, 2, 3], prompts, **kw)
    core.add_requests(
        [1, 2, 3],
        prompts,
        None,
        kw["lora_ids"],
        kw["cache_salts"],
        **{k: kw[k] for k in ("mm_features", "encoder_lens")},
    )
    for g in range(3):
        assert (face.block_hashes(g, 1) == core.block_hashes(g, 1)).all()
    assert (
        face.get_computed_tokens([1, 2, 3]).tolist() == core.get_computed_tokens([1, 2, 3]).tolist()
    )
    # A scalar count applies to every request; num_lookahead_tokens may be left out.
    assert face.allocate_slots([1, 2, 3], 4).tolist() == core.allocate_slots([1, 2, 3], 4).tolist()
    assert face.num_computed_tokens(3).tolist() == core.num_computed_tokens(3).tolist() == [4]
    out = np.zeros((4, 8), dtype=np.int32)
    assert core.block_table_into(0, [1, 2], out) == 2
    assert (face.block_table_into(0, [1, 2], np.zeros((4, 8), np.int32)) == out[:2]).all()


BAD: list[tuple[str, Callable[[Any], object]]] = [
    ("request ids", lambda m: m.free([2**64 - 1])),
    ("request ids", lambda m: m.free(np.array([2**70], dtype=object))),
    ("token ids", lambda m: m.append_tokens([1], [np.array([2**64 - 1], np.uint64)])),
    ("a flat token array needs offsets", lambda m: m.append_tokens([1], np.arange(3))),
    ("LoRA ids", lambda m: m.add_requests([9], [[1, 2]], lora_ids=[-1])),
    ("cache salt", lambda m: m.add_requests([9], [[1, 2]], cache_salts=[5])),
    ("cache_salts has 2 entries", lambda m: m.add_requests([9], [[1]], cache_salts=["a", "b"])),
    ("num_new_tokens", lambda m: m.allocate_slots([1], 2.5)),
    ("new_step", lambda m: m.allocate_slots([1], [1], new_step="yes")),
]


@pytest.mark.parametrize(("needle", "call"), BAD, ids=[b[0] for b in BAD])
def test_face_and_core_refuse_alike(needle: str, call: Callable[[Any], object]) -> None:
    face = KVCacheManager(CONFIG, vocab_size=500)
    core = _core_manager()
    messages = []
    for m in (face, core):
        m.add_requests([1], [np.arange(1, 6, dtype=np.int32)])
        with pytest.raises(errors.InvalidArgumentError, match=needle) as e:
            call(m)
        messages.append(str(e.value))
        assert m.request_ids().tolist() == [1] and m.num_tokens([1]).tolist() == [5]
    assert messages[0] == messages[1]


@pytest.mark.parametrize(
    ("group", "needle"),
    [
        (ManagerGroup("encoder_only", 4, 8), "group 0: kind 'encoder_only' has no pool"),
        (ManagerGroup("sliding_window", 4, 8), "group 0: a sliding_window group needs window"),
        (ManagerGroup("full_attention", 2**64, 8), "group 0: block_size"),
        (ManagerGroup("full_attention", True, 8), "group 0: block_size"),  # type: ignore[arg-type]
    ],
)
def test_plan_groups_are_checked_in_the_bindings(group: ManagerGroup, needle: str) -> None:
    with pytest.raises(errors.InvalidArgumentError, match=needle):
        KVCacheManager(ManagerConfig((group,)))
    with pytest.raises(errors.InvalidArgumentError, match=needle):
        _core.KVCacheManager((group,), "align", True, 0, None, False)


def test_int64_array_is_the_manager_conversion() -> None:
    assert _core.int64_array(5, "x").tolist() == [5]
    assert _core.int64_array(np.array([1, 2], np.uint8), "x").dtype == np.int64
    for bad in ([1.5], [True], ["1"], [2**64 - 1], [[1], [2, 3]]):
        with pytest.raises(errors.InvalidArgumentError, match="ids"):
            _core.int64_array(bad, "ids")
