"""Precision `auto`, thread counts, and the model cache under concurrency."""

import json
import os
import socket
import subprocess
import sys
import textwrap

import pytest
import torch
from typer.testing import CliRunner

import corll.hardware as hardware
from corll.cli import app
from corll.hardware import Hardware, choose_precision, machine_tag
from corll.models import cached_build
from corll.policy import load_policy

@pytest.fixture(autouse=True)
def keep_thread_count():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


AVX2 = Hardware("cpu", "AMD EPYC", "AVX2", False, 2)
AVX512_BF16 = Hardware("cpu", "Intel Xeon", "AVX512-BF16", True, 2)


def test_auto_picks_fp32_without_native_bf16_and_says_why():
    choice = choose_precision("auto", AVX2)
    assert choice.precision == "fp32" and choice.warning is None
    assert choice.reason == "precision fp32: this CPU (AVX2) has no native bf16"


def test_auto_picks_bf16_where_the_cpu_computes_it_natively():
    choice = choose_precision("auto", AVX512_BF16)
    assert choice.precision == "bf16" and "natively" in choice.reason


def test_auto_measures_a_native_bf16_cpu_and_picks_bf16_only_where_it_is_clearly_faster():
    """An Intel Xeon listed AVX512-BF16 yet ran every phase slower in bf16: the flag alone misleads."""
    slow = Hardware("cpu", "Intel Xeon", "AVX512-BF16", True, 2, bf16_speedup=0.61)
    fast = Hardware("cpu", "AMD EPYC", "AVX512-BF16", True, 2, bf16_speedup=4.4)
    choice = choose_precision("auto", slow)
    assert choice.precision == "fp32" and "×0.61" in choice.reason
    assert choose_precision("auto", fast).precision == "bf16" and "×4.4" in choose_precision("auto", fast).reason
    edge = Hardware("cpu", "x", "AVX512-BF16", True, 2, bf16_speedup=hardware.BF16_MIN_SPEEDUP - 0.01)
    assert choose_precision("auto", edge).precision == "fp32"
    assert "measured slower" in choose_precision("bf16", slow).warning
    assert choose_precision("bf16", fast).warning is None


def test_the_bf16_measurement_is_a_ratio_of_real_timings_and_keeps_the_thread_count():
    torch.set_num_threads(2)
    ratio = hardware.measure_bf16_speedup(rows=64, width=64, out=64, repeats=2)
    assert 0 < ratio < 100 and torch.get_num_threads() == 2


def test_explicit_bf16_on_a_cpu_without_it_runs_with_a_warning_naming_the_slowdown():
    choice = choose_precision("bf16", AVX2)
    assert choice.precision == "bf16"
    assert "slower than fp32" in choice.warning and "×12" in choice.warning
    assert choose_precision("bf16", AVX512_BF16).warning is None
    assert choose_precision("fp32", AVX512_BF16).precision == "fp32"


def test_unknown_precision_is_named():
    with pytest.raises(ValueError, match="unknown precision 'fp8'"):
        choose_precision("fp8", AVX2)


def test_native_bf16_needs_a_bf16_unit_not_only_onednn_support(monkeypatch):
    """oneDNN reports bf16 support on AVX512 CPUs that only emulate it; the flags decide."""
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for flags, native, name in [({"avx2", "avx512f"}, False, None), ({"avx512f", "avx512_bf16"}, True, "AVX512-BF16"),
                                ({"amx_bf16", "avx512_bf16"}, True, "AMX")]:
        monkeypatch.setattr(hardware, "cpu_flags", lambda flags=flags: flags)
        hardware.detect.cache_clear()
        detected = hardware.detect()
        assert detected.native_bf16 is native
        if name:
            assert detected.capability == name
    hardware.detect.cache_clear()


def test_load_policy_resolves_auto_by_the_hardware(monkeypatch):
    monkeypatch.setattr(hardware, "detect", lambda: AVX2)
    assert load_policy("tiny").precision == "fp32"
    monkeypatch.setattr(hardware, "detect", lambda: AVX512_BF16)
    assert load_policy("tiny").precision == "bf16"


def test_models_compute_on_the_gpu_a_launch_assigns_and_a_policy_kept_on_the_cpu_trains_there(monkeypatch):
    from corll.learners.dpo import make_accelerator

    policy = load_policy("tiny", precision="fp32", device="cpu")
    assert policy.device.type == "cpu" and make_accelerator(policy.device).device.type == "cpu"
    monkeypatch.setattr(hardware, "detect", lambda: Hardware("cuda", "NVIDIA H200", "CUDA", True, 16))
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    assert hardware.compute_device() == "cuda:0"
    monkeypatch.setenv("LOCAL_RANK", "3")  # the fourth process of an `accelerate launch`
    assert hardware.compute_device() == "cuda:3"
    monkeypatch.setattr(hardware, "detect", lambda: AVX2)
    assert hardware.compute_device() == "cpu"


def test_simulate_says_the_choice_and_records_it_in_config_json(tmp_path, monkeypatch):
    monkeypatch.setattr(hardware, "detect", lambda: AVX2)
    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["simulate", "--task", "synthetic", "--model", "tiny", "--rounds", "1",
                                      "--algorithm", "corll", "--max-new-tokens", "4", "--batch-size", "2",
                                      "--eval-prompts", "2", "--threads", "1", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "precision fp32: this CPU (AVX2) has no native bf16 · 1 thread" in result.output
    config = json.loads((out / "config.json").read_text())
    assert config["precision"] == "auto"
    assert config["hardware"] == {**AVX2.as_dict(), "precision": "fp32", "threads": 1}
    # the record is not a setting: the run resumes
    again = CliRunner().invoke(app, ["simulate", "--out", str(out), "--resume"])
    assert again.exit_code == 0, again.output


def test_a_new_run_computes_in_the_precision_auto_resolved_to_once(tmp_path, monkeypatch):
    """Worker processes get the resolved precision: a second measurement could resolve `auto` otherwise."""
    from corll.config import SimulationConfig
    from corll.run_dir import prepare_run_dir

    monkeypatch.setattr(hardware, "detect", lambda: Hardware("cpu", "x", "AVX512-BF16", True, 2, bf16_speedup=0.6))
    _, config = prepare_run_dir(tmp_path / "run", SimulationConfig(task="synthetic", model="tiny"), False, 1)
    assert config.precision == "fp32"
    assert json.loads((tmp_path / "run" / "config.json").read_text())["precision"] == "auto"


def test_explicit_bf16_warns_on_the_command_line(tmp_path, monkeypatch):
    monkeypatch.setattr(hardware, "detect", lambda: AVX2)
    result = CliRunner().invoke(app, ["simulate", "--task", "synthetic", "--model", "tiny", "--rounds", "1",
                                      "--algorithm", "corll", "--max-new-tokens", "4", "--batch-size", "2",
                                      "--eval-prompts", "2", "--precision", "bf16", "--out", str(tmp_path / "r")])
    assert result.exit_code == 0, result.output
    assert "warning:" in result.output and "slower than fp32" in result.output


def test_available_cpus_respects_the_affinity_mask_and_the_cgroup_quota(tmp_path, monkeypatch):
    monkeypatch.setattr(hardware.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    quota = tmp_path / "cpu.max"
    monkeypatch.setattr(hardware, "CGROUP_CPU_MAX", quota)
    quota.write_text("max 100000\n")
    assert hardware.available_cpus() == 4  # no quota: the affinity mask
    quota.write_text("150000 100000\n")
    assert hardware.available_cpus() == 2  # 1.5 CPUs of quota: two threads
    quota.write_text("800000 100000\n")
    assert hardware.available_cpus() == 4  # a quota above the mask does not add CPUs
    quota.unlink()
    assert hardware.available_cpus() == 4


def test_bad_thread_count_is_refused(tmp_path):
    result = CliRunner().invoke(app, ["simulate", "--task", "synthetic", "--model", "tiny", "--threads", "0",
                                      "--out", str(tmp_path / "r")])
    assert result.exit_code == 2 and "--threads must be >= 1" in result.output
    assert not (tmp_path / "r" / "metrics.jsonl").exists()


BUILDER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from corll.models import cached_build

    def build(staging):
        (staging / "weights").write_text(sys.argv[2])
        time.sleep(1.0)  # both processes are inside the build at once without the lock
        (staging / "config.json").write_text("{}")

    print(cached_build(Path(sys.argv[1]), build))
""")


def test_two_processes_building_the_model_cache_at_once_both_succeed(tmp_path):
    """The first conversion used to crash the loser with 'Directory not empty' at the rename."""
    target = tmp_path / "cache" / "model"
    procs = [subprocess.Popen([sys.executable, "-c", BUILDER, str(target), name], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for name in ("first", "second")]
    outputs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    assert {o[0].strip() for o in outputs} == {str(target)}
    assert (target / "weights").read_text() in ("first", "second")
    assert sorted(p.name for p in target.parent.iterdir() if not p.name.endswith(".lock")) == ["model"]


def test_a_build_killed_outright_leaves_no_staging_behind_for_long(tmp_path):
    """A killed build never runs its clean-up; the next build removes what it staged, and nothing of a build
    that still runs or of another machine's."""
    target = tmp_path / "model"
    mine = f".model-{socket.gethostname()}-"
    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait()
    dead = tmp_path / f"{mine}{ended.pid}-abc123"
    running = tmp_path / f"{mine}{os.getpid()}-def456"
    elsewhere = tmp_path / f".model-another-machine-{ended.pid}-ghi789"
    for staging in (dead, running, elsewhere):
        staging.mkdir()
        (staging / "weights").write_text("half")

    def build(staging):
        (staging / "config.json").write_text("{}")

    assert cached_build(target, build) == target
    assert not dead.exists() and running.exists() and elsewhere.exists()


def test_a_lost_rename_uses_the_winners_copy(tmp_path):
    """Without the lock's protection (another machine on a shared cache), losing the rename is no error."""
    target = tmp_path / "model"

    def build(staging):
        (staging / "config.json").write_text("{}")
        target.mkdir()
        (target / "config.json").write_text('{"winner": true}')  # another process renamed first

    assert cached_build(target, build) == target
    assert json.loads((target / "config.json").read_text()) == {"winner": True}
    assert [p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")] == ["model"]


def test_results_of_different_vendors_with_the_same_instruction_set_get_different_names():
    amd = Hardware("cpu", "AMD EPYC 9B14", "AVX512-BF16", True, 2)
    intel = Hardware("cpu", "Intel(R) Xeon(R) Processor", "AVX512-BF16", True, 2)
    assert (amd.tag, intel.tag) == ("amd-avx512bf16", "intel-avx512bf16")
    assert machine_tag("QEMU Virtual CPU", "AVX2") == "avx2"


SERVING_POLICY = """
from corll.hardware import prepare_serving_threads, prepare_threads
import os, sys
prepare_threads()
prepare_serving_threads()
print(os.environ.get("OMP_WAIT_POLICY"), "torch" in sys.modules)
"""


def test_a_server_waits_by_openmps_own_policy_unless_the_user_chose_one():
    """corll's passive default gives way to OpenMP's brief spin before torch loads; a user's choice stays."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}

    def policy(**chosen: str) -> list[str]:
        return subprocess.run([sys.executable, "-c", SERVING_POLICY], env={**env, **chosen}, capture_output=True,
                              text=True, check=True).stdout.split()

    assert policy() == ["None", "False"]
    assert policy(OMP_WAIT_POLICY="PASSIVE") == ["PASSIVE", "False"]
