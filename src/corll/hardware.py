"""What this machine computes fast: the precision and the thread count corll runs with.

bf16 is only fast where the hardware computes it natively (CUDA with bf16, or a CPU
with AVX512-BF16 or AMX). On an AVX2-only CPU, bf16 matmuls are emulated and run
several times slower than fp32 (measured on an AMD EPYC with AVX2: 1.1 vs 32 GFLOP/s
on one thread; a CoRLL DPO step ×12 slower), so `auto` picks fp32 there. Having the
bf16 instructions is not enough either: on an Intel Xeon that lists AVX512-BF16 (its AMX
not exposed to the machine) every phase of a round ran slower in bf16 (×0.47–0.72) and
the demo took 7.3 min against fp32's 5.2, while on an AMD EPYC with AVX512-BF16 bf16's
matmul peak is 4.4× fp32's and the demo ran ×1.23 faster in bf16. So on a CPU with
native bf16 `auto` also measures: one matmul of SmolLM2's shapes at a training step's
rows, in both precisions, about a tenth of a second, and bf16 only where it is clearly
faster (`BF16_MIN_SPEEDUP`).

Threads: torch's OpenMP threads busy-wait at every barrier by default, and when
another process shares the cores a waiting thread steals the time of the thread it
waits for; the same sampling job took 15× longer with two threads than with one on
a busy 2-core machine. corll therefore asks OpenMP to wait passively (set before
torch loads; an explicit OMP_WAIT_POLICY wins) and uses as many threads as the CPUs
this process may actually run on (affinity and cgroup quota), unless told otherwise.
A server is the exception (`prepare_serving_threads`): its decoding thread does hundreds
of small operations per step, and a passive worker that sleeps between them costs more
than it saves; it runs OpenMP's own policy, a brief spin before sleeping.

OpenMP gives each thread that runs parallel work a team of its own, and once a process
holds more of these threads than it has CPUs, libgomp cuts every spin short: the
workers then sleep between operations whatever the policy. So a server does all its
torch work on its one decoding thread, model loading included (`server/engine.py`).

Nothing here imports torch at module load: the CLI calls `prepare_threads` before
torch loads, which is the only time the OpenMP wait policy can still be chosen.
"""

from __future__ import annotations

import math
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

PRECISIONS = ("auto", "fp32", "bf16")
CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")  # cgroup v2 CPU quota: "max 100000" or "<quota> <period>"

# Measured on an AVX2-only CPU (torch 2.13, one thread, the same inputs in both precisions).
BF16_SLOWDOWN = "a DPO step ran ×12 slower, sampling ×3.7 slower than fp32 on an AVX2 CPU"
# bf16's matmul must beat fp32's by this much for `auto` to pick it on a CPU: decoding few rows gains less
# than the matmul (on the AMD EPYC above, sampling ran ×0.85–0.93 in bf16 while the demo as a whole ran
# ×1.23 faster, its matmul ×4.4), so a small matmul gain would not pay for itself.
BF16_MIN_SPEEDUP = 1.5


class PrecisionError(ValueError):
    """An unknown precision name."""


@dataclass(frozen=True)
class Hardware:
    """The facts the precision and thread choices rest on; recorded in every run's config.json."""

    device: str  # "cpu" or "cuda"
    cpu: str  # the processor's model name
    capability: str  # AVX2 | AVX512 | AVX512-BF16 | AMX | what torch reports otherwise
    native_bf16: bool
    cpus: int  # the CPUs this process may use (affinity and cgroup quota)
    bf16_speedup: float | None = None  # fp32 matmul time / bf16's, measured where bf16 is native on a CPU

    def as_dict(self) -> dict:
        return asdict(self)

    @property
    def tag(self) -> str:
        """The kind of machine in a results file's name, e.g. `amd-avx512bf16`: the same instruction set
        runs at different speeds on different vendors' cores, so their tables must not overwrite each other."""
        return machine_tag(self.cpu, self.capability)


def machine_tag(cpu: str, capability: str) -> str:
    """`vendor-capability` in lower case (`intel-avx512bf16`), the vendor left out where the name has none."""
    vendor = next((v for v in ("amd", "intel", "nvidia", "arm", "apple") if v in cpu.lower()), "")
    name = capability.lower().replace("-", "")
    return f"{vendor}-{name}" if vendor else name


def cpu_flags() -> set[str]:
    """The CPU feature flags the kernel reports (empty where /proc/cpuinfo does not exist)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            return set(line.split(":", 1)[1].split())
    return set()


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def available_cpus() -> int:
    """CPUs this process may run on: its affinity mask, capped by a cgroup CPU quota (containers)."""
    try:
        count = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        count = os.cpu_count() or 1
    try:
        quota, period = CGROUP_CPU_MAX.read_text().split()
        if quota != "max":
            count = min(count, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, count)


def capability_name(torch_capability: str, flags: set[str]) -> str:
    """A readable name for the CPU's widest vector unit, bf16 units included."""
    if "amx_bf16" in flags:
        return "AMX"
    if "avx512_bf16" in flags:
        return "AVX512-BF16"
    return torch_capability.replace("_", "-")


@lru_cache(maxsize=1)
def detect() -> Hardware:
    """Inspect this machine once (imports torch)."""
    import torch

    cpus = available_cpus()
    if torch.cuda.is_available():
        return Hardware("cuda", torch.cuda.get_device_name(), "CUDA", torch.cuda.is_bf16_supported(), cpus)
    flags = cpu_flags()
    capability = capability_name(torch.backends.cpu.get_cpu_capability(), flags)
    # oneDNN's own test also passes on AVX512 CPUs without bf16 units, where bf16 is emulated:
    # where the kernel lists the flags, native means a bf16 unit (AVX512-BF16 or AMX).
    native = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    if flags:
        native = native and bool(flags & {"avx512_bf16", "amx_bf16"})
    return Hardware("cpu", cpu_model(), capability, native, cpus, measure_bf16_speedup() if native else None)


def measure_bf16_speedup(rows: int = 512, width: int = 576, out: int = 1536, repeats: int = 5) -> float:
    """fp32 time / bf16 time of one linear layer's product (SmolLM2's attention width and MLP height, a
    training step's rows), one thread, the best of `repeats` each, the precisions alternating."""
    import torch
    import torch.nn.functional as F

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        generator = torch.Generator().manual_seed(0)
        x32, w32 = torch.randn(rows, width, generator=generator), torch.randn(out, width, generator=generator)
        pairs = {"fp32": (x32, w32), "bf16": (x32.bfloat16(), w32.bfloat16())}
        best = {name: math.inf for name in pairs}
        for _ in range(repeats + 1):  # the first round warms up
            for name, (x, w) in pairs.items():
                started = time.perf_counter()
                F.linear(x, w)
                best[name] = min(best[name], time.perf_counter() - started)
        return round(best["fp32"] / best["bf16"], 2)
    finally:
        torch.set_num_threads(threads)


def compute_device() -> str:
    """Where models compute: this process's GPU when CUDA is available (under a multi-GPU launch, the one
    its LOCAL_RANK names, as `accelerate` assigns them), else the CPU. CUDA_VISIBLE_DEVICES="" keeps a GPU
    machine on its CPU."""
    if detect().device != "cuda":
        return "cpu"
    return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"


@dataclass(frozen=True)
class PrecisionChoice:
    precision: str  # fp32 | bf16
    reason: str  # one line for the user
    warning: str | None = None  # set when an explicit choice is slow on this machine


def choose_precision(requested: str, hardware: Hardware | None = None) -> PrecisionChoice:
    """Resolve `auto` to bf16 where the hardware computes bf16 natively and, on a CPU, measurably faster than
    fp32; fp32 everywhere else. Serving follows the same rule: on the Intel Xeon whose bf16 matmul measured
    ×0.61 fp32's, the engine served 32 clients faster in fp32 at every adapter count (152.0 against 137.2
    tokens/s on the base model)."""
    if requested not in PRECISIONS:
        raise PrecisionError(f"unknown precision {requested!r}: use one of {', '.join(PRECISIONS)}")
    hw = hardware or detect()
    where = f"this {'GPU' if hw.device == 'cuda' else 'CPU'} ({hw.capability})"
    if requested == "auto":
        if not hw.native_bf16:
            return PrecisionChoice("fp32", f"precision fp32: {where} has no native bf16")
        if hw.bf16_speedup is None or hw.bf16_speedup >= BF16_MIN_SPEEDUP:
            measured = "" if hw.bf16_speedup is None else f" (its matmul ×{hw.bf16_speedup:g} fp32's here)"
            return PrecisionChoice("bf16", f"precision bf16: {where} computes bf16 natively{measured}")
        return PrecisionChoice("fp32", f"precision fp32: {where} has native bf16, but its matmul measured "
                                       f"×{hw.bf16_speedup:g} fp32's here (bf16 needs ×{BF16_MIN_SPEEDUP:g})")
    reason = f"precision {requested} (asked for); {where} {'has' if hw.native_bf16 else 'has no'} native bf16"
    warning = None
    if requested == "bf16" and not hw.native_bf16:
        warning = (f"bf16 on {where} is emulated and runs several times slower than fp32 "
                   f"({BF16_SLOWDOWN}); --precision auto picks fp32 here")
    elif requested == "bf16" and hw.bf16_speedup is not None and hw.bf16_speedup < 1:
        warning = (f"bf16 on {where} measured slower than fp32 (its matmul ×{hw.bf16_speedup:g} fp32's); "
                   "--precision auto picks fp32 here")
    return PrecisionChoice(requested, reason, warning)


_PASSIVE_BY_DEFAULT = False  # whether OMP_WAIT_POLICY=PASSIVE is corll's default here, not the user's choice


def prepare_threads() -> None:
    """Before torch loads: OpenMP threads wait passively, unless the user chose a policy."""
    global _PASSIVE_BY_DEFAULT
    _PASSIVE_BY_DEFAULT = "OMP_WAIT_POLICY" not in os.environ
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def prepare_serving_threads() -> None:
    """Before torch loads, in a process whose one thread decodes for a server: OpenMP's own wait (a brief spin
    before sleeping) instead of corll's passive default; an explicit OMP_WAIT_POLICY still wins. A decoding step
    is hundreds of small operations, and a passive worker sleeps between any two of them: on the Intel Xeon the
    engine alone decoded 32 clients' rows at 137 tokens/s passive against 218 with the brief spin (SmolLM2, two
    threads); with the engine's work on its one thread as well, `corll serve` 184 against 145 (docs/service.md).
    Once torch has loaded, OpenMP keeps the policy it loaded with, and this changes nothing."""
    if _PASSIVE_BY_DEFAULT and "torch" not in sys.modules:
        os.environ.pop("OMP_WAIT_POLICY", None)


def set_threads(threads: int | None) -> int:
    """Use `threads` intra-op threads (default: the CPUs available to this process); returns the count."""
    import torch

    count = available_cpus() if threads is None else threads
    if count < 1:
        raise ValueError(f"--threads must be >= 1, not {count}")
    torch.set_num_threads(count)
    return count
