"""Fixtures for the offload tests: a real ``redis-server`` on a free loopback port.

``make test`` installs the Debian package when the binary is missing (``make redis``).
The server runs without persistence (``--save '' --appendonly no``) in a temporary
directory and is stopped at the end; ``stop()``/``start()`` let a test take it away
mid-run and bring it back on the same port.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from offload_helpers import RedisServer


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A server shared by the session; tests use their own fingerprints (namespaces)."""
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A server of this test's own, free to be stopped and restarted."""
    server = RedisServer(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()
