import os
import subprocess
import sys
from pathlib import Path

import torch

from corll.service.supervise import free_port
from tests.distributed_step import PAIRS, step


def test_a_step_on_two_cpu_processes_equals_a_single_process_step(tmp_path):
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
    single = step(PAIRS)
    assert single.keys() == distributed["state"].keys()
    for name, value in single.items():
        assert torch.allclose(value.cpu(), distributed["state"][name], atol=1e-6), name
    assert any(v.abs().sum() > 0 for k, v in single.items() if "lora_B" in k)  # the step did move the adapter
