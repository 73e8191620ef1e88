"""A learner on several processes: `accelerate launch --num_processes N -m corll learn …`.

For a model too slow for one process, one learner worker can train each candidate data-parallel. The first
process is the worker the log knows: it polls, holds the leases, gates and decides. Before each
candidate's DPO update it hands the other processes an `Assignment` (the seed, the parent's adapter, the
pairs); every process then runs the same shuffled steps, each taking its share of every batch
(`DPOLearner.step`), and the gradients are averaged, so the candidate equals the one a single process
would train (tested on two CPU processes over gloo). The others wait for the next assignment, however
long the log stays quiet, and stop when the first stops.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

import torch

from corll.feedback import PreferencePair
from corll.service.candidate import TrainingSettings, dpo_epochs, load_adapter

IDLE_TIMEOUT = timedelta(days=30)  # the others wait this long for an assignment before the group gives up


@dataclass(frozen=True)
class Assignment:
    seed: int
    parent_adapter: str | None  # None: from the base model
    pairs: list[PreferencePair]


class Team:
    """This process's place in the learner's processes (one process: a team of one, with nothing to send)."""

    def __init__(self) -> None:
        import os

        self.size = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = 0
        if self.size > 1:
            from accelerate import PartialState

            from corll.hardware import compute_device

            state = PartialState(cpu=torch.device(compute_device()).type == "cpu", timeout=IDLE_TIMEOUT)
            self.size, self.rank = state.num_processes, state.process_index

    @property
    def leads(self) -> bool:
        return self.rank == 0

    def assign(self, job: Assignment | None) -> Assignment | None:
        """From the first process to all: the next candidate to train (None: stop). Every process calls it;
        the others get what the first sent."""
        if self.size == 1:
            return job
        from accelerate.utils import broadcast_object_list

        return broadcast_object_list([job], from_process=0)[0]

    def stop(self) -> None:
        """From the first process: the others stop; then every process leaves the group (a process that
        exits still in it aborts)."""
        self.assign(None)
        self._leave()

    def _leave(self) -> None:
        """Leave the group once every process has received the stop: the first process leaving while another
        still reads the stop's broadcast closes gloo's connection under it, and that process aborts."""
        if self.size > 1:
            torch.distributed.barrier()
            torch.distributed.destroy_process_group()

    def follow(self, settings: TrainingSettings) -> None:
        """A process other than the first: train its share of each assigned candidate until told to stop."""
        from corll.policy import LoraSettings, load_policy

        while (job := self.assign(None)) is not None:
            torch.manual_seed(job.seed)  # as the first process does before it loads the policy
            policy = load_policy(settings.model, lora=LoraSettings(), precision=settings.precision, seed=job.seed)
            load_adapter(policy, job.parent_adapter, policy.trainable_state())
            torch.manual_seed(job.seed)
            dpo_epochs(policy, job.pairs, settings.dpo, epochs=settings.epochs, batch_size=settings.batch_size)
        self._leave()
