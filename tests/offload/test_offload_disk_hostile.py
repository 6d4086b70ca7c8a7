"""The disk tier in a directory shared with a careless or hostile user (issue 15 items
1, 5 and 11): symlink traps never make it delete or read outside its namespace, a FIFO,
a link to ``/dev/zero`` or a sparse 8 GB file at a block's path is a miss (never a hang
or a ``MemoryError``), and a bad key is refused before anything touches the disk."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest
from hybridkv.errors import InvalidArgumentError, OffloadConfigError
from hybridkv.offload import BlockKey, DiskTier, model_fingerprint
from hybridkv.offload.block_format import HEADER_BYTES
from offload_helpers import PAGES, items

FP = model_fingerprint({"name": "disk-hostile"}, weights="test")


def _victim(tmp_path: Path) -> Path:
    """A directory outside the cache holding a user's precious files."""
    outside = tmp_path / "precious"
    outside.mkdir()
    (outside / "thesis.tex").write_text("years of work")
    (outside / ("ab" * 16 + ".blk")).write_bytes(b"looks like a block")
    (outside / "123-abc.tmp").write_bytes(b"looks like a temp file")
    (outside / "ab").mkdir()  # looks like a shard
    (outside / "ab" / "notes.txt").write_text("more work")
    return outside


def _untouched(outside: Path) -> bool:
    return (
        sorted(p.name for p in outside.iterdir())
        == sorted(["thesis.tex", "ab" * 16 + ".blk", "123-abc.tmp", "ab"])
        and (outside / "thesis.tex").read_text() == "years of work"
        and (outside / "ab" / "notes.txt").read_text() == "more work"
    )


def _tier(tmp_path: Path, budget: int = 1 << 22) -> DiskTier:
    return DiskTier(tmp_path / "cache", budget, FP, fsync=False, io_threads=1)


# ------------------------------------------------------------------ item 1: symlink traps


@pytest.mark.parametrize("where", ["shard", "group", "tmp-entry", "group-entry"])
def test_links_inside_the_namespace_never_lead_out(tmp_path: Path, where: str) -> None:
    outside = _victim(tmp_path)
    tier = _tier(tmp_path)
    tier.put(items(0, [1], FP))
    ns = tier.namespace
    tier.close()
    if where == "shard":  # g0/ab -> ~/data
        (ns / "g0").mkdir(exist_ok=True)
        (ns / "g0" / "ab").symlink_to(outside)
    elif where == "group":  # g7 -> ~/data
        (ns / "g7").symlink_to(outside)
    elif where == "tmp-entry":  # a link with a temp file's name, into the user's files
        (ns / "tmp" / "999999999-dead.tmp").symlink_to(outside / "thesis.tex")
    else:  # a link with a block's name
        shard = ns / "g0" / ("ab" * 16)[:2]
        shard.mkdir(parents=True, exist_ok=True)
        (shard / ("ab" * 16 + ".blk")).symlink_to(outside / ("ab" * 16 + ".blk"))
    reopened = _tier(tmp_path)
    assert _untouched(outside)
    assert len(reopened) == 1  # the one real block
    # Reading, storing, evicting and discarding through the trap stay inside too.
    trap = BlockKey(FP, 0, int("ab" * 16, 16))
    assert reopened.get([trap]) == [None]
    reopened.put([(trap, b"new bytes")])
    reopened.discard([trap, BlockKey(FP, 7, int("ab" * 16, 16))])
    assert _untouched(outside)


def test_tmp_directory_link_is_refused_not_emptied(tmp_path: Path) -> None:
    outside = _victim(tmp_path)
    tier = _tier(tmp_path)
    ns = tier.namespace
    tier.close()
    (ns / "tmp").rmdir()
    (ns / "tmp").symlink_to(outside)  # tmp -> /scratch
    with pytest.raises(OffloadConfigError, match="symbolic link"):
        _tier(tmp_path)
    assert _untouched(outside)


def test_namespace_link_is_refused(tmp_path: Path) -> None:
    outside = _victim(tmp_path)
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "hkv-v1").symlink_to(outside)
    with pytest.raises(OffloadConfigError, match="symbolic link"):
        _tier(tmp_path)
    assert _untouched(outside)


def test_eviction_never_removes_a_link_swapped_in(tmp_path: Path) -> None:
    outside = _victim(tmp_path)
    page = PAGES[0]
    tier = DiskTier(tmp_path / "cache", 2 * page, FP, fsync=False, io_threads=1)
    blocks = items(0, [1, 2], FP)
    tier.put(blocks)
    first = tier.path_of(blocks[0][0])
    first.unlink()
    first.symlink_to(outside / "thesis.tex")
    tier.put(items(0, [3], FP))  # evicts block 1: its path now holds a link
    assert first.is_symlink() and _untouched(outside)
    assert tier.stats.foreign >= 1


# ------------------------------------------------------------- item 5: bounded reads


def _get_within(tier: DiskTier, key: BlockKey, seconds: float = 10.0) -> list[object]:
    out: list[object] = []
    t = threading.Thread(target=lambda: out.append(tier.get([key])), daemon=True)
    t.start()
    t.join(seconds)
    if t.is_alive():
        # Free the reader (a FIFO waits for a writer), then fail.
        fd = os.open(tier.path_of(key), os.O_WRONLY | os.O_NONBLOCK)
        os.close(fd)
        t.join(5)
        pytest.fail(f"get() of {tier.path_of(key).name} did not return within {seconds}s")
    return out[0]  # type: ignore[return-value]


def test_fifo_at_a_block_path_is_a_miss_not_a_hang(tmp_path: Path) -> None:
    tier = _tier(tmp_path)
    (key, _), *_ = items(0, [5], FP)
    tier.put(items(0, [5], FP))
    path = tier.path_of(key)
    path.unlink()
    os.mkfifo(path)
    assert _get_within(tier, key) == [None]
    assert path.exists() and len(tier) == 0  # left alone, forgotten
    assert tier.stats.foreign == 1
    # A restart ignores it too.
    assert len(_tier(tmp_path)) == 0


def test_link_to_dev_zero_is_a_miss(tmp_path: Path) -> None:
    tier = _tier(tmp_path)
    (key, _), *_ = items(0, [6], FP)
    tier.put(items(0, [6], FP))
    path = tier.path_of(key)
    path.unlink()
    path.symlink_to("/dev/zero")
    assert _get_within(tier, key) == [None]
    assert path.is_symlink() and tier.stats.foreign == 1


def test_sparse_8gb_file_is_a_miss_without_a_big_allocation(tmp_path: Path) -> None:
    tier = _tier(tmp_path, budget=1 << 40)
    (key, _), *_ = items(0, [7], FP)
    tier.put(items(0, [7], FP))
    path = tier.path_of(key)
    with open(path, "r+b") as f:
        f.truncate(8 << 30)
    assert _get_within(tier, key) == [None]
    assert tier.stats.corrupt_removed == 1 and not path.exists()
    # Found at open, a file larger than any block the tier stores is not even indexed.
    with open(path, "wb") as f:
        f.truncate(8 << 30)
    reopened = _tier(tmp_path, budget=1 << 40)
    assert len(reopened) == 0 and reopened.ignored_on_scan == 1
    assert reopened.get([key]) == [None]
    path.unlink()


def test_file_grown_after_indexing_is_read_no_further(tmp_path: Path) -> None:
    tier = _tier(tmp_path)
    blocks = items(0, [8], FP)
    tier.put(blocks)
    key, payload = blocks[0]
    with open(tier.path_of(key), "ab") as f:
        f.write(b"\0" * 4096)
    assert tier.get([key]) == [None] and tier.stats.corrupt_removed == 1
    tier.put(blocks)
    got = tier.get([key])[0]
    assert got is not None and bytes(got) == bytes(payload)


# ----------------------------------------------------------- item 11: bad keys at put


@pytest.mark.parametrize(
    "bad",
    [
        BlockKey(FP, -1, 1),
        BlockKey(FP, 1 << 32, 1),
        BlockKey(FP, 0, -1),
        BlockKey(FP, 0, 1 << 128),
        BlockKey(FP, 0, 1.5),  # type: ignore[arg-type]
        BlockKey(FP, True, 1),
        BlockKey(b"short", 0, 1),
        BlockKey(model_fingerprint({"name": "another"}), 0, 1),
    ],
)
def test_put_with_a_bad_key_changes_nothing(tmp_path: Path, bad: BlockKey) -> None:
    tier = _tier(tmp_path)
    good = items(0, [9], FP)
    with pytest.raises(InvalidArgumentError):
        tier.put([*good, (bad, b"x" * 64)])
    assert len(tier) == 0 and tier.used_bytes == 0 and tier.stats.stored == 0
    assert list((tier.namespace / "tmp").iterdir()) == []
    assert list(tier.namespace.rglob("*.blk")) == []
    assert len(_tier(tmp_path)) == 0
    with pytest.raises(InvalidArgumentError):
        tier.get([bad])


def test_put_with_a_non_buffer_payload_changes_nothing(tmp_path: Path) -> None:
    tier = _tier(tmp_path)
    with pytest.raises(InvalidArgumentError):
        tier.put([*items(0, [9], FP), (BlockKey(FP, 0, 10), 12345)])  # type: ignore[list-item]
    assert len(tier) == 0 and list(tier.namespace.rglob("*.blk")) == []


def test_header_sized_files_are_the_only_short_ones_removed(tmp_path: Path) -> None:
    tier = _tier(tmp_path)
    (key, _), *_ = items(0, [11], FP)
    tier.put(items(0, [11], FP))
    path = tier.path_of(key)
    with open(path, "r+b") as f:
        f.truncate(HEADER_BYTES - 1)
    reopened = _tier(tmp_path)
    assert reopened.removed_on_scan == 1 and not path.exists()
