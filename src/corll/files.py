"""Files that stay whole whatever happens to the process: writes that land all at once, and locks the
OS releases if their holder dies."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic(path: Path) -> Iterator[Path]:
    """A temporary file beside `path` to write, renamed onto `path` when the block ends without an error:
    a reader (or a resumed run) sees the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    yield tmp
    os.replace(tmp, path)


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
