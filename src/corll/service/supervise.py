"""The learner beside the server (`corll serve --learn`): started as a child process, restarted when it dies.

A learner that dies (a crash, the kernel's OOM killer, a SIGKILL) would otherwise leave the server
serving, `/healthz` saying ok and `corll status` showing its last step forever, while new edits get no
decision. The supervisor waits on the child in a thread; when it exits while the server runs, it records
why in the learner's row of the log (what `corll status` shows), waits a backoff that doubles with each
quick failure (1 s, 2 s, 4 s … at most a minute; a child that ran for a minute starts the count again) and
starts a new one, which resumes from the log's watermarks. `status()` is what `/healthz` reports.
"""

from __future__ import annotations

import signal
import subprocess
import threading
import time
from collections.abc import Callable

from sqlalchemy.exc import SQLAlchemyError

from corll.store import LEARNER, Store

MAX_BACKOFF = 60.0
STABLE = 60.0  # seconds a child must run for its next death to count as the first again


def exit_reason(code: int) -> str:
    """A child's exit code in words (negative: killed by that signal)."""
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with code {code}"


class LearnerSupervisor:
    def __init__(self, start: Callable[[], subprocess.Popen], store: Store) -> None:
        self._start, self.store = start, store
        self.process: subprocess.Popen | None = None
        self.restarts = 0
        self.last_exit: str | None = None
        self.state = "starting"
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="learner-supervisor", daemon=True)

    def start(self) -> LearnerSupervisor:
        self.process = self._start()
        self.state = "running"
        self._thread.start()
        return self

    def _watch(self) -> None:
        quick_failures = 0
        while not self._stopping.is_set():
            started = time.monotonic()
            code = self.process.wait()
            if self._stopping.is_set():
                return
            quick_failures = 1 if time.monotonic() - started >= STABLE else quick_failures + 1
            delay = min(MAX_BACKOFF, 2.0 ** (quick_failures - 1))
            self.last_exit = exit_reason(code)
            self.state = f"restarting in {delay:g} s"
            self._record(f"died ({self.last_exit}); the server restarts it in {delay:g} s "
                         f"(restart {self.restarts + 1})")
            if self._stopping.wait(delay):
                return
            self.process = self._start()
            self.restarts += 1
            self.state = "running"

    def _record(self, state: str) -> None:
        try:
            self.store.set_worker_state(LEARNER, state)
        except SQLAlchemyError:  # the database is down: the next learner will say how it is
            pass

    def status(self) -> dict:
        alive = self.process is not None and self.process.poll() is None
        return {"state": self.state if alive or self.state != "running" else "stopped",
                "pid": self.process.pid if alive else None, "restarts": self.restarts, "last_exit": self.last_exit}

    def stop(self, timeout: float = 30) -> None:
        self._stopping.set()
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self._thread.join(timeout=5)


def free_port() -> int:
    """A loopback port nobody listens on now (for a child server, or a launcher's rendezvous)."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
