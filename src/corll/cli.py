"""The `corll` command line: simulate learners against simulated users, and report on runs."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Annotated, Optional

import typer
from transformers.utils import logging as hf_logging
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from corll.learners import ALGORITHMS, NonFiniteLossError
from corll.losses import DPO_LOSS_TYPES
from corll.policy import BUILTIN_MODELS
from corll.report import plot_curves, summary_table
from corll.simulate import ConfigError, RunExistsError, SimulationConfig, run_simulation
from corll.tasks import TASK_NAMES

# Library chatter (deprecation notices, per-shard progress bars) would bury our own progress display.
warnings.filterwarnings("ignore", category=FutureWarning)
hf_logging.set_verbosity_error()
hf_logging.disable_progress_bar()

app = typer.Typer(help="corll: make LLMs learn from the edits and reactions users already give.",
                  no_args_is_help=True, add_completion=False)
console = Console()
D = SimulationConfig()


def fail(message: str) -> None:
    console.print(f"[bold red]error:[/] {message}")
    raise typer.Exit(code=2)


@app.command()
def simulate(
    out: Annotated[Path, typer.Option(help="Run folder: config.json, metrics.jsonl, summary.json, curves.png.")],
    task: Annotated[str, typer.Option(help=f"{' | '.join(TASK_NAMES)} | path/to/file.py:factory")] = D.task,
    model: Annotated[str, typer.Option(help=f"{' | '.join(BUILTIN_MODELS)} | a local model directory")] = D.model,
    algorithm: Annotated[Optional[list[str]], typer.Option(
        help=f"Learner(s) to run side by side, repeatable: {', '.join(ALGORITHMS)}.")] = None,
    rounds: Annotated[int, typer.Option(help="DPO steps per algorithm; each uses N new preferences.")] = D.rounds,
    seed: Annotated[int, typer.Option(help="Seed for every source of randomness.")] = D.seed,
    k: Annotated[int, typer.Option("--k", help="CoRLL argmax samples per prompt (paper: 9 IMDB, 1 at 7B).")] = D.k,
    batch_size: Annotated[int, typer.Option("--batch-size", "-N",
                                            help="N preferences per DPO step (paper: 64).")] = D.batch_size,
    user: Annotated[str, typer.Option(help="Simulated editor: local (revises the draft in place) or expert "
                                           "(the paper's: picks among l expert candidates).")] = D.user,
    l: Annotated[int, typer.Option("--l", help="Expert candidates per edit (paper: 25 IMDB, 5 at 7B).")] = D.l,
    alpha: Annotated[Optional[float], typer.Option(
        help="Feedback strength α in (0, 1]; unset = minimal improvement (paper ablation: 0.6).")] = D.alpha,
    noise_free: Annotated[bool, typer.Option(
        help="Drop rounds where no expert candidate beats the draft (paper: noisy by default).")] = D.noise_free,
    epsilon: Annotated[float, typer.Option(help="Injected mislabel probability ε in [0, 1] (paper: 0).")] = D.epsilon,
    beta: Annotated[float, typer.Option(help="KL strength β of DPO and the implicit reward (paper: 0.1).")] = D.beta,
    lr: Annotated[float, typer.Option(help="Adam learning rate (paper: 1e-5 full FT; LoRA here: 2e-4).")] = D.lr,
    loss: Annotated[str, typer.Option(help=f"DPO loss: {', '.join(DPO_LOSS_TYPES)}.")] = D.loss_type,
    label_smoothing: Annotated[float, typer.Option(
        help="Conservative DPO smoothing in [0, 0.5) (paper: 0).")] = D.label_smoothing,
    warmup_rounds: Annotated[int, typer.Option(help="Linear lr warm-up steps (paper 7B: 10%).")] = D.warmup_rounds,
    temperature: Annotated[float, typer.Option(help="Sampling temperature (paper: 1).")] = D.temperature,
    top_k: Annotated[int, typer.Option(help="Top-k sampling (paper: 50).")] = D.top_k,
    max_new_tokens: Annotated[int, typer.Option(help="Response length cap in tokens.")] = D.max_new_tokens,
    precision: Annotated[str, typer.Option(help="fp32, or bf16 autocast (weights stay fp32).")] = D.precision,
    full_finetune: Annotated[bool, typer.Option(help="Train all weights instead of a LoRA adapter.")] = False,
    lora_r: Annotated[int, typer.Option(help="LoRA rank (paper 7B: 8).")] = D.lora_r,
    lora_alpha: Annotated[int, typer.Option(help="LoRA alpha (paper 7B: 64; 16 here).")] = D.lora_alpha,
    init_adapter: Annotated[Optional[str], typer.Option(
        help="Start from this LoRA adapter; it also becomes the reference π_0.")] = None,
    eval_every: Annotated[int, typer.Option(help="Evaluate on held-out prompts every E rounds.")] = D.eval_every,
    eval_prompts: Annotated[int, typer.Option(help="Held-out prompts per evaluation.")] = D.eval_prompts,
    eval_samples: Annotated[int, typer.Option(help="Samples per held-out prompt.")] = D.eval_samples,
    checkpoint_every: Annotated[int, typer.Option(help="Checkpoint every C rounds.")] = D.checkpoint_every,
    resume: Annotated[bool, typer.Option(help="Continue the run in --out from its last checkpoint.")] = False,
) -> None:
    """Train learners against simulated users and compare their held-out true reward."""
    config = SimulationConfig(
        task=task, model=model, algorithms=algorithm or list(D.algorithms), rounds=rounds, seed=seed, k=k,
        batch_size=batch_size, user=user, l=l, alpha=alpha, noise_free=noise_free, epsilon=epsilon, beta=beta, lr=lr,
        loss_type=loss, label_smoothing=label_smoothing, warmup_rounds=warmup_rounds, temperature=temperature,
        top_k=top_k, max_new_tokens=max_new_tokens, precision=precision, full_finetune=full_finetune, lora_r=lora_r,
        lora_alpha=lora_alpha, init_adapter=init_adapter, eval_every=eval_every, eval_prompts=eval_prompts,
        eval_samples=eval_samples, checkpoint_every=checkpoint_every,
    )
    try:
        config.validate()
    except ConfigError as exc:
        fail(str(exc))
    columns = (TextColumn("{task.description:<10}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TextColumn("{task.fields[status]}"))
    with Progress(*columns, console=console) as bar:
        bars = {name: bar.add_task(name, total=rounds, status="") for name in config.algorithms}

        def progress(name: str, done: int, record: dict | None) -> None:
            status = f"R* {record['reward']:.3f} · feedback {record['feedback']}" if record else None
            bar.update(bars[name], completed=done, **({"status": status} if status else {}))

        try:
            run_simulation(config, out, resume=resume, progress=progress)
        except (RunExistsError, ConfigError) as exc:
            fail(str(exc))
        except NonFiniteLossError as exc:
            fail(f"{exc}; the run stopped and its last good checkpoint is in {out / 'checkpoints'} "
                 "(continue with --resume, e.g. after lowering --lr)")
    console.print(summary_table([out]))
    console.print(f"run folder: {out}")


@app.command()
def report(
    runs: Annotated[list[Path], typer.Argument(help="Run folders to tabulate and plot together.")],
    out: Annotated[Path, typer.Option(help="Where to write the plot.")] = Path("report.png"),
) -> None:
    """Plot and tabulate any runs together (seeds of the same configuration are pooled)."""
    try:
        plot_curves(runs, out)
        console.print(summary_table(runs))
    except FileNotFoundError as exc:
        fail(str(exc))
    console.print(f"plot: {out}")


if __name__ == "__main__":
    app()
