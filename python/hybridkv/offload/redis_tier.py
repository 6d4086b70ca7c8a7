"""Redis tier: blocks as values on a Redis or Valkey server, shared across processes.

Keys are ``hkv:v<format>:<fingerprint hex>:<group>:<hash hex>``, values the same
self-checking layout as disk files (:mod:`hybridkv.offload.block_format`), so a
corrupt or foreign value is refused, deleted and counted.

Batches go through one non-transactional pipeline of per-key ``GET``/``SET``/
``EXISTS``/``DEL``: one round trip per batch, and no multi-key command, so on Redis
Cluster or Valkey cluster the client can route every key to its own slot. The keys
carry no ``{hash tag}`` on purpose: a tag would put a whole model on one slot, hence
one node, which defeats spreading a large cache over a cluster.

The server being down or slow must never crash or stall a step: sockets time out in a
fraction of a second, the client never retries, and after a failure the tier answers
"miss" without touching the network for ``retry_interval_s``; each outage logs one
warning and the recovery one info line. A budget, when given, trims the keys this
process wrote (least recently used first); across processes the server's own
``maxmemory`` policy is the authority.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterable, Sequence
from typing import Any

from hybridkv.errors import OffloadConfigError
from hybridkv.offload import block_format
from hybridkv.offload.block_format import CorruptBlockError
from hybridkv.offload.keys import FORMAT_VERSION, BlockKey
from hybridkv.offload.tier import ByteLRU, Payload, Tier, as_bytes_view

log = logging.getLogger("hybridkv.offload")


class RedisTier(Tier):
    """LRU-trimmed tier on a Redis server; every failure is a miss or a dropped store."""

    kind = "redis"

    def __init__(
        self,
        url: str,
        fingerprint: bytes,
        *,
        budget_bytes: int | None = None,
        socket_timeout_s: float = 0.25,
        connect_timeout_s: float = 0.25,
        retry_interval_s: float = 5.0,
        ttl_s: int | None = None,
        client: Any = None,
    ) -> None:
        super().__init__(budget_bytes)
        self.url = url
        self.fingerprint = fingerprint
        self.retry_interval_s = retry_interval_s
        self.ttl_s = ttl_s
        self.prefix = f"hkv:v{FORMAT_VERSION}:{fingerprint.hex()}:"
        self._down_until = 0.0
        self._down = False
        #: Pipelines actually sent (a circuit-open call sends none).
        self.round_trips = 0
        self._client = (
            client
            if client is not None
            else self._connect(url, socket_timeout_s, connect_timeout_s)
        )

    @staticmethod
    def _connect(url: str, socket_timeout_s: float, connect_timeout_s: float) -> Any:
        try:
            import redis
            from redis.backoff import NoBackoff
            from redis.retry import Retry
        except ImportError as exc:
            raise OffloadConfigError(
                "the Redis tier needs the redis client: pip install 'hybridkv[redis]'"
            ) from exc
        try:
            return redis.Redis.from_url(
                url,
                socket_timeout=socket_timeout_s,
                socket_connect_timeout=connect_timeout_s,
                retry=Retry(NoBackoff(), 0),
                retry_on_timeout=False,
                health_check_interval=0,
            )
        except ValueError as exc:
            raise OffloadConfigError(f"bad redis URL {url!r}: {exc}") from exc

    def redis_key(self, key: BlockKey) -> str:
        """The server-side key of a block."""
        return f"{self.prefix}{key.group}:{key.block_hash:032x}"

    # ---------------------------------------------------------------- availability

    def _available(self) -> bool:
        return not self._down or time.monotonic() >= self._down_until

    def _failed(self, exc: BaseException) -> None:
        with self._lock:
            self.stats.errors += 1
            self._down_until = time.monotonic() + self.retry_interval_s
            first = not self._down
            self._down = True
        if first:
            log.warning(
                "redis offload tier %s unavailable (%s: %s): treating it as a miss, "
                "retrying in %.1fs",
                self.url,
                type(exc).__name__,
                exc,
                self.retry_interval_s,
            )

    def _succeeded(self) -> None:
        if self._down:
            with self._lock:
                was_down, self._down = self._down, False
            if was_down:
                log.info("redis offload tier %s is back", self.url)

    def _execute(self, fill: Any) -> list[Any] | None:
        """Run one pipeline (``fill(pipe)`` queues the commands); None on failure."""
        if not self._available():
            return None
        try:
            pipe = self._client.pipeline(transaction=False)
            fill(pipe)
            self.round_trips += 1
            results = list(pipe.execute(raise_on_error=False))
        except Exception as exc:  # any client or socket failure is a miss, never a crash
            self._failed(exc)
            return None
        for r in results:
            if isinstance(r, Exception):
                self._failed(r)
                return None
        self._succeeded()
        return results

    @property
    def available(self) -> bool:
        """False while the tier is waiting out an outage."""
        return self._available()

    # ---------------------------------------------------------------- tier interface

    def contains(self, keys: Sequence[BlockKey]) -> list[bool]:
        if not keys:
            return []
        names = [self.redis_key(k) for k in keys]

        def fill(pipe: Any) -> None:
            for name in names:
                pipe.exists(name)

        results = self._execute(fill)
        with self._lock:
            self.stats.lookups += len(keys)
        if results is None:
            return [False] * len(keys)
        return [bool(r) for r in results]

    def get(self, keys: Sequence[BlockKey]) -> list[memoryview | None]:
        if not keys:
            return []
        names = [self.redis_key(k) for k in keys]

        def fill(pipe: Any) -> None:
            for name in names:
                pipe.get(name)

        results = self._execute(fill)
        if results is None:
            return [None] * len(keys)
        out: list[memoryview | None] = []
        bad: list[str] = []
        with self._lock:
            for key, name, value in zip(keys, names, results, strict=True):
                if value is None:
                    self._lru.remove(key)
                    out.append(None)
                    continue
                try:
                    payload = block_format.decode(key, value)
                except CorruptBlockError:
                    bad.append(name)
                    self._lru.remove(key)
                    self.stats.corrupt_removed += 1
                    out.append(None)
                    continue
                out.append(self._record_hit(key, payload))
        if bad:
            self._execute(lambda pipe: [pipe.delete(name) for name in bad])
        return out

    def put(
        self, items: Sequence[tuple[BlockKey, Payload]], *, want_evicted: bool = False
    ) -> list[tuple[BlockKey, memoryview]]:
        """Store blocks; evicted blocks are deleted, never returned (nothing is below)."""
        if not items or not self._available():
            return []
        sets: list[tuple[BlockKey, bytes]] = []
        with self._lock:
            for key, data in items:
                view = as_bytes_view(data)
                if not self._lru.fits(view.nbytes):
                    self.stats.rejected += 1
                    continue
                sets.append((key, block_format.encode(key, view)))
        if not sets:
            return []
        ttl = self.ttl_s

        def fill(pipe: Any) -> None:
            for key, value in sets:
                pipe.set(self.redis_key(key), value, ex=ttl)

        if self._execute(fill) is None:
            return []
        victims: list[BlockKey] = []
        with self._lock:
            for key, value in sets:
                nbytes = len(value) - block_format.HEADER_BYTES
                victims.extend(v for v, _ in self._lru.victims_for(nbytes))
                self._lru.add(key, nbytes)
                self.stats.stored += 1
                self.stats.stored_bytes += nbytes
            victims = [v for v in victims if v not in self._lru]
            self.stats.evicted += len(victims)
        if victims:
            self._execute(lambda pipe: [pipe.delete(self.redis_key(v)) for v in victims])
        return []

    def discard(self, keys: Iterable[BlockKey]) -> None:
        keys = list(keys)
        with self._lock:
            for key in keys:
                self._lru.remove(key)
        if keys:
            self._execute(lambda pipe: [pipe.delete(self.redis_key(k)) for k in keys])

    def clear_namespace(self) -> int:
        """Delete every block of this fingerprint on the server (SCAN, per-key DEL)."""
        if not self._available():
            return 0
        removed = 0
        try:
            batch: list[Any] = []
            for name in self._client.scan_iter(match=f"{self.prefix}*", count=1000):
                batch.append(name)
                if len(batch) >= 1000:
                    removed += self._delete_names(batch)
                    batch = []
            removed += self._delete_names(batch)
        except Exception as exc:
            self._failed(exc)
        with self._lock:
            self._lru = ByteLRU(self._lru.budget_bytes)
        return removed

    def _delete_names(self, names: list[Any]) -> int:
        if not names:
            return 0
        results = self._execute(lambda pipe: [pipe.delete(n) for n in names])
        return 0 if results is None else sum(int(r) for r in results)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._client.close()

    def describe(self) -> str:
        budget = "" if self.budget_bytes is None else f", {self.budget_bytes} B"
        return f"redis({self.url}{budget})"
