"""The disk tier's file-system primitives: open flags that never follow a symbolic link
(and never wait on a FIFO), the names the tier knows as its own (group, shard, block
and temporary file names; anything else is left alone), opening a directory one component at a time relative
to its parent's descriptor, and the liveness check that decides whether a temporary
file's writer is gone (:class:`hybridkv.offload.disk_tier.DiskTier`)."""

from __future__ import annotations

import contextlib
import os
import re

_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | _CLOEXEC
# O_NONBLOCK: opening a FIFO for reading must not wait for a writer (regular files
# ignore the flag).
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | _CLOEXEC
_WRITE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | _CLOEXEC
_BLOCK_NAME = re.compile(r"^([0-9a-f]{32})\.blk$")
_SHARD_NAME = re.compile(r"^[0-9a-f]{2}$")
_GROUP_NAME = re.compile(r"^g(0|[1-9][0-9]{0,9})$")
_TMP_NAME = re.compile(r"^([0-9]{1,10})-[0-9a-f]{1,64}\.tmp$")


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


def _open_dir(name: str, dir_fd: int, *, create: bool = False) -> int:
    """``name`` under ``dir_fd`` opened as a directory without following a link
    (created first when ``create``)."""
    if create:
        try:
            return os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
        except FileNotFoundError:
            with contextlib.suppress(FileExistsError):
                os.mkdir(name, dir_fd=dir_fd)
    return os.open(name, _DIR_FLAGS, dir_fd=dir_fd)


def _close_fds(fds: list[int]) -> None:
    for fd in fds:
        if fd >= 0:
            with contextlib.suppress(OSError):
                os.close(fd)
    fds.clear()
