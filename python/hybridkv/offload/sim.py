"""Offload inside ``hybridkv simulate --offload SPEC``.

The simulator builds one manager per layout through :meth:`SimOffload.manager_factory`;
each gets its own :class:`~hybridkv.offload.connector.OffloadConnector` (its plan, hence
its fingerprint and namespaces, differ). The simulator has no KV memory, so pages are
:class:`~hybridkv.offload.pages.SyntheticPages`: real, checkable bytes at ``1/scale`` of
each group's page size, with every tier budget scaled by the same factor, so each tier
holds and evicts what it would at full size. Disk writes skip fsync here (a simulation
needs no power-loss durability; writes stay atomic). Stores run inline rather than on
the worker thread: in simulated time a store is off the critical path either way, and
inline stores keep the report deterministic (a worker racing the simulated clock would
make hits depend on the host's speed). A disk directory or Redis server
kept from an earlier run gives cross-restart hits, as a restarted server would, for
the same ``--offload-weights`` only: that identity is required with a disk or Redis
tier, and goes into the fingerprint.

Load time is modelled: bytes over a per-tier bandwidth (defaults below: PCIe host
copies, an NVMe drive, 10 GbE to Redis), weighted by where loaded blocks came from.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
import numpy.typing as npt

from hybridkv.errors import OffloadConfigError
from hybridkv.offload.config import DiskTierConfig, OffloadConfig, format_size
from hybridkv.offload.connector import OffloadConnector
from hybridkv.offload.keys import check_weights
from hybridkv.offload.pages import SyntheticPages

#: Modelled load bandwidth per tier kind, bytes/s.
TIER_BANDWIDTH = {"cpu": 25e9, "disk": 6e9, "redis": 1.25e9}

I64 = npt.NDArray[np.int64]


class SimOffload:
    """The simulator's offload hooks over one connector per simulated layout."""

    def __init__(
        self, config: OffloadConfig, *, hash_seed: int = 0, weights: str | None = None
    ) -> None:
        self.weights = check_weights(weights)
        persistent = config.persistent_kinds()
        if persistent and self.weights is None:
            # Checked before the run: blocks kept from a run with other weights under
            # the same config would otherwise be served (and counted as hits).
            raise OffloadConfigError(
                f"--offload with a {' and a '.join(persistent)} tier needs --offload-weights "
                "ID (the weights' revision or checksum): those tiers keep blocks across "
                "runs, and blocks computed with other weights under the same model config "
                "would be served"
            )
        tiers = tuple(
            replace(t, fsync=False) if isinstance(t, DiskTierConfig) else t for t in config.tiers
        )
        self.config = replace(config, tiers=tiers)
        self.hash_seed = hash_seed
        self.connector: OffloadConnector | None = None
        self.reports: list[dict[str, Any]] = []

    def manager_factory(self, plan: Any) -> Any:
        """Make the layout's manager and bind a fresh connector to it."""
        from hybridkv.cache.manager import KVCacheManager

        self._finish()
        manager = KVCacheManager(plan, enable_prefix_caching=True, hash_seed=self.hash_seed)
        pages = SyntheticPages.for_budget(plan)
        self.connector = OffloadConnector(
            manager,
            pages.scaled_config(self.config),
            pages,
            weights=self.weights,
            background=False,
        )
        return manager

    def _finish(self) -> None:
        if self.connector is not None:
            self.reports.append(self.report())
            self.connector.close()
            self.connector = None

    def _bound(self) -> OffloadConnector:
        if self.connector is None:
            raise RuntimeError("SimOffload used before manager_factory bound a manager")
        return self.connector

    # -- the simulator's hooks --------------------------------------------------------

    def lookup(self, req_ids: I64, device_hit_tokens: I64) -> I64:
        return self._bound().lookup(req_ids, device_hit_tokens)

    def on_step(self, manager: Any, output: Any) -> None:
        self._bound().on_step(manager, output)

    def load_seconds(self, tokens: int) -> float:
        c = self._bound()
        served = c.stack.served
        total = sum(served)
        if total == 0:
            bw = TIER_BANDWIDTH.get(c.stack.tiers[0].kind, 1e9)
        else:
            inv = sum(
                n / TIER_BANDWIDTH.get(t.kind, 1e9)
                for n, t in zip(served, c.stack.tiers, strict=True)
            )
            bw = total / inv
        c.load_bytes_per_second = bw
        return c.load_seconds(tokens)

    def report(self) -> dict[str, Any]:
        """The bound connector's counters, with per-tier shares of the loaded blocks."""
        c = self._bound()
        c.flush()
        rep = c.report()
        pages = c.pages
        assert isinstance(pages, SyntheticPages)
        served = rep["per_tier_blocks"]
        total = sum(served)
        rep["scale"] = pages.scale
        rep["load_mismatches"] = pages.mismatches
        rep["tier_share"] = {
            t["kind"]: (n / total if total else 0.0)
            for t, n in zip(rep["tiers"], served, strict=True)
        }
        rep["spec"] = self.config.describe()
        return rep

    def close(self) -> list[dict[str, Any]]:
        """Finish the last layout; every layout's report in order."""
        self._finish()
        return self.reports


def render_offload(layouts: dict[str, dict[str, Any]]) -> Any:
    """A rich table of external hits per layout and tier (``layouts``: each layout's
    simulation report, with its ``offload`` section)."""
    from rich.table import Table

    table = Table(title="offload: external hits by tier")
    for col in ("layout", "tier", "blocks stored", "blocks served", "share", "budget", "used"):
        table.add_column(col, justify="left" if col in ("layout", "tier") else "right")
    for lay, layout in layouts.items():
        rep = layout["offload"]
        scale = int(rep.get("scale", 1))
        for t, served in zip(rep["tiers"], rep["per_tier_blocks"], strict=True):
            budget = t["budget_bytes"]
            table.add_row(
                lay,
                t["kind"],
                f"{t['stored']:,}",
                f"{served:,}",
                f"{rep['tier_share'][t['kind']]:.1%}",
                "-" if budget is None else format_size(budget * scale),
                format_size(t["used_bytes"] * scale),
            )
        prompt = int(layout.get("prompt_tokens", 0))
        ext = int(layout.get("external_hit_tokens", rep["external_tokens_loaded"]))
        rate = f"{ext / prompt:.1%} of prompt" if prompt else "-"
        table.add_row(
            lay,
            "[bold]all[/]",
            f"{rep['stored_blocks']:,}",
            f"{rep['loaded_blocks']:,}",
            f"{ext:,} tok",
            rate,
            f"{rep['disagreements']} disagree, {rep['load_mismatches']} bad loads",
        )
    return table
