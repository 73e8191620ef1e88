"""What the benchmarks share: a PostgreSQL server for a run, and where a table is written."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from corll.hardware import Hardware
from corll.service.supervise import free_port

ROOT = Path(__file__).resolve().parents[1]
POSTGRES = ROOT / "scripts" / "postgres.sh"


@contextmanager
def postgres() -> Iterator[str]:
    """A database URL: $CORLL_TEST_POSTGRES_URL if set, else a throw-away server (scripts/postgres.sh) on a
    free port, stopped and removed when the block ends."""
    if url := os.environ.get("CORLL_TEST_POSTGRES_URL"):
        yield url
        return
    folder = Path(tempfile.mkdtemp(prefix="corll-postgres-"))
    folder.chmod(0o777)  # the script runs the server as the postgres user when started as root
    try:
        started = subprocess.run(["bash", str(POSTGRES), "start", str(folder), str(free_port())],
                                 capture_output=True, text=True, check=True)
        yield started.stdout.strip().splitlines()[-1]
    finally:
        subprocess.run(["bash", str(POSTGRES), "stop", str(folder)], capture_output=True)
        shutil.rmtree(folder, ignore_errors=True)


def publish(table: str, out: Path | None, hardware: Hardware, numbers: dict, tag: str = "") -> None:
    """Print the table and, given a folder `out`, write it there as `<cpu>[-<tag>]-table.md` with its numbers
    in `.json`: one pair per kind of CPU (and variant), beside the others."""
    print(table)
    if out is None:
        return
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"{hardware.tag}{'-' + tag if tag else ''}-table"
    stem.with_suffix(".md").write_text(table)
    stem.with_suffix(".json").write_text(json.dumps({"machine": hardware.cpu, **numbers}, indent=2) + "\n")
