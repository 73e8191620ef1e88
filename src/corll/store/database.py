"""The database underneath the feedback log: its engine (SQLite pragmas, transactions that begin where
SQLAlchemy begins them), its migrations, and the locks that serialize work on one user or one learner.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from corll.files import try_file_lock

LEARNER = "learner"  # the learner's row in worker_states
LEASE_SPACE = 0x636F726C  # the advisory key space of lineage leases ("corl" in ASCII)
WRITE = "corll_write"  # execution option of the connections `Store.transaction` writes through


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(connection, _record) -> None:
            cursor = connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")  # readers never block the writer
            cursor.execute("PRAGMA synchronous=FULL")  # an acknowledged event survives a power cut
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()
            # Python's sqlite3 would open a transaction only at the first write, so a transaction's reads
            # could precede a concurrent writer's commit: transactions begin where SQLAlchemy begins them
            connection.isolation_level = None

        @event.listens_for(engine, "begin")
        def _begin(connection) -> None:
            # a write transaction takes the write lock at once: what it read is still true when it writes
            connection.exec_driver_sql("BEGIN IMMEDIATE" if connection.get_execution_options().get(WRITE)
                                       else "BEGIN")

        return engine
    return create_engine(url, pool_pre_ping=True)


def upgrade(engine: Engine) -> None:
    """Bring the schema to the latest Alembic revision."""
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(Path(__file__).parent / "migrations"))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "head")


def lock_users(s: Session, tenant: str, users: list[str], *, exclusive: bool = False) -> None:
    """Serialize this transaction against forgetting these users. On PostgreSQL: transaction-scoped advisory
    locks, shared for feedback and logging (which may run side by side), exclusive for forget, taken in one
    order so two transactions never wait on each other. On SQLite the write transaction already holds the
    database's write lock from its first statement."""
    if s.get_bind().dialect.name != "postgresql":
        return
    function = "pg_advisory_xact_lock" if exclusive else "pg_advisory_xact_lock_shared"
    for user in sorted(set(users)):
        s.execute(text(f"SELECT {function}(hashtextextended(:scope, 0))"), {"scope": f"{tenant}/{user}"})


@contextmanager
def hold_learner_lock(engine: Engine) -> Iterator[bool]:
    """Try the database's learner lock; yields whether it is held (then until the block ends). On SQLite an
    exclusive lock on a file beside the database: one learner per database, and it ends with the process
    however it ends, so a learner killed with SIGKILL does not keep its successor out. On PostgreSQL any
    number of learner workers may run: each lineage is leased to one at a time (`hold_lineage_lease`)."""
    if engine.dialect.name == "postgresql":
        yield True
        return
    database = engine.url.database
    if not database or database == ":memory:":
        yield True  # a private in-memory database: no other process can reach it
        return
    with try_file_lock(f"{database}.learner.lock") as held:
        yield held


@contextmanager
def hold_lineage_lease(engine: Engine, tenant: str, user: str | None) -> Iterator[bool]:
    """Try to lease one lineage (a user's, or with user None the tenant's shared one) to this worker: yields
    whether it is held, then until the block ends. On PostgreSQL a session advisory lock on a connection
    kept for the lease (two-key form, a key space apart from `lock_users`' locks): PostgreSQL ends it the
    moment the holder's connection ends, so a worker that dies mid-training, even by SIGKILL, frees its
    lineage for another at once, with no expiry to wait out. Elsewhere one learner holds the database."""
    if engine.dialect.name != "postgresql":
        yield True
        return
    scope = f"{tenant}/{'' if user is None else user}"
    with engine.connect() as connection:
        held = bool(connection.execute(text("SELECT pg_try_advisory_lock(:space, hashtext(:scope))"),
                                       {"space": LEASE_SPACE, "scope": scope}).scalar())
        try:
            yield held
        finally:
            if held:
                connection.execute(text("SELECT pg_advisory_unlock(:space, hashtext(:scope))"),
                                   {"space": LEASE_SPACE, "scope": scope})
                connection.commit()
