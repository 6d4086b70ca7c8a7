"""The Redis tier against slow, flooding, lying and misconfigured servers (issue 15
items 6-8): every call ends within its deadline, reads at most its reply bound, a
wrong-typed key is one corrupt value, and no credential is ever printed."""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hybridkv.offload import BlockKey, RedisTier, model_fingerprint, parse_offload_spec
from hybridkv.offload.block_format import HEADER_BYTES
from hybridkv.offload.redact import redact_text, redact_url
from offload_helpers import PAGES, RedisServer

Answer = Callable[[list[bytes]], bytes | Iterator[bytes]]


def fp_for(name: str) -> bytes:
    return model_fingerprint({"name": name}, weights="test")


def _parse(buf: bytes) -> tuple[list[bytes] | None, bytes]:
    """One RESP command (an array of bulk strings) off the front of ``buf``."""
    if not buf.startswith(b"*"):
        return None, buf
    end = buf.find(b"\r\n")
    if end < 0:
        return None, buf
    n, pos, args = int(buf[1:end]), end + 2, []
    for _ in range(n):
        end = buf.find(b"\r\n", pos)
        if end < 0:
            return None, buf
        size = int(buf[pos + 1 : end])
        if len(buf) < end + 2 + size + 2:
            return None, buf
        args.append(buf[end + 2 : end + 2 + size])
        pos = end + 2 + size + 2
    return args, buf[pos:]


class FakeRedis:
    """A loopback server that parses commands and answers each with ``answer(cmd)``,
    sent ``chunk`` bytes every ``drip_s`` seconds (0: at once). Handshake commands
    get prompt answers (HELLO its RESP3 map, CLIENT/SELECT/AUTH ``+OK``). Counts bytes sent and commands seen."""

    def __init__(self, answer: Answer, *, drip_s: float = 0.0, chunk: int = 1) -> None:
        self.answer = answer
        self.drip_s = drip_s
        self.chunk = chunk
        self.sent = 0
        self.commands: list[list[bytes]] = []
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(8)
        self._sock.settimeout(0.1)
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._accept, daemon=True)]
        self._threads[0].start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self._sock.getsockname()[1]}/0"

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except OSError:
                continue
            t = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            self._threads.append(t)
            t.start()

    def _send(self, conn: socket.socket, data: bytes | Iterator[bytes]) -> None:
        if not isinstance(data, bytes):  # a stream of chunks
            for part in data:
                conn.sendall(part)
                self.sent += len(part)
            return
        if not self.drip_s:
            conn.sendall(data)
            self.sent += len(data)
            return
        for i in range(0, len(data), self.chunk):
            if self._stop.is_set():
                return
            conn.sendall(data[i : i + self.chunk])
            self.sent += len(data[i : i + self.chunk])
            time.sleep(self.drip_s)

    def _serve(self, conn: socket.socket) -> None:
        conn.settimeout(0.1)
        buf = b""
        try:
            while not self._stop.is_set():
                cmd, buf = _parse(buf)
                if cmd is None:
                    try:
                        data = conn.recv(65536)
                    except TimeoutError:
                        continue
                    if not data:
                        return
                    buf += data
                    continue
                self.commands.append(cmd)
                name = cmd[0].upper()
                if name == b"HELLO":  # the client speaks RESP3: a map with the proto
                    conn.sendall(b"%1\r\n$5\r\nproto\r\n:3\r\n")
                elif name in (b"CLIENT", b"SELECT", b"AUTH"):
                    conn.sendall(b"+OK\r\n")
                else:
                    self._send(conn, self.answer(cmd))
        except OSError:
            return
        finally:
            conn.close()

    def close(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=5)
        self._sock.close()


@pytest.fixture
def fake_redis() -> Iterator[Callable[..., FakeRedis]]:
    made: list[FakeRedis] = []

    def make(answer: Answer, **kw: float) -> FakeRedis:
        server = FakeRedis(answer, **kw)  # type: ignore[arg-type]
        made.append(server)
        return server

    yield make
    for server in made:
        server.close()


def _bulk(data: bytes) -> bytes:
    return b"$%d\r\n%s\r\n" % (len(data), data)


# ---------------------------------------------------------------- item 7: deadlines


def test_a_dripping_server_is_an_outage_within_the_call_deadline(
    fake_redis: Callable[..., FakeRedis], caplog: pytest.LogCaptureFixture
) -> None:
    """One byte per 100 ms never trips the 0.25 s socket timeout; the call's overall
    deadline (2 s by default) does. Before: get() stalled for the whole reply (40 s)."""
    server = fake_redis(lambda cmd: _bulk(b"x" * 400), drip_s=0.1)
    fp = fp_for("drip")
    tier = RedisTier(server.url, fp, retry_interval_s=3600)
    caplog.set_level(logging.WARNING, logger="hybridkv.offload")
    start = time.monotonic()
    assert tier.get([BlockKey(fp, 0, 1)]) == [None]
    elapsed = time.monotonic() - start
    assert elapsed < 3.5, f"get() took {elapsed:.1f}s against a dripping server"
    assert tier.stats.errors == 1 and not tier.available
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "unavailable" in warnings[0]
    # The circuit is open: further calls cost nothing.
    start = time.monotonic()
    assert tier.contains([BlockKey(fp, 0, 2)]) == [False]
    tier.put([(BlockKey(fp, 0, 3), b"abc")])
    assert time.monotonic() - start < 0.1
    tier.close()


def test_the_deadline_covers_stores_and_is_configurable(
    fake_redis: Callable[..., FakeRedis],
) -> None:
    server = fake_redis(lambda cmd: b"+OK\r\n", drip_s=0.2)
    fp = fp_for("drip-put")
    tier = RedisTier(server.url, fp, call_timeout_s=0.5, retry_interval_s=3600)
    start = time.monotonic()
    tier.put([(BlockKey(fp, 0, h), b"p" * 64) for h in range(20)])  # 100 bytes of +OK
    assert time.monotonic() - start < 1.5
    assert len(tier) == 0  # nothing is indexed as stored when the call failed
    assert tier.stats.stored == 0 and tier.stats.errors == 1


@pytest.mark.parametrize("bad", [0, -1.0, float("nan"), float("inf"), "1", True])
def test_bad_timeouts_are_refused(bad: object) -> None:
    from hybridkv.errors import InvalidArgumentError

    with pytest.raises(InvalidArgumentError):
        RedisTier("redis://127.0.0.1:1/0", fp_for("t"), call_timeout_s=bad)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError):
        RedisTier("redis://127.0.0.1:1/0", fp_for("t"), socket_timeout_s=bad)  # type: ignore[arg-type]


# ---------------------------------------------------------------- item 7: reply bound


class _Flood:
    """GET answers a 400 MB bulk string, streamed as fast as the client reads."""

    def __init__(self) -> None:
        self.zeros = b"\0" * (1 << 20)

    def __call__(self, cmd: list[bytes]) -> Iterator[bytes]:
        yield b"$400000000\r\n"
        for _ in range(400):
            yield self.zeros
        yield b"\r\n"


def test_a_flooding_reply_is_cut_at_the_bound(fake_redis: Callable[..., FakeRedis]) -> None:
    """A 400 MB answer to a GET of one page is dropped after about a page: bounded
    memory and time. Before: the whole 400 MB was read into memory."""
    server = fake_redis(_Flood())
    fp = fp_for("flood")
    page = PAGES[0]
    tier = RedisTier(server.url, fp, max_value_bytes=page + HEADER_BYTES, retry_interval_s=3600)
    tracemalloc.start()
    try:
        start = time.monotonic()
        assert tier.get([BlockKey(fp, 0, 1)]) == [None]
        elapsed = time.monotonic() - start
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert elapsed < 2.0
    assert peak < 8 << 20, f"the tier held {peak / 2**20:.0f} MiB reading one page"
    assert tier.stats.errors == 1 and not tier.available
    time.sleep(0.2)
    assert server.sent < 64 << 20  # the client hung up long before the end


def test_the_connector_bounds_values_by_its_largest_page() -> None:
    """Through the connector the bound is the plan's largest page plus the header."""
    from hybridkv import KVCacheManager
    from hybridkv.offload import OffloadConnector, RedisTierConfig
    from hybridkv.offload.config import OffloadConfig
    from hybridkv.offload.pages import HostPages
    from offload_helpers import hybrid_plan

    plan = hybrid_plan()
    manager = KVCacheManager(plan, enable_prefix_caching=True)
    pages = HostPages(plan)
    cfg = OffloadConfig(tiers=(RedisTierConfig(url="redis://127.0.0.1:1/0"),))
    conn = OffloadConnector(manager, cfg, pages, weights="test", background=False)
    (tier,) = conn.stack.tiers
    assert isinstance(tier, RedisTier)
    largest = max(pages.page_bytes(g) for g in range(len(plan.groups)))
    assert tier.max_value_bytes == largest + HEADER_BYTES
    conn.close()


def test_replies_of_the_wrong_type_are_corrupt_values(
    fake_redis: Callable[..., FakeRedis],
) -> None:
    """A server answering GET with an integer or an array: misses, deleted, counted."""
    answers = iter([b":5\r\n", b"*1\r\n$1\r\na\r\n"])

    def answer(cmd: list[bytes]) -> bytes:
        if cmd[0].upper() == b"GET":
            return next(answers, b"_\r\n")  # RESP3 null
        return b":1\r\n"

    server = fake_redis(answer)
    fp = fp_for("liar")
    tier = RedisTier(server.url, fp)
    keys = [BlockKey(fp, 0, 1), BlockKey(fp, 0, 2), BlockKey(fp, 0, 3)]
    assert tier.get(keys) == [None, None, None]
    assert tier.stats.corrupt_removed == 2 and tier.available
    deleted = {c[1].decode() for c in server.commands if c[0].upper() == b"DEL"}
    assert deleted == {tier.redis_key(keys[0]), tier.redis_key(keys[1])}


# ---------------------------------------------------------------- item 8: server errors


def test_one_wrong_type_key_is_a_corrupt_value_not_an_outage(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """99 valid blocks and one key holding a hash: 99 served, the hash deleted and
    counted, no outage. Before: every batch with that key failed whole, forever."""
    fp = fp_for("wrongtype")
    tier = RedisTier(redis_server.url, fp, retry_interval_s=3600)
    items = [(BlockKey(fp, 0, h), bytes([h % 256]) * 64) for h in range(99)]
    tier.put(items)
    bad = BlockKey(fp, 0, 99)
    client = redis_server.client()
    client.hset(tier.redis_key(bad), "field", "value")
    keys = [k for k, _ in items[:50]] + [bad] + [k for k, _ in items[50:]]
    caplog.set_level(logging.WARNING, logger="hybridkv.offload")
    for _ in range(3):
        got = tier.get(keys)
        assert got[50] is None
        served = [bytes(g) for i, g in enumerate(got) if i != 50 and g is not None]
        assert served == [p for _, p in items]
    assert tier.stats.corrupt_removed == 1 and tier.stats.errors == 0 and tier.available
    assert client.exists(tier.redis_key(bad)) == 0
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    tier.clear_namespace()


def test_a_full_server_drops_stores_but_keeps_serving(
    own_redis: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """``OOM`` (maxmemory with noeviction) refuses stores: those blocks are not
    indexed, one warning is logged for all of them, and reads still work."""
    fp = fp_for("oom")
    tier = RedisTier(own_redis.url, fp, retry_interval_s=3600)
    first = [(BlockKey(fp, 0, h), b"a" * 1024) for h in range(4)]
    tier.put(first)
    client = own_redis.client()
    client.config_set("maxmemory-policy", "noeviction")
    client.config_set("maxmemory", 1)
    caplog.set_level(logging.WARNING, logger="hybridkv.offload")
    for round_ in range(3):
        tier.put([(BlockKey(fp, 1, h + 10 * round_), b"b" * 1024) for h in range(5)])
    assert len(tier) == 4 and tier.stats.stored == 4
    assert tier.stats.rejected == 15 and tier.stats.errors == 15
    assert [bytes(g) if g is not None else None for g in tier.get([k for k, _ in first])] == [
        p for _, p in first
    ]
    assert tier.available
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "OOM" in warnings[0]


# ---------------------------------------------------------------- item 6: credentials

SECRET = "hunter2-s3cret-pw"


def test_redact_url_masks_user_info_and_query_values() -> None:
    assert redact_url(f"redis://default:{SECRET}@10.0.0.1:6379/0") == "redis://***@10.0.0.1:6379/0"
    assert redact_url(f"rediss://:{SECRET}@h:1") == "rediss://***@h:1"
    assert (
        redact_url(f"redis://h:1/0?password={SECRET}&db=2") == "redis://h:1/0?password=***&db=***"
    )
    assert redact_url("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"
    assert SECRET not in redact_text(f"items 'cpu:1GiB,redis://u:{SECRET}@h:1:4GiB' bad")


def test_no_credential_in_warnings_reprs_or_descriptions(
    caplog: pytest.LogCaptureFixture,
) -> None:
    url = f"redis://admin:{SECRET}@127.0.0.1:1/0"  # nothing listens on port 1
    caplog.set_level(logging.DEBUG, logger="hybridkv.offload")
    tier = RedisTier(url, fp_for("redact"))
    assert tier.get([BlockKey(fp_for("redact"), 0, 1)]) == [None]  # an outage warning
    cfg = parse_offload_spec(f"cpu:1MiB,{url}:4GiB")
    shown = [caplog.text, repr(tier), tier.describe(), tier.url, repr(cfg), cfg.describe()]
    shown += [repr(t) for t in cfg.tiers] + [t.describe() for t in cfg.tiers]
    assert "unavailable" in caplog.text
    for text in shown:
        assert SECRET not in text, text
    assert cfg.tiers[1].url == url  # the client still gets the real URL


@pytest.mark.parametrize(
    "spec",
    [
        f"cpu:1MiB,,redis://u:{SECRET}@h:1",
        f"redis://u:{SECRET}@h:99999",
        f"redis://u:{SECRET}@h:1,floppy:1",
        f"redis://u:{SECRET}@h:1:4XB",
    ],
)
def test_spec_errors_mask_credentials(spec: str) -> None:
    from hybridkv.errors import OffloadConfigError

    with pytest.raises(OffloadConfigError) as info:
        parse_offload_spec(spec)
    assert SECRET not in str(info.value)


def test_a_wrong_password_is_an_outage_that_names_no_password(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server = RedisServer(tmp_path, password=SECRET)
    server.start()
    try:
        fp = fp_for("auth")
        good = RedisTier(server.url, fp)
        good.put([(BlockKey(fp, 0, 1), b"abc")])
        assert good.get([BlockKey(fp, 0, 1)]) != [None]
        caplog.set_level(logging.DEBUG, logger="hybridkv.offload")
        wrong = f"redis://default:{SECRET}-wrong@127.0.0.1:{server.port}/0"
        bad = RedisTier(wrong, fp, retry_interval_s=3600)
        assert bad.get([BlockKey(fp, 0, 1)]) == [None]
        assert not bad.available and "unavailable" in caplog.text
        none = RedisTier(f"redis://127.0.0.1:{server.port}/0", fp, retry_interval_s=3600)
        assert none.get([BlockKey(fp, 0, 1)]) == [None]  # NOAUTH: an outage too
        assert not none.available
        assert SECRET not in caplog.text
    finally:
        server.stop()


def test_simulate_json_names_no_credential(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    """Before: the password appeared twice in ``simulate --json`` and in the warning."""
    from hybridkv.cli import main
    from hybridkv.traces import make_agentic

    trace = tmp_path / "t.json.gz"
    make_agentic(sessions=2).save(trace)
    caplog.set_level(logging.DEBUG)
    code = main(
        ["simulate", "--model", "qwen3-next-80b-a3b", "--memory", "16GiB", "--trace",
         str(trace), "--layout", "static", "--no-progress", "--json", "--offload",
         f"cpu:64MiB,redis://admin:{SECRET}@127.0.0.1:1/0", "--offload-weights", "w"]
    )  # fmt: skip
    out, err = capsys.readouterr()
    assert code == 0
    report = json.loads(out)
    assert "***@127.0.0.1:1/0" in report["layouts"]["static"]["offload"]["spec"]
    assert SECRET not in out and SECRET not in err and SECRET not in caplog.text
