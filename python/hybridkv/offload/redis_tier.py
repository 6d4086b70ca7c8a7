"""Redis tier: blocks as values on a Redis or Valkey server, shared across processes.

Keys are ``hkv:v<format>:<fingerprint hex>:<group>:<hash hex>``, values the same
self-checking layout as disk files (:mod:`hybridkv.offload.block_format`), so a
corrupt or foreign value is refused, deleted and counted.

Batches go through one non-transactional pipeline of per-key ``GET``/``SET``/
``EXISTS``/``DEL``: one round trip per batch, and no multi-key command, so on Redis
Cluster or Valkey cluster the client can route every key to its own slot. The keys
carry no ``{hash tag}`` on purpose: a tag would put a whole model on one slot, hence
one node, which defeats spreading a large cache over a cluster.

The server being down, slow or hostile must never crash or stall a step, nor take
unbounded memory: sockets time out in a fraction of a second, every call (one pipeline,
connection handshake included) has an overall deadline (``call_timeout_s``: a server
that drips a byte at a time cannot stretch it) and a bound on the bytes its reply may
take (``max_value_bytes`` per value read, a little per other reply), the client never
retries, and after a failure the tier answers "miss" without touching the network for
``retry_interval_s``; each outage logs one warning and the recovery one info line. A
key holding another type (``WRONGTYPE``) or a value that is not a block of this key is
treated as corrupt: deleted, counted in ``corrupt_removed``, the rest of the batch
served. Credentials in the URL never appear in a log line, a description, a report or
an error (:mod:`hybridkv.offload.redact`). A budget, when given, trims the keys this
process wrote (least recently used first); across processes the server's own
``maxmemory`` policy is the authority.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Iterable, Sequence
from typing import Any

from hybridkv.errors import InvalidArgumentError, OffloadConfigError
from hybridkv.offload import block_format
from hybridkv.offload.block_format import CorruptBlockError
from hybridkv.offload.keys import FINGERPRINT_BYTES, FORMAT_VERSION, BlockKey, require_weights
from hybridkv.offload.redact import redact_text, redact_url, url_secrets
from hybridkv.offload.redis_guard import (
    _REPLY_SLACK_PER_CALL,
    _REPLY_SLACK_PER_COMMAND,
    _CallBudget,
    _guarded_connection_class,
)
from hybridkv.offload.redis_guard import ReplyTooLargeError as ReplyTooLargeError
from hybridkv.offload.tier import ByteLRU, Payload, Tier

log = logging.getLogger("hybridkv.offload")

#: The largest value a read accepts when the caller does not say (the connector passes
#: its largest page plus the block header).
DEFAULT_MAX_VALUE_BYTES = 64 << 20


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
        call_timeout_s: float = 2.0,
        max_value_bytes: int | None = None,
        client: Any = None,
    ) -> None:
        super().__init__(budget_bytes)
        if not isinstance(fingerprint, bytes) or len(fingerprint) != FINGERPRINT_BYTES:
            raise InvalidArgumentError(f"a model fingerprint is 16 bytes, got {fingerprint!r}")
        require_weights(fingerprint, "redis")
        for name, value in (
            ("socket_timeout_s", socket_timeout_s),
            ("connect_timeout_s", connect_timeout_s),
            ("call_timeout_s", call_timeout_s),
        ):
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise InvalidArgumentError(f"{name} must be a number of seconds, got {value!r}")
            if not 0 < value < math.inf:
                raise InvalidArgumentError(f"{name} must be positive and finite, got {value}")
        if max_value_bytes is not None and (
            isinstance(max_value_bytes, bool)
            or not isinstance(max_value_bytes, int)
            or max_value_bytes < 1
        ):
            raise InvalidArgumentError(
                f"max_value_bytes must be a positive int, got {max_value_bytes!r}"
            )
        self._url = url
        self._secrets = url_secrets(url) if isinstance(url, str) else ()
        #: The server's URL with any credentials masked (what logs and reports show).
        self.url = redact_url(url) if isinstance(url, str) else "<not a URL>"
        self.fingerprint = fingerprint
        self.retry_interval_s = retry_interval_s
        self.ttl_s = ttl_s
        self.call_timeout_s = float(call_timeout_s)
        self.max_value_bytes = (
            DEFAULT_MAX_VALUE_BYTES if max_value_bytes is None else int(max_value_bytes)
        )
        self.prefix = f"hkv:v{FORMAT_VERSION}:{fingerprint.hex()}:"
        self._down_until = 0.0
        self._down = False
        self._budget = _CallBudget()
        self._logged_errors: set[str] = set()
        #: Pipelines actually sent (a circuit-open call sends none).
        self.round_trips = 0
        self._client = (
            client
            if client is not None
            else self._connect(url, socket_timeout_s, connect_timeout_s)
        )

    def __repr__(self) -> str:
        return f"RedisTier({self.describe()})"

    def _connect(self, url: str, socket_timeout_s: float, connect_timeout_s: float) -> Any:
        try:
            import redis
            from redis.backoff import NoBackoff
            from redis.connection import parse_url
            from redis.retry import Retry
        except ImportError as exc:
            raise OffloadConfigError(
                "the Redis tier needs the redis client: pip install 'hybridkv[redis]'"
            ) from exc
        if not isinstance(url, str):
            raise OffloadConfigError(f"a redis URL is a string, got {type(url).__name__}")
        try:
            base = parse_url(url).get(  # type: ignore[no-untyped-call]
                "connection_class", redis.connection.Connection
            )
            return redis.Redis.from_url(
                url,
                socket_timeout=socket_timeout_s,
                socket_connect_timeout=connect_timeout_s,
                retry=Retry(NoBackoff(), 0),
                retry_on_timeout=False,
                health_check_interval=0,
                connection_class=_guarded_connection_class(base, self._budget),
            )
        except (ValueError, TypeError) as exc:
            raise OffloadConfigError(
                f"bad redis URL {self.url!r}: {redact_text(str(exc), self._secrets)}"
            ) from None

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
                redact_text(str(exc), self._secrets),
                self.retry_interval_s,
            )

    def _key_error(self, exc: Exception, what: str) -> None:
        """An error answer about one key: counted; the first of each code logged."""
        code = _error_code(exc)
        with self._lock:
            self.stats.errors += 1
            first = code not in self._logged_errors
            self._logged_errors.add(code)
        if first:
            log.warning(
                "redis offload tier %s refused a %s (%s): that block is a miss or not "
                "stored; further %s answers are counted, not logged",
                self.url,
                what,
                redact_text(str(exc), self._secrets)[:200],
                code,
            )

    def _succeeded(self) -> None:
        if self._down:
            with self._lock:
                was_down, self._down = self._down, False
            if was_down:
                log.info("redis offload tier %s is back", self.url)

    def _execute(
        self, fill: Any, *, value_replies: int = 0, per_key_errors: bool = False
    ) -> list[Any] | None:
        """Run one pipeline (``fill(pipe)`` queues the commands); None on failure.

        The call must finish within ``call_timeout_s`` and its reply may take
        ``value_replies`` values of at most ``max_value_bytes`` plus a little per
        command: beyond either it is an outage. With ``per_key_errors`` the error
        answers that concern one key (:data:`PER_KEY_ERRORS`) stay in the results for
        the caller; any other error answer (the server, not the key, is unwell) is an
        outage.
        """
        if not self._available():
            return None
        budget = self._budget
        try:
            pipe = self._client.pipeline(transaction=False)
            fill(pipe)
            commands = len(pipe)
            budget.deadline = time.monotonic() + self.call_timeout_s
            budget.bytes_left = (
                _REPLY_SLACK_PER_CALL
                + commands * _REPLY_SLACK_PER_COMMAND
                + value_replies * self.max_value_bytes
            )
            self.round_trips += 1
            results = list(pipe.execute(raise_on_error=False))
        except Exception as exc:  # any client or socket failure is a miss, never a crash
            self._failed(exc)
            return None
        finally:
            budget.deadline = math.inf
            budget.bytes_left = math.inf
        if len(results) != commands:
            self._failed(RuntimeError(f"{len(results)} replies to {commands} commands"))
            return None
        for r in results:
            if isinstance(r, Exception) and not (
                per_key_errors and _error_code(r) in PER_KEY_ERRORS
            ):
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
        keys = self._checked_keys(keys)
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
        return [r is True or (isinstance(r, int) and r > 0) for r in results]

    def get(self, keys: Sequence[BlockKey]) -> list[memoryview | None]:
        keys = self._checked_keys(keys)
        if not keys:
            return []
        names = [self.redis_key(k) for k in keys]

        def fill(pipe: Any) -> None:
            for name in names:
                pipe.get(name)

        results = self._execute(fill, value_replies=len(keys), per_key_errors=True)
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
                if isinstance(value, Exception) and _error_code(value) != "WRONGTYPE":
                    self._key_error(value, "read")
                    out.append(None)
                    continue
                try:
                    if not isinstance(value, bytes):  # WRONGTYPE, or a hostile reply
                        raise CorruptBlockError(f"not a string value: {type(value).__name__}")
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
        checked = self._checked_items(items)
        if not checked or not self._available():
            return []
        sets: list[tuple[BlockKey, bytes]] = []
        with self._lock:
            for key, view in checked:
                if not self._lru.fits(view.nbytes) or (
                    view.nbytes + block_format.HEADER_BYTES > self.max_value_bytes
                ):
                    self.stats.rejected += 1
                    continue
                sets.append((key, block_format.encode(key, view)))
        if not sets:
            return []
        ttl = self.ttl_s

        def fill(pipe: Any) -> None:
            for key, value in sets:
                pipe.set(self.redis_key(key), value, ex=ttl)

        results = self._execute(fill, per_key_errors=True)
        if results is None:
            return []
        victims: list[BlockKey] = []
        with self._lock:
            for (key, value), result in zip(sets, results, strict=True):
                if isinstance(result, Exception):  # e.g. OOM: this store is dropped
                    self._key_error(result, "store")
                    self.stats.rejected += 1
                    continue
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
        keys = self._checked_keys(keys)
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
        cursor: Any = 0
        while True:
            scanned = self._execute(
                lambda pipe, c=cursor: pipe.scan(c, match=f"{self.prefix}*", count=1000),
                value_replies=1,
            )
            if scanned is None:
                break
            reply = scanned[0]
            if not (isinstance(reply, tuple | list) and len(reply) == 2):
                self._failed(RuntimeError("a malformed SCAN reply"))
                break
            cursor, names = reply
            removed += self._delete_names(
                [n for n in names if isinstance(n, bytes) and n.startswith(self.prefix.encode())]
            )
            if cursor in (0, b"0", "0"):
                break
        with self._lock:
            self._lru = ByteLRU(self._lru.budget_bytes)
        return removed

    def _delete_names(self, names: list[Any]) -> int:
        if not names:
            return 0
        results = self._execute(lambda pipe: [pipe.delete(n) for n in names])
        return 0 if results is None else sum(1 for r in results if r == 1)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._client.close()

    def describe(self) -> str:
        budget = "" if self.budget_bytes is None else f", {self.budget_bytes} B"
        return f"redis({self.url}{budget})"


#: Error answers about one key, not the server: ``WRONGTYPE`` (the key holds a list,
#: hash, ...: a corrupt value, deleted) and ``OOM`` (a full server with ``noeviction``
#: refuses that store but still serves reads).
PER_KEY_ERRORS = frozenset({"WRONGTYPE", "OOM"})


def _error_code(exc: Exception) -> str:
    """The code of a server's error answer (its first word: ``WRONGTYPE``, ``OOM``);
    empty for errors of the client or the connection, which are never per key."""
    try:
        from redis.exceptions import ConnectionError as RedisConnectionError
        from redis.exceptions import OutOfMemoryError, ResponseError
        from redis.exceptions import TimeoutError as RedisTimeoutError
    except ImportError:  # pragma: no cover - a custom client without redis installed
        return str(exc).split(" ", 1)[0]
    if not isinstance(exc, ResponseError) or isinstance(
        exc, RedisConnectionError | RedisTimeoutError
    ):
        return ""
    if isinstance(exc, OutOfMemoryError):  # the client strips the code from its text
        return "OOM"
    return str(exc).split(" ", 1)[0]
