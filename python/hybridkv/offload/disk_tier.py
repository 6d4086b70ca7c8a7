"""Disk tier: one checksummed file per block under a directory, restart-safe.

Layout: ``ROOT/hkv-v<format>/<fingerprint hex>/g<group>/<2 hex>/<hash hex>.blk``, so
models never collide and no directory grows past a few thousand entries per shard.

Writes are atomic: the block goes to ``tmp/<pid>-<random>.tmp`` in the same namespace,
is fsynced, then renamed over its final name, and the shard directories a batch touched
are fsynced once. A writer killed at any point leaves either the old state or the
complete new file, plus perhaps a temporary file that the next open removes. A batch's
files are written and read by ``io_threads`` threads, so fsync waits overlap (on this
VM one 64 KiB write+fsync takes ~1-4 ms; four threads give ~3x). Every read
checks the header (format, fingerprint, group, hash, length) and the CRC; a file that
fails is removed and counted, and the read is a miss.

The directory may be shared with careless or hostile users, so the tier never leaves
its namespace and never follows a symbolic link below ``ROOT``: the namespace, group,
shard and temporary directories are opened with ``O_NOFOLLOW`` one component at a time
(``openat``), files likewise, and every name is resolved relative to those descriptors.
A read checks with ``fstat`` that it opened a regular file of exactly the indexed size
and reads at most that many bytes: a FIFO, a device, a link (to ``/dev/zero`` or
anywhere) or a file of another size at a block's path is a miss, never a hang or a huge
allocation. The tier removes only regular files that carry its own names (a block name
in its own shard, a dead writer's temporary file); anything else found in the namespace
is left alone and counted (``ignored_on_scan``, ``stats.foreign``).

Opening a tier scans its namespace to rebuild the index (oldest modification time
first, hits refresh it), so a restarted process sees the blocks the old one stored.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
import weakref
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from hybridkv.errors import InvalidArgumentError, OffloadConfigError
from hybridkv.offload import block_format
from hybridkv.offload.block_format import HEADER_BYTES, CorruptBlockError
from hybridkv.offload.disk_fs import (
    _BLOCK_NAME,
    _CLOEXEC,
    _GROUP_NAME,
    _READ_FLAGS,
    _SHARD_NAME,
    _TMP_NAME,
    _WRITE_FLAGS,
    _close_fds,
    _open_dir,
    _pid_alive,
)
from hybridkv.offload.keys import FORMAT_VERSION, MAX_GROUP, BlockKey, require_weights
from hybridkv.offload.tier import ByteLRU, Payload, Tier

_T = TypeVar("_T")
_R = TypeVar("_R")

#: Default bound on one block's payload: a larger file is never indexed or read.
DEFAULT_MAX_BLOCK_BYTES = 1 << 30


class DiskTier(Tier):
    """LRU tier of block files under ``path`` with a byte budget over payload bytes."""

    kind = "disk"

    def __init__(
        self,
        path: str | os.PathLike[str],
        budget_bytes: int,
        fingerprint: bytes,
        *,
        fsync: bool = True,
        io_threads: int = 4,
        max_block_bytes: int = DEFAULT_MAX_BLOCK_BYTES,
    ) -> None:
        super().__init__(budget_bytes)
        if not isinstance(fingerprint, bytes) or len(fingerprint) != 16:
            raise InvalidArgumentError(f"a model fingerprint is 16 bytes, got {fingerprint!r}")
        require_weights(fingerprint, "disk")
        if isinstance(max_block_bytes, bool) or not isinstance(max_block_bytes, int):
            raise InvalidArgumentError(f"max_block_bytes must be an int, got {max_block_bytes!r}")
        if max_block_bytes < 1:
            raise InvalidArgumentError(f"max_block_bytes must be positive, got {max_block_bytes}")
        self.io_threads = max(1, int(io_threads))
        self.max_block_bytes = max_block_bytes
        self._pool: ThreadPoolExecutor | None = None
        self.root = Path(path)
        self.fingerprint = fingerprint
        self.fsync = fsync
        self.namespace = self.root / f"hkv-v{FORMAT_VERSION}" / fingerprint.hex()
        self._tmp = self.namespace / "tmp"
        self._ns_fd, self._tmp_fd = self._open_namespace()
        self._fds = [self._ns_fd, self._tmp_fd]
        self._finalizer = weakref.finalize(self, _close_fds, self._fds)
        self.scanned_blocks = 0
        self.removed_on_scan = 0
        self.ignored_on_scan = 0
        self._rebuild_index()

    def _open_namespace(self) -> tuple[int, int]:
        """Descriptors of the namespace and its ``tmp`` directory, opened component by
        component below ``root`` without following links."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            root_fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | _CLOEXEC)
        except OSError as exc:
            raise OffloadConfigError(f"cannot use {self.root} as a disk tier: {exc}") from exc
        opened: list[int] = [root_fd]
        where = self.root
        try:
            for name in (f"hkv-v{FORMAT_VERSION}", self.fingerprint.hex(), "tmp"):
                where = where / name
                opened.append(_open_dir(name, opened[-1], create=True))
        except OSError as exc:
            _close_fds(opened)
            why = (
                "is a symbolic link or not a directory (the tier never follows links)"
                if exc.errno in (errno.ELOOP, errno.ENOTDIR)
                else str(exc)
            )
            raise OffloadConfigError(
                f"cannot use {self.root} as a disk tier: {where} {why}"
            ) from exc
        ns_fd, tmp_fd = opened[2], opened[3]
        _close_fds(opened[:2])
        return ns_fd, tmp_fd

    # ---------------------------------------------------------------- paths and index

    def path_of(self, key: BlockKey) -> Path:
        """The file a block lives in."""
        name = f"{key.block_hash:032x}"
        return self.namespace / f"g{key.group}" / name[:2] / f"{name}.blk"

    @staticmethod
    def _names(key: BlockKey) -> tuple[str, str, str]:
        name = f"{key.block_hash:032x}"
        return f"g{key.group}", name[:2], f"{name}.blk"

    def _shard_fd(self, key: BlockKey, *, create: bool = False) -> tuple[int, str]:
        """A descriptor of ``key``'s shard directory (the caller closes it) and the
        file's name in it; ``OSError`` when a component is missing or is not a plain
        directory."""
        group, shard, name = self._names(key)
        gfd = _open_dir(group, self._ns_fd, create=create)
        try:
            return _open_dir(shard, gfd, create=create), name
        finally:
            os.close(gfd)

    def _count(self, field: str) -> None:
        with self._lock:
            setattr(self.stats, field, getattr(self.stats, field) + 1)

    def _unlink(self, dir_fd: int, name: str, *, inode: int | None = None) -> bool:
        """Remove ``name`` under ``dir_fd`` if it is a regular file (and, when given, the
        same file as ``inode``); anything else is left alone and counted."""
        try:
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            if not stat.S_ISREG(st.st_mode) or (inode is not None and st.st_ino != inode):
                self._count("foreign")
                return False
            os.unlink(name, dir_fd=dir_fd)
            return True
        except FileNotFoundError:
            return False
        except OSError:
            self._count("errors")
            return False

    def _remove_block(self, key: BlockKey) -> None:
        try:
            sfd, name = self._shard_fd(key)
        except FileNotFoundError:
            return
        except OSError:
            self._count("foreign")
            return
        try:
            self._unlink(sfd, name)
        finally:
            os.close(sfd)

    def _rebuild_index(self) -> None:
        with os.scandir(self._tmp_fd) as entries:
            for entry in entries:
                m = _TMP_NAME.match(entry.name)
                if m is None or not entry.is_file(follow_symlinks=False):
                    self.ignored_on_scan += 1
                    continue
                pid = int(m.group(1))
                if not _pid_alive(pid) or pid == os.getpid():
                    self._unlink(self._tmp_fd, entry.name)
        found: list[tuple[int, BlockKey, int]] = []
        group_names = []
        with os.scandir(self._ns_fd) as groups:
            for e in groups:
                if _GROUP_NAME.match(e.name) and e.is_dir(follow_symlinks=False):
                    group_names.append(e.name)
                elif e.name != "tmp":
                    self.ignored_on_scan += 1
        for gname in group_names:
            group = int(gname[1:])
            if group > MAX_GROUP:
                self.ignored_on_scan += 1
                continue
            try:
                gfd = _open_dir(gname, self._ns_fd)
            except OSError:
                self.ignored_on_scan += 1
                continue
            try:
                self._scan_group(gfd, group, found)
            finally:
                os.close(gfd)
        found.sort(key=lambda t: t[0])
        for _, key, size in found:
            self._lru.add(key, size)
        self.scanned_blocks = len(found)
        # A smaller budget than last time: drop the oldest files.
        for victim, _ in self._lru.victims_for(0):
            self._remove_block(victim)
            self.stats.evicted += 1

    def _scan_group(self, gfd: int, group: int, found: list[tuple[int, BlockKey, int]]) -> None:
        with os.scandir(gfd) as shards:
            names = []
            for e in shards:
                if _SHARD_NAME.match(e.name) and e.is_dir(follow_symlinks=False):
                    names.append(e.name)
                else:
                    self.ignored_on_scan += 1
        for shard in names:
            try:
                sfd = _open_dir(shard, gfd)
            except OSError:
                self.ignored_on_scan += 1
                continue
            try:
                with os.scandir(sfd) as entries:
                    for entry in entries:
                        m = _BLOCK_NAME.match(entry.name)
                        if (
                            m is None
                            or m.group(1)[:2] != shard
                            or not entry.is_file(follow_symlinks=False)
                        ):
                            self.ignored_on_scan += 1
                            continue
                        st = entry.stat(follow_symlinks=False)
                        size = st.st_size - HEADER_BYTES
                        if size < 0:  # one of ours, cut short: it can never be served
                            self._unlink(sfd, entry.name, inode=st.st_ino)
                            self.removed_on_scan += 1
                            continue
                        if size > self.max_block_bytes:
                            self.ignored_on_scan += 1
                            continue
                        key = BlockKey(self.fingerprint, group, int(m.group(1), 16))
                        found.append((st.st_mtime_ns, key, size))
            finally:
                os.close(sfd)

    # ---------------------------------------------------------------- tier interface

    def contains(self, keys: Sequence[BlockKey]) -> list[bool]:
        keys = self._checked_keys(keys)
        with self._lock:
            self.stats.lookups += len(keys)
            return [k in self._lru for k in keys]

    def _read(self, key: BlockKey, size: int, *, refresh: bool = False) -> memoryview | None:
        """The verified payload of ``key``'s file, expected to hold ``size`` payload
        bytes, or None (a bad regular file is removed, anything else left alone)."""
        try:
            sfd, name = self._shard_fd(key)
        except FileNotFoundError:
            return None
        except OSError:
            self._count("foreign")  # a group or shard that is a link or a file
            return None
        try:
            return self._read_in(sfd, name, key, size, refresh)
        finally:
            os.close(sfd)

    def _read_in(
        self, sfd: int, name: str, key: BlockKey, size: int, refresh: bool
    ) -> memoryview | None:
        try:
            fd = os.open(name, _READ_FLAGS, dir_fd=sfd)
        except FileNotFoundError:
            return None
        except OSError as exc:
            self._count("foreign" if exc.errno in (errno.ELOOP, errno.ENXIO) else "errors")
            return None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                self._count("foreign")  # a FIFO, socket or device at a block's path
                return None
            want = HEADER_BYTES + size
            data = bytearray(want) if st.st_size == want else None
            got = 0
            if data is not None:
                view = memoryview(data)
                while got < want:
                    n = os.readv(fd, [view[got:]])
                    if n == 0:
                        break
                    got += n
            if data is None or got != want:
                raise CorruptBlockError(f"{st.st_size} bytes on disk, {want} indexed")
            payload = block_format.decode(key, data)
            if refresh:
                # Recency survives a restart through the modification time.
                with contextlib.suppress(OSError):
                    os.utime(fd)
            return payload
        except CorruptBlockError:
            if self._unlink(sfd, name, inode=os.fstat(fd).st_ino):
                self._count("corrupt_removed")
            return None
        except OSError:
            self._count("errors")
            return None
        finally:
            os.close(fd)

    def _map(self, fn: Callable[[_T], _R], args: Sequence[_T]) -> list[_R]:
        """``fn`` over ``args`` on the I/O threads (file I/O releases the GIL)."""
        if self.io_threads <= 1 or len(args) <= 1:
            return [fn(a) for a in args]
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.io_threads, thread_name_prefix="hkv-disk")
            pool = self._pool
        return list(pool.map(fn, args))

    def get(self, keys: Sequence[BlockKey]) -> list[memoryview | None]:
        keys = self._checked_keys(keys)
        with self._lock:
            known: list[tuple[BlockKey, int]] = []
            for k in dict.fromkeys(keys):
                size = self._lru.size_of(k)
                if size is not None:
                    known.append((k, size))
        payloads = self._map(lambda ks: self._read(ks[0], ks[1], refresh=True), known)
        found = dict(zip((k for k, _ in known), payloads, strict=True))
        out: list[memoryview | None] = []
        with self._lock:
            for key in keys:
                payload = found.get(key)
                if payload is None:
                    if key in found:
                        self._lru.remove(key)
                    out.append(None)
                    continue
                out.append(self._record_hit(key, payload))
        return out

    def _write(self, key: BlockKey, view: memoryview) -> bool:
        tmp = f"{os.getpid()}-{secrets.token_hex(8)}.tmp"
        sfd = -1
        written = False
        try:
            sfd, name = self._shard_fd(key, create=True)
            fd = os.open(tmp, _WRITE_FLAGS, 0o644, dir_fd=self._tmp_fd)
            written = True
            try:
                for part in (memoryview(block_format.encode_header(key, view)), view):
                    done = 0
                    while done < part.nbytes:
                        done += os.write(fd, part[done:])
                if self.fsync:
                    os.fdatasync(fd)
            finally:
                os.close(fd)
            try:
                st = os.stat(name, dir_fd=sfd, follow_symlinks=False)
            except FileNotFoundError:
                pass
            else:
                if not stat.S_ISREG(st.st_mode):  # never replace what is not ours
                    self._count("foreign")
                    self._unlink(self._tmp_fd, tmp)
                    return False
            os.replace(tmp, name, src_dir_fd=self._tmp_fd, dst_dir_fd=sfd)
            return True
        except OSError:
            if written:
                self._unlink(self._tmp_fd, tmp)
            self._count("errors")
            return False
        finally:
            if sfd >= 0:
                os.close(sfd)

    def put(
        self, items: Sequence[tuple[BlockKey, Payload]], *, want_evicted: bool = False
    ) -> list[tuple[BlockKey, memoryview]]:
        checked = self._checked_items(items)
        todo: dict[BlockKey, memoryview] = {}
        with self._lock:
            for key, view in checked:
                if key in todo or self._lru.touch(key):
                    continue
                if not self._lru.fits(view.nbytes) or view.nbytes > self.max_block_bytes:
                    self.stats.rejected += 1
                    continue
                todo[key] = view
        written = self._map(lambda kv: self._write(*kv), list(todo.items()))
        victims: list[tuple[BlockKey, int]] = []
        with self._lock:
            for (key, view), ok in zip(todo.items(), written, strict=True):
                if not ok:
                    continue
                victims.extend(self._lru.victims_for(view.nbytes))
                self._lru.add(key, view.nbytes)
                self.stats.stored += 1
                self.stats.stored_bytes += view.nbytes
            victims = [(v, n) for v, n in victims if v not in self._lru]
            self.stats.evicted += len(victims)
        evicted: list[tuple[BlockKey, memoryview]] = []
        if want_evicted and victims:
            payloads = self._map(lambda vn: self._read(vn[0], vn[1]), victims)
            for (victim, _), payload in zip(victims, payloads, strict=True):
                if payload is not None:
                    evicted.append((victim, payload))
        for victim, _ in victims:
            self._remove_block(victim)
        if self.fsync:
            shards = {self._names(k)[:2]: k for k, ok in zip(todo, written, strict=True) if ok}
            self._map(self._fsync_shard, [shards[s] for s in sorted(shards)])
        return evicted

    def _fsync_shard(self, key: BlockKey) -> None:
        try:
            sfd, _ = self._shard_fd(key)
        except OSError:
            return
        try:
            os.fsync(sfd)
        except OSError:
            pass
        finally:
            os.close(sfd)

    def discard(self, keys: Iterable[BlockKey]) -> None:
        for key in self._checked_keys(keys):
            with self._lock:
                held = self._lru.remove(key) is not None
            if held:
                self._remove_block(key)

    def close(self) -> None:
        # The files are the state; only the in-memory index, the threads and the
        # directory descriptors go (a later call fails on a closed descriptor: a miss).
        with self._lock:
            self._lru = ByteLRU(self._lru.budget_bytes)
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True)
        with self._lock:
            self._ns_fd = self._tmp_fd = -1
            self._finalizer()

    def describe(self) -> str:
        return f"disk({self.root}, {self.budget_bytes} B)"
