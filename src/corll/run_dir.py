"""A simulation's run folder: `config.json` (the resolved configuration and the machine it started on),
`metrics.jsonl` (one record per evaluation), `summary.json`, `comparisons.json`, `checkpoints/` and
`policies/`; every write atomic, so an interrupted run leaves whole files and resumes from them.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import torch

from corll import hardware
from corll.config import ConfigError, SimulationConfig
from corll.learners.registry import check
from corll.hardware import choose_precision
from corll.files import atomic


class RunDir:
    """The files of one run; every write is atomic (temporary file, then rename)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @property
    def config_file(self) -> Path:
        return self.path / "config.json"

    @property
    def metrics_file(self) -> Path:
        return self.path / "metrics.jsonl"

    def checkpoint(self, algorithm: str) -> Path:
        return self.path / "checkpoints" / f"{algorithm}.pt"

    def write_text(self, path: Path, text: str) -> None:
        with atomic(path) as tmp:
            tmp.write_text(text)

    def write_json(self, path: Path, value) -> None:
        self.write_text(path, json.dumps(value, indent=2) + "\n")

    def metrics_lock(self):
        """Algorithms of one run may train in parallel processes (--jobs); they share metrics.jsonl."""
        from filelock import FileLock

        return FileLock(str(self.path / ".metrics.lock"))

    def read_metrics(self) -> list[dict]:
        if not self.metrics_file.exists():
            return []
        return [json.loads(line) for line in self.metrics_file.read_text().splitlines() if line.strip()]

    def keep_metrics(self, algorithm: str, up_to_round: int) -> list[dict]:
        """Drop `algorithm`'s records after `up_to_round` (what its checkpoint has not seen), keep every
        other algorithm's; returns the algorithm's kept records."""
        with self.metrics_lock():
            records = self.read_metrics()
            kept = [r for r in records if r["algorithm"] != algorithm or r["round"] <= up_to_round]
            if len(kept) != len(records):
                self.write_text(self.metrics_file, "".join(json.dumps(r) + "\n" for r in kept))
        return [r for r in kept if r["algorithm"] == algorithm]

    def append_metric(self, record: dict) -> None:
        with self.metrics_lock(), self.metrics_file.open("a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def save_checkpoint(self, algorithm: str, state: dict) -> None:
        with atomic(self.checkpoint(algorithm)) as tmp:
            torch.save(state, tmp)


class RunExistsError(FileExistsError):
    """The output folder already holds a run and --resume was not given."""


def prepare_run_dir(out: Path, config: SimulationConfig, resume: bool,
                    threads: int) -> tuple[RunDir, SimulationConfig]:
    """Create the run folder, or reopen it to resume with the configuration it was started with;
    `threads` is what each algorithm trains with (recorded: results depend on it)."""
    run = RunDir(out)
    if resume and not run.config_file.exists():
        raise ConfigError(f"--resume: {out} holds no run (no config.json); leave out --resume to start one there")
    if run.config_file.exists():
        if not resume:
            raise RunExistsError(f"{out} already holds a run: pass --resume to continue it, or choose another --out")
        resumed = SimulationConfig(**computed_settings(json.loads(run.config_file.read_text())))
        check(resumed)
        return run, resumed
    out.mkdir(parents=True, exist_ok=True)
    record = {**dataclasses.asdict(config), HARDWARE_KEY: hardware_record(config, threads)}
    run.write_json(run.config_file, record)
    # the run computes in what `auto` resolved to here: worker processes must not measure and resolve it again
    return run, SimulationConfig(**computed_settings(record))


HARDWARE_KEY = "hardware"  # in config.json: where the run started, not a setting


def computed_settings(saved: dict) -> dict:
    """A run folder's settings as its run computes them: `auto` precision reads as what it resolved to on
    the machine the run started on. A run resumed on another kind of CPU keeps that precision (bf16 halfway
    through an fp32 run would change what it computes), and a run made with `auto` on an fp32 machine is the
    same computation as one that asked for fp32."""
    settings = {k: v for k, v in saved.items() if k != HARDWARE_KEY}
    resolved = (saved.get(HARDWARE_KEY) or {}).get("precision")
    if settings.get("precision") == "auto" and resolved:
        settings["precision"] = resolved
    return settings


def hardware_record(config: SimulationConfig, threads: int) -> dict:
    """The machine a run started on and what `auto` resolved to there (precision, threads per algorithm)."""
    return {**hardware.detect().as_dict(), "precision": choose_precision(config.precision).precision,
            "threads": threads}
