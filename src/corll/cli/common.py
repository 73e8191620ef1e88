"""What every `corll` command shares: the one typer app, the console, failing with a message, the options
that several commands take, progress bars, the hardware choice, and opening the feedback log.

The wings (`research`, `reward_model`, `service`) register on `app` and import from here, never from
each other.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.progress import Progress

from corll.config import SimulationConfig
from corll.hardware import prepare_threads

# Torch, transformers and the server load inside the commands that need them, so that --help and
# the store's commands answer at once. Before torch loads: the OpenMP wait policy is read once.
prepare_threads()


app = typer.Typer(help="corll: make LLMs learn from the edits and reactions users already give.",
                  no_args_is_help=True, add_completion=False)
console = Console()
D = SimulationConfig()


def fail(message: str) -> None:
    console.print(f"[bold red]error:[/] {message}")
    raise typer.Exit(code=2)


PrecisionOption = Annotated[str, typer.Option(
    help="auto (bf16 where the hardware computes it natively, else fp32), fp32, or bf16 autocast "
         "(trained weights and optimizer stay fp32).")]
ThreadsOption = Annotated[Optional[int], typer.Option(
    help="Threads for the model's math (default: the CPUs this process may use).")]


class LoggedProgress(Progress):
    """Where the output is not a terminal (a log file, a pipe), bars cannot redraw: each bar that moves
    prints one timestamped line instead, so a run in the background leaves a log that says where it is."""

    def update(self, task_id, **changes) -> None:
        before = self._task(task_id).completed
        super().update(task_id, **changes)
        if self._task(task_id).completed != before:
            self.note(task_id, self._task(task_id).fields.get("status", ""))

    def note(self, task_id, text: str) -> None:
        """A line about this bar (an evaluation's result), printed only where bars are not drawn."""
        task = self._task(task_id)
        if self.disable:
            self.console.print(f"{time.strftime('%H:%M:%S')} {task.description.strip()} {task.completed:.0f}/"
                               f"{task.total:.0f}" + (f" · {text}" if text else ""), highlight=False, soft_wrap=True)

    def _task(self, task_id):
        return next(task for task in self.tasks if task.id == task_id)


@contextmanager
def progress_bars(*columns) -> Iterator[Progress]:
    """Progress bars that vanish when the command stops early (an error, Ctrl-C), so no empty or
    half-drawn bars are left under the message that says why."""
    with LoggedProgress(*columns, console=console, disable=not console.is_terminal) as bar:
        try:
            yield bar
        except BaseException:
            for task in list(bar.task_ids):
                bar.remove_task(task)
            raise


def use_hardware(precision: str, threads: int | None) -> str:
    """Set the thread count, say which precision runs and why (and warn when it is a slow choice);
    returns the resolved precision."""
    from corll.hardware import PrecisionError, choose_precision, set_threads
    from corll.models import quiet_libraries

    quiet_libraries()
    try:
        count = set_threads(threads)
        choice = choose_precision(precision)
    except (PrecisionError, ValueError) as exc:
        fail(str(exc))
    console.print(f"{choice.reason} · {count} thread{'s' if count > 1 else ''}", style="dim")
    if choice.warning:
        console.print(f"[bold yellow]warning:[/] {choice.warning}")
    return choice.precision


DbOption = Annotated[Optional[str], typer.Option(
    "--db", help="Database URL or SQLite file (default: $CORLL_DATABASE_URL, else ./corll.db).")]


def open_store(db: str | None, *, must_exist: bool = True):
    """The feedback log. Commands that only read it (must_exist) refuse a SQLite file that does not
    exist, so a mistyped --db is an error rather than a new empty database; commands that start a
    deployment (keys create, serve) may create it."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import SQLAlchemyError

    from corll.store import Store
    from corll.store.repository import database_url

    url = make_url(database_url(db))
    if must_exist and url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:") \
            and not Path(url.database).exists():
        fail(f"the database {url.database} does not exist (check --db or $CORLL_DATABASE_URL; "
             "`corll keys create` or `corll serve` creates one)")
    try:
        return Store(db)
    except SQLAlchemyError as exc:
        fail(f"cannot open the database {db or '(default)'}: {exc.__class__.__name__}: {str(exc).splitlines()[0]}")
