"""Child processes that end with the process that started them (Linux), and telling a live process from
a dead one.

A parent killed with SIGTERM or SIGKILL runs no clean-up of its own, so without help its children live
on: a `corll simulate --jobs 2` worker goes on training for minutes on the cores a rerun needs, writing
into the run folder `--resume` continues; a served model's learner or vLLM child keeps its port and
memory. The kernel can send a child a signal when its parent ends; each child asks for it at its start.
"""

from __future__ import annotations

import os
import signal
import sys

PR_SET_PDEATHSIG = 1  # prctl(2): the signal a process receives when its parent ends


def die_with_parent(parent: int | None = None) -> None:
    """In a child process: be sent SIGTERM when the parent ends, however it ends. `parent`, the pid that
    started this process, closes the race of a parent that ended before the request took effect (not
    needed in a `preexec_fn`, which runs while the parent forks)."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if parent is not None and os.getppid() != parent:
        os.kill(os.getpid(), signal.SIGTERM)


def alive(pid: int) -> bool:
    """Whether a process with this pid runs on this machine (one of another user's counts as running)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        pass
    return True
