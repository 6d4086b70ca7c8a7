"""The connector on the real KV-cache manager: per-group keys, loads into fresh blocks,
restarts (in process and in a new process), disagreements and vanished blocks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from hybridkv.errors import InvalidArgumentError
from hybridkv.manager import KVCacheManager
from hybridkv.offload import parse_offload_spec
from hybridkv.offload.connector import OffloadConnector
from hybridkv.offload.pages import HostPages
from hybridkv.scheduler import Scheduler
from offload_helpers import RedisServer, check_loaded, hybrid_plan, model_step

PROMPT = np.random.default_rng(0).integers(1, 1000, 2000).astype(np.int32)


def serve_once(
    connector: OffloadConnector, rid: int, prompt: np.ndarray, chunks: list[int]
) -> None:
    """Compute ``prompt`` in ``chunks`` (ending on checkpoint boundaries where they
    can) and store what each chunk completes."""
    m = connector.manager
    m.add_requests([rid], [prompt])
    done = int(m.get_computed_tokens([rid])[0])
    for n in chunks:
        assert m.allocate_slots([rid], [n])[0]
        model_step(m, connector.pages, connector.fingerprint, rid, done, done + n)
        done += n
        connector.store([rid])
    connector.flush()


def load_into_fresh(connector: OffloadConnector, rid: int, prompt: np.ndarray) -> tuple[int, int]:
    """Look ``prompt`` up, allocate the external tokens plus one, load; (hit, blocks)."""
    m = connector.manager
    m.add_requests([rid], [prompt])
    dev = m.get_computed_tokens([rid])
    found = connector.lookup_external([rid], dev)
    x = int(found.external_tokens[0])
    assert m.allocate_slots([rid], [x + 1])[0]
    written = connector.load_scheduled([rid], dev, [x + 1], [x])
    checked = check_loaded(m, connector.pages, connector.fingerprint, rid, x, x + 1)
    assert checked == written
    return int(found.hit_tokens[0]), written


@pytest.mark.parametrize("tiers", ["disk", "redis"])
def test_three_groups_reload_byte_exact_after_restart(
    tmp_path: Path, redis_server: RedisServer, tiers: str
) -> None:
    """Block sizes 16 and 528 plus a state group: stored by one server, loaded into
    fresh blocks by a restarted one, byte for byte."""
    plan = hybrid_plan()
    spec = f"cpu:1MiB,disk:{tmp_path}:64MiB" if tiers == "disk" else f"cpu:1MiB,{redis_server.url}"
    cfg = parse_offload_spec(spec)
    first = OffloadConnector(KVCacheManager(plan), cfg, HostPages(plan), weights="test")
    serve_once(first, 1, PROMPT, [1056, 944])
    # Full attention 125 blocks, the window 3, the state one checkpoint (1056: only
    # where a step ended on a boundary).
    assert first.stats.stored_blocks == 125 + 3 + 1
    first.close()

    restarted = OffloadConnector(KVCacheManager(plan), cfg, HostPages(plan), weights="test")
    longer = np.concatenate([PROMPT, np.arange(1, 101, dtype=np.int32)])
    hit, written = load_into_fresh(restarted, 7, longer)
    # Full attention holds 2000 tokens, the window up to 1584, the state only 1056:
    # the common hit is the checkpoint at 1056, and the groups disagreed.
    assert hit == 1056
    assert written == 66 + 2 + 1
    assert restarted.stats.disagreements == 1
    assert restarted.report()["per_tier_blocks"][0] == 0  # RAM was empty after restart
    if tiers == "redis":
        restarted.stack.tiers[1].clear_namespace()  # type: ignore[attr-defined]
    restarted.close()


def test_restart_in_a_new_process(tmp_path: Path) -> None:
    plan = hybrid_plan()
    cfg = parse_offload_spec(f"disk:{tmp_path}:64MiB")
    first = OffloadConnector(KVCacheManager(plan), cfg, HostPages(plan), weights="test")
    serve_once(first, 1, PROMPT, [528, 528, 944])
    first.close()
    code = textwrap.dedent(
        f"""
        import json, sys
        import numpy as np
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from offload_helpers import check_loaded, hybrid_plan
        from hybridkv.manager import KVCacheManager
        from hybridkv.offload import parse_offload_spec
        from hybridkv.offload.connector import OffloadConnector
        from hybridkv.offload.pages import HostPages
        plan = hybrid_plan()
        c = OffloadConnector(KVCacheManager(plan), parse_offload_spec({f"disk:{tmp_path}:64MiB"!r}),
                             HostPages(plan), weights="test")
        prompt = np.random.default_rng(0).integers(1, 1000, 2000).astype(np.int32)
        c.manager.add_requests([3], [prompt])
        dev = c.manager.get_computed_tokens([3])
        found = c.lookup_external([3], dev)
        x = int(found.external_tokens[0])
        assert c.manager.allocate_slots([3], [x + 1])[0]
        written = c.load_scheduled([3], dev, [x + 1], [x])
        checked = check_loaded(c.manager, c.pages, c.fingerprint, 3, x, x + 1)
        print(json.dumps({{"hit": x, "written": written, "checked": checked}}))
        """
    )
    env = dict(os.environ, PYTHONHASHSEED="4242")
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
    )
    got = json.loads(out.stdout.strip().splitlines()[-1])
    # Checkpoints at 528 and 1056 (the chunks ended there): the hit is 1056.
    assert got == {"hit": 1056, "written": 66 + 2 + 1, "checked": 66 + 2 + 1}


def test_state_all_mode_loads_every_checkpoint(tmp_path: Path) -> None:
    """``mamba_cache_mode="all"``: the manager caches a checkpoint at every boundary,
    so a load fills every checkpoint entry up to the hit, each into its own block."""
    plan = hybrid_plan((400, 40, 40), mode="all")
    cfg = parse_offload_spec(f"disk:{tmp_path}:64MiB")
    first = OffloadConnector(KVCacheManager(plan), cfg, HostPages(plan), weights="test")
    serve_once(first, 1, PROMPT, [2000])
    assert first.stats.stored_blocks == 125 + 3 + 3  # checkpoints at 528, 1056, 1584
    first.close()
    again = OffloadConnector(KVCacheManager(plan), cfg, HostPages(plan), weights="test")
    hit, written = load_into_fresh(again, 2, PROMPT)
    assert hit == 1584 and written == 99 + 3 + 3
    again.close()


def test_other_model_or_rank_gets_no_hits(tmp_path: Path) -> None:
    plan = hybrid_plan()
    cfg = parse_offload_spec(f"disk:{tmp_path}:64MiB")
    first = OffloadConnector(KVCacheManager(plan), cfg, HostPages(plan), weights="test")
    serve_once(first, 1, PROMPT, [1056, 944])
    first.close()
    other_rank = OffloadConnector(
        KVCacheManager(plan), cfg, HostPages(plan), weights="test", tp_rank=1, tp_size=2
    )
    m = other_rank.manager
    m.add_requests([1], [PROMPT])
    found = other_rank.lookup_external([1], m.get_computed_tokens([1]))
    assert found.hit_tokens.tolist() == [0] and found.group_tokens.max() == 0
    other_rank.close()


def test_vanished_blocks_lower_the_hit_never_serve_garbage(tmp_path: Path) -> None:
    plan = hybrid_plan()
    cfg = parse_offload_spec(f"disk:{tmp_path}:64MiB")
    first = OffloadConnector(KVCacheManager(plan), cfg, HostPages(plan), weights="test")
    serve_once(first, 1, PROMPT, [528, 528, 944])
    first.close()
    again = OffloadConnector(KVCacheManager(plan), cfg, HostPages(plan), weights="test")
    # Corrupt the full-attention block holding tokens [800, 816): the index still lists
    # it, the read refuses it, and the hit falls back to the checkpoint at 528.
    m = again.manager
    m.add_requests([5], [PROMPT])
    from hybridkv.offload import block_keys

    key = block_keys(again.fingerprint, 0, m.block_hashes(0, 5)[50:51])[0]
    disk = again.stack.tiers[0]
    path = disk.path_of(key)  # type: ignore[attr-defined]
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(data)
    dev = m.get_computed_tokens([5])
    found = again.lookup_external([5], dev)
    assert found.hit_tokens.tolist() == [528]
    assert again.stats.fetch_shortfalls == 1
    x = 528
    assert m.allocate_slots([5], [x + 1])[0]
    assert again.load_scheduled([5], dev, [x + 1], [x]) == 33 + 1 + 1
    check_loaded(m, again.pages, again.fingerprint, 5, x, x + 1)
    again.close()


def test_load_without_a_held_lookup_is_refused(tmp_path: Path) -> None:
    plan = hybrid_plan()
    c = OffloadConnector(
        KVCacheManager(plan),
        parse_offload_spec(f"disk:{tmp_path}:1MiB"),
        HostPages(plan),
        weights="test",
    )
    c.manager.add_requests([1], [PROMPT])
    c.manager.get_computed_tokens([1])
    assert c.manager.allocate_slots([1], [600])[0]
    with pytest.raises(InvalidArgumentError):
        c.load_scheduled([1], [0], [600], [528])
    c.close()


def test_redis_down_means_no_external_hits_and_no_crash(own_redis: RedisServer) -> None:
    plan = hybrid_plan()
    cfg = parse_offload_spec(own_redis.url)
    first = OffloadConnector(KVCacheManager(plan), cfg, HostPages(plan), weights="test")
    serve_once(first, 1, PROMPT, [1056, 944])
    first.close()
    own_redis.stop()
    again = OffloadConnector(KVCacheManager(plan), cfg, HostPages(plan), weights="test")
    again.manager.add_requests([2], [PROMPT])
    found = again.lookup_external([2], again.manager.get_computed_tokens([2]))
    assert found.hit_tokens.tolist() == [0]
    assert again.store([2]) == 0  # nothing computed yet: nothing to store
    again.close()


def run_scheduler(connector: OffloadConnector, prompts: dict[int, np.ndarray]) -> dict[str, int]:
    """Serve ``prompts`` (4 output tokens each) through the scheduler with the
    connector as its external source; check every load; return token counts."""
    sched = Scheduler(
        connector.manager, max_num_batched_tokens=1024, max_num_seqs=4, external=connector
    )
    for rid, p in prompts.items():
        sched.add_request(rid, p, 4)
    counts = {"device": 0, "external": 0, "prompt": 0}
    while sched.has_unfinished():
        out = sched.schedule()
        before, new, ext = out.num_computed_before, out.num_new_tokens, out.num_external_tokens
        connector.load_scheduled(out.req_ids, before, new, ext)
        for rid, b, n, x in zip(out.req_ids, before, new, ext, strict=True):
            if x:
                check_loaded(connector.manager, connector.pages, connector.fingerprint,
                             int(rid), int(b + x), int(b + n))  # fmt: skip
            model_step(connector.manager, connector.pages, connector.fingerprint,
                       int(rid), int(b + x), int(b + n))  # fmt: skip
        connector.store(out.req_ids)
        counts["device"] += int(out.new_hit_tokens.sum()) - int(
            ext[np.isin(out.req_ids, out.new_req_ids)].sum()
        )
        counts["external"] += int(ext.sum())
        counts["prompt"] += int(out.new_prompt_lens.sum())
        sched.update_from_output(np.full(out.sample_req_ids.shape[0], 5, dtype=np.int32))
    connector.flush()
    assert len(sched.finished) == len(prompts)
    return counts


def test_scheduler_restart_gets_its_prefixes_back(tmp_path: Path) -> None:
    plan = hybrid_plan((600, 60, 60))
    cfg = parse_offload_spec(f"cpu:256KiB,disk:{tmp_path}:64MiB")
    rng = np.random.default_rng(1)
    shared = rng.integers(1, 1000, 1600).astype(np.int32)
    prompts = {
        i: np.concatenate([shared, rng.integers(1, 1000, 300 + 50 * i).astype(np.int32)])
        for i in range(4)
    }
    first = OffloadConnector(KVCacheManager(plan), cfg, HostPages(plan), weights="test")
    cold = run_scheduler(first, prompts)
    assert cold["external"] == 0
    first.close()
    restarted = OffloadConnector(KVCacheManager(plan), cfg, HostPages(plan), weights="test")
    warm = run_scheduler(restarted, {i + 10: p for i, p in prompts.items()})
    assert warm["external"] > 0
    # Everything the first server computed at checkpoint granularity comes back
    # (device hits between the restarted requests count too).
    assert warm["device"] + warm["external"] >= cold["device"] + 4 * 1056 - 1056
    assert restarted.stats.loaded_blocks > 0
    restarted.close()
