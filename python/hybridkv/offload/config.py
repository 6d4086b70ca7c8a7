"""Offload configuration and the ``--offload`` spec string.

``parse_offload_spec("cpu:8GiB,disk:/path:100GiB,redis://127.0.0.1:6379")`` gives an
:class:`OffloadConfig`: the tiers in lookup order (fastest first), each with its byte
budget, and the write policy. Items, comma separated:

- ``cpu:SIZE``: host memory (pinned when CUDA is present);
- ``disk:PATH:SIZE``: a directory (created if missing);
- ``redis://HOST:PORT[/DB]`` or ``rediss://...``, optionally followed by ``:SIZE`` (a
  size with a unit, e.g. ``redis://h:6379:4GiB``); without a size this process does
  not trim Redis itself and the server's own ``maxmemory`` policy decides;
- ``write-through`` or ``write-back`` (default ``write-through``): store every block in
  every tier at once, or only in the first tier and move blocks down on eviction.

Sizes: a number with an optional unit, ``B``, ``KiB``/``MiB``/``GiB``/``TiB`` (or
``K``/``M``/``G``/``T``, also binary) and ``KB``/``MB``/``GB``/``TB`` (decimal).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

from hybridkv.errors import OffloadConfigError
from hybridkv.offload.redact import redact_text, redact_url

WritePolicy = Literal["write-through", "write-back"]
WRITE_POLICIES: tuple[WritePolicy, ...] = ("write-through", "write-back")

_UNITS = {
    "": 1,
    "b": 1,
    "k": 1 << 10,
    "kib": 1 << 10,
    "m": 1 << 20,
    "mib": 1 << 20,
    "g": 1 << 30,
    "gib": 1 << 30,
    "t": 1 << 40,
    "tib": 1 << 40,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*$")


def parse_size(text: str, *, require_unit: bool = False) -> int:
    """Bytes in a size string such as ``8GiB``, ``100GB``, ``1.5G`` or ``4096``."""
    m = _SIZE_RE.match(text)
    unit = m.group(2).lower() if m else ""
    if m is None or unit not in _UNITS or (require_unit and not unit):
        raise OffloadConfigError(f"not a size: {text!r} (use e.g. 8GiB, 512MiB, 100GB)")
    value = float(m.group(1)) * _UNITS[unit]
    if value < 1:
        raise OffloadConfigError(f"a tier budget must be at least one byte, got {text!r}")
    return int(value)


def format_size(nbytes: float) -> str:
    """A short binary-unit rendering, e.g. ``8.0 GiB``."""
    value = float(nbytes)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")  # pragma: no cover


@dataclass(frozen=True)
class CpuTierConfig:
    """Host-memory tier: ``budget_bytes`` of block payloads, LRU."""

    budget_bytes: int
    pin_memory: bool | None = None  # None: pinned exactly when torch sees CUDA

    kind = "cpu"
    #: Whether blocks outlive the process (then the fingerprint must name the weights).
    persistent = False

    def describe(self) -> str:
        return f"cpu:{format_size(self.budget_bytes)}"


@dataclass(frozen=True)
class DiskTierConfig:
    """Directory tier: one checksummed file per block, atomic writes, LRU."""

    path: str
    budget_bytes: int
    fsync: bool = True

    kind = "disk"
    persistent = True

    def describe(self) -> str:
        return f"disk:{self.path}:{format_size(self.budget_bytes)}"


@dataclass(frozen=True)
class RedisTierConfig:
    """Remote tier: a Redis (or Valkey) server reached with short timeouts and an
    overall deadline per call. The URL may hold credentials: the repr and
    :meth:`describe` mask them (:func:`~hybridkv.offload.redact.redact_url`)."""

    url: str = field(repr=False)
    budget_bytes: int | None = None
    socket_timeout_s: float = 0.25
    connect_timeout_s: float = 0.25
    retry_interval_s: float = 5.0
    ttl_s: int | None = None
    call_timeout_s: float = 2.0

    kind = "redis"
    persistent = True

    def __repr__(self) -> str:
        return (
            f"RedisTierConfig(url={redact_url(self.url)!r}, budget_bytes={self.budget_bytes!r}, "
            f"socket_timeout_s={self.socket_timeout_s!r}, "
            f"connect_timeout_s={self.connect_timeout_s!r}, "
            f"retry_interval_s={self.retry_interval_s!r}, ttl_s={self.ttl_s!r}, "
            f"call_timeout_s={self.call_timeout_s!r})"
        )

    def describe(self) -> str:
        size = "" if self.budget_bytes is None else f":{format_size(self.budget_bytes)}"
        return f"{redact_url(self.url)}{size}"


TierConfig = CpuTierConfig | DiskTierConfig | RedisTierConfig


@dataclass(frozen=True)
class OffloadConfig:
    """The tiers in lookup order plus the write policy and the store queue's bound."""

    tiers: tuple[TierConfig, ...]
    write_policy: WritePolicy = "write-through"
    max_pending_bytes: int = 1 << 30

    def __post_init__(self) -> None:
        if not self.tiers:
            raise OffloadConfigError("an offload config needs at least one tier")
        kinds = [t.kind for t in self.tiers]
        for kind in set(kinds):
            if kinds.count(kind) > 1:
                raise OffloadConfigError(f"the {kind} tier is listed more than once")
        if self.write_policy not in WRITE_POLICIES:
            raise OffloadConfigError(
                f"write policy must be one of {', '.join(WRITE_POLICIES)}, got "
                f"{self.write_policy!r}"
            )
        if self.max_pending_bytes < 1:
            raise OffloadConfigError("max_pending_bytes must be positive")

    def persistent_kinds(self) -> tuple[str, ...]:
        """The kinds of the tiers whose blocks outlive the process (disk, redis): their
        fingerprint must name the weights (:func:`hybridkv.offload.keys.require_weights`)."""
        return tuple(t.kind for t in self.tiers if t.persistent)

    def describe(self) -> str:
        """The config as a spec string (sizes rounded for display)."""
        return ",".join([*(t.describe() for t in self.tiers), self.write_policy])


def parse_offload_spec(spec: str) -> OffloadConfig:
    """Parse an ``--offload`` spec string (see the module docstring) into a config.

    Errors quote the spec with any URL credentials masked.
    """
    try:
        return _parse_offload_spec(spec)
    except OffloadConfigError as exc:
        raise OffloadConfigError(redact_text(str(exc))) from None


def _parse_offload_spec(spec: str) -> OffloadConfig:
    if not isinstance(spec, str) or not spec.strip():
        raise OffloadConfigError("empty offload spec (e.g. cpu:8GiB,disk:/path:100GiB)")
    tiers: list[TierConfig] = []
    policy: WritePolicy = "write-through"
    for raw in spec.split(","):
        item = raw.strip()
        if not item:
            raise OffloadConfigError(f"empty item in offload spec {spec!r}")
        lower = item.lower()
        if lower in WRITE_POLICIES:
            policy = "write-through" if lower == "write-through" else "write-back"
        elif lower.startswith(("redis://", "rediss://")):
            tiers.append(_parse_redis(item))
        elif lower.startswith("cpu:"):
            tiers.append(CpuTierConfig(budget_bytes=parse_size(item[4:])))
        elif lower.startswith("disk:"):
            tiers.append(_parse_disk(item))
        else:
            raise OffloadConfigError(
                f"unknown offload item {item!r}: expected cpu:SIZE, disk:PATH:SIZE, "
                "redis://HOST:PORT, write-through or write-back"
            )
    return OffloadConfig(tiers=tuple(tiers), write_policy=policy)


def _parse_disk(item: str) -> DiskTierConfig:
    body = item[5:]
    path, sep, size = body.rpartition(":")
    if not sep or not path:
        raise OffloadConfigError(f"disk tier needs disk:PATH:SIZE, got {item!r}")
    return DiskTierConfig(path=path, budget_bytes=parse_size(size))


def _parse_redis(item: str) -> RedisTierConfig:
    scheme, _, rest = item.partition("://")
    budget: int | None = None
    head, sep, tail = rest.rpartition(":")
    # A trailing ":SIZE" with a unit is a budget; a bare number there is the port.
    if sep and _SIZE_RE.match(tail) and re.search(r"[A-Za-z]", tail):
        budget = parse_size(tail, require_unit=True)
        rest = head
    hostport = rest.split("/", 1)[0].rsplit("@", 1)[-1]
    if not hostport:
        raise OffloadConfigError(f"redis tier needs a host, got {item!r}")
    if ":" in hostport:
        port = hostport.rsplit(":", 1)[1]
        if not port.isdigit() or not 0 < int(port) < 65536:
            raise OffloadConfigError(f"bad redis port {port!r} in {item!r}")
    return RedisTierConfig(url=f"{scheme.lower()}://{rest}", budget_bytes=budget)
