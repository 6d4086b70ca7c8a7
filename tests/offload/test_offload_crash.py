"""A disk writer killed with SIGKILL mid-write: after restart no corrupt block is served."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

from hybridkv.offload import BlockKey, DiskTier, model_fingerprint
from hybridkv.offload.block_format import HEADER_BYTES
from offload_helpers import payload_for

FP = model_fingerprint({"name": "crash-test"}, weights="test")
SIZES = {0: 1 << 20, 1: 3 * 528 * 64 + 17, 2: 40_000}  # odd sizes on purpose

WRITER = textwrap.dedent(
    """
    import os, sys, time
    sys.path.insert(0, {helpers!r})
    from offload_helpers import payload_for
    from hybridkv.offload import BlockKey, DiskTier
    root, fp, start, stall = sys.argv[1], bytes.fromhex(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    sizes = {sizes!r}
    if stall == "1":
        real = os.fdatasync
        def slow_sync(fd):
            print("synced-pending", flush=True)  # the temp file is written, not renamed
            time.sleep(60)
            real(fd)
        os.fdatasync = slow_sync
    tier = DiskTier(root, 1 << 40, fp)
    i = start
    while True:
        key = BlockKey(fp, i % 3, i)
        data = payload_for(key, sizes[key.group])
        print("writing", i, flush=True)
        tier.put([(key, data)])
        print("done", i, flush=True)
        i += 1
    """
)


def _run_writer(root: Path, start: int, *, stall: bool, kill_after: int, seed: int) -> set[int]:
    """Start a writer, SIGKILL it, return the indices it reported complete."""
    script = WRITER.format(helpers=str(Path(__file__).parent), sizes=SIZES)
    proc = subprocess.Popen(
        [sys.executable, "-c", script, str(root), FP.hex(), str(start), "1" if stall else "0"],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    done: set[int] = set()
    rng = random.Random(seed)
    try:
        for line in proc.stdout:
            parts = line.split()
            if parts[0] == "done":
                done.add(int(parts[1]))
            if stall and parts[0] == "synced-pending":
                break
            if not stall and parts[0] == "writing" and int(parts[1]) >= start + kill_after:
                # Land somewhere inside the write: payload, fsync or rename.
                busy_until = rng.random() * 0.004
                while busy_until > 0:
                    busy_until -= 0.0005
                    os.sched_yield()
                break
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
    return done


def _check_everything(root: Path, upto: int, complete: set[int]) -> DiskTier:
    tier = DiskTier(root, 1 << 40, FP)
    keys = [BlockKey(FP, i % 3, i) for i in range(upto)]
    served = tier.get(keys)
    for i, (key, got) in enumerate(zip(keys, served, strict=True)):
        if got is not None:
            assert bytes(got) == payload_for(key, SIZES[key.group]), f"block {i} corrupt"
        if i in complete:
            assert got is not None, f"block {i} was reported stored but is missing"
    return tier


def test_sigkill_mid_write_never_serves_corrupt_blocks(tmp_path: Path) -> None:
    complete: set[int] = set()
    start = 0
    stalled_temp_files = 0
    for round_ in range(6):
        stall = round_ % 3 == 0
        done = _run_writer(tmp_path, start, stall=stall, kill_after=3 + round_, seed=round_)
        complete |= done
        tmp_dir = tmp_path / "hkv-v1" / FP.hex() / "tmp"
        leftovers = list(tmp_dir.iterdir())
        if stall:
            # Killed between writing the temp file and renaming it: the proof that the
            # kill landed mid-write. Its block must not appear.
            assert len(leftovers) == 1
            stalled_temp_files += 1
        upto = max(complete | {start}) + 2
        tier = _check_everything(tmp_path, upto, complete)
        assert list(tmp_dir.iterdir()) == []  # the restart cleaned the dead writer's temp
        assert tier.stats.corrupt_removed == 0
        start = upto
    assert stalled_temp_files == 2
    assert len(complete) >= 6 * 3

    # Now damage survivors by hand: flipped bits and truncations are misses, removed.
    tier = DiskTier(tmp_path, 1 << 40, FP)
    victims = sorted(complete)[:6]
    for n, i in enumerate(victims):
        path = tier.path_of(BlockKey(FP, i % 3, i))
        data = bytearray(path.read_bytes())
        if n % 3 == 0:
            data[HEADER_BYTES + (len(data) - HEADER_BYTES) // 2] ^= 0x01
            path.write_bytes(data)
        elif n % 3 == 1:
            path.write_bytes(data[: len(data) // 2])
        else:
            path.write_bytes(data[: HEADER_BYTES - 3])
    restarted = _check_everything(tmp_path, start, complete - set(victims))
    assert restarted.get([BlockKey(FP, i % 3, i) for i in victims]) == [None] * len(victims)
    # Truncated below a header: removed by the scan; the others by the read.
    assert restarted.removed_on_scan + restarted.stats.corrupt_removed == len(victims)
    assert all(not tier.path_of(BlockKey(FP, i % 3, i)).exists() for i in victims)
