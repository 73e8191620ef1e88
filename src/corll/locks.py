"""A lock that a process holds while it works and the OS releases if the process dies."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def try_file_lock(path: Path | str) -> Iterator[bool]:
    """Hold an OS file lock on `path` for the block if no other process holds it: yields whether it is
    held (never waits). A process that dies, even by SIGKILL, releases it with its file descriptor."""
    from filelock import FileLock, Timeout

    lock = FileLock(str(path))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        yield False
        return
    try:
        yield True
    finally:
        lock.release()
