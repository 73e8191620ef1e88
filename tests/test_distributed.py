import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from corll.service.supervise import free_port
from tests.distributed_step import BATCHES, step


def test_steps_on_two_cpu_processes_equal_single_process_steps(tmp_path):
    out = tmp_path / "state.pt"
    launcher = Path(sys.executable).with_name("accelerate")
    # two CPU processes also on a GPU machine (where the single-process step below runs on its GPU)
    path = os.pathsep.join(filter(None, [str(Path(__file__).parents[1]), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    run = subprocess.run([str(launcher), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                          "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port()),
                          str(Path(__file__).with_name("distributed_step.py")), str(out)],
                         env=env, timeout=300, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-4000:]
    distributed = torch.load(out)
    assert distributed["world"] == 2
    single, losses = step(BATCHES)
    assert losses == pytest.approx(distributed["losses"], abs=1e-6)  # each step reports the whole batch's loss
    assert single.keys() == distributed["state"].keys()
    # Adam divides by the gradients' own size, so the order in which the processes' sums are added shows
    # up to ~4e-6 in the second step's tiny LoRA-A updates; a wrong share or weight moves them by ~lr = 1e-2
    for name, value in single.items():
        gap = float((value.cpu() - distributed["state"][name]).abs().max())
        assert gap < 2e-5, (name, gap)
    assert any(v.abs().sum() > 0 for k, v in single.items() if "lora_B" in k)  # the step did move the adapter


def test_a_learner_on_two_cpu_processes_reaches_the_single_process_candidate(tmp_path):
    """`accelerate launch --num_processes 2 -m corll learn`: the first process leases, gates and decides, both
    train each candidate data-parallel; the candidate and its decision are those of one process."""
    from safetensors.torch import load_file

    from corll.store import Store
    from tests.service.edits import ALICE, log_edits

    for name in ("one", "two"):  # the same log twice (the same event ids: the seeds follow the data)
        log_edits(Store(f"sqlite:///{tmp_path / (name + '.db')}"), ALICE, 9)
    options = ["--once", "--model", "tiny", "--min-edits", "6", "--replay", "4", "--epochs", "3", "--batch-size", "3",
               "--lr", "5e-3", "--kl-limit", "50", "--precision", "fp32", "--nice", "0"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(__file__).parents[1]),
                                                                       os.environ.get("PYTHONPATH")])),
           "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    single = subprocess.run([sys.executable, "-m", "corll", "learn", *options, "--db", f"sqlite:///{tmp_path / 'one.db'}",
                             "--adapters", str(tmp_path / "one")], env=env, capture_output=True, text=True, timeout=300)
    assert single.returncode == 0, single.stderr[-4000:]
    launcher = Path(sys.executable).with_name("accelerate")
    team = subprocess.run([str(launcher), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port()),
                           "-m", "corll", "learn", *options, "--db", f"sqlite:///{tmp_path / 'two.db'}",
                           "--adapters", str(tmp_path / "two")], env=env, capture_output=True, text=True, timeout=300)
    assert team.returncode == 0, team.stderr[-4000:]
    alone, together = (Store(f"sqlite:///{tmp_path / (n + '.db')}").decisions() for n in ("one", "two"))
    assert len(alone) == len(together) == 1, (single.stdout, team.stdout)
    alone, together = alone[0], together[0]
    assert (together.decision, together.seen_through) == (alone.decision, alone.seen_through)
    assert together.metrics["margin_gain"] == pytest.approx(alone.metrics["margin_gain"], abs=1e-3)
    weights = [load_file(next((tmp_path / n).rglob("adapter_model.safetensors"))) for n in ("one", "two")]
    assert weights[0].keys() == weights[1].keys()
    assert max(float((weights[0][k] - weights[1][k]).abs().max()) for k in weights[0]) < 1e-4
