"""Research commands: simulate learners against simulated users, run experiments, judge claims, report."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from corll.cli.common import (D, PrecisionOption, ThreadsOption, app, console, fail, progress_bars, use_hardware)
from corll.config import DPO_LOSS_TYPES, ConfigError, SimulationConfig
from corll.learners.registry import ALGORITHMS, check
from corll.models import BUILTIN_MODELS
from corll.tasks import TASK_NAMES, TaskError

if TYPE_CHECKING:  # imported where used: it loads torch
    from corll.experiment import Experiment

# CLI option -> SimulationConfig field, where the names differ
OPTION_FIELDS = {"algorithm": "algorithms", "loss": "loss_type"}


def options_changed_on_resume(ctx: typer.Context, out: Path, config: SimulationConfig) -> list[str]:
    """Options given on the command line that differ from the saved run's settings."""
    saved_file = out / "config.json"
    if not saved_file.exists():
        return []
    saved = json.loads(saved_file.read_text())
    given = [p for p in ctx.params if getattr(ctx.get_parameter_source(p), "name", "") == "COMMANDLINE"
             and p not in ("out", "resume")]
    changed = []
    for option in given:
        name = OPTION_FIELDS.get(option, option)
        if saved.get(name) != getattr(config, name):
            changed.append(f"--{option.replace('_', '-')} (saved {saved.get(name)!r}, given {getattr(config, name)!r})")
    return changed


@app.command()
def simulate(
    ctx: typer.Context,
    out: Annotated[Path, typer.Option(help="Run folder: config.json, metrics.jsonl, summary.json, curves.png.")],
    task: Annotated[str, typer.Option(help=f"{' | '.join(TASK_NAMES)} | path/to/file.py:factory "
                                           "(`corll tasks` describes each).")] = D.task,
    model: Annotated[str, typer.Option(help=f"{' | '.join(BUILTIN_MODELS)} | a local model directory")] = D.model,
    algorithm: Annotated[Optional[list[str]], typer.Option(
        help=f"Learner(s) to run side by side, repeatable: {', '.join(ALGORITHMS)} "
             f"(`corll learners` describes each) [default: {', '.join(D.algorithms)}].")] = None,
    rounds: Annotated[int, typer.Option(help="DPO steps per algorithm; each uses N new preferences.")] = D.rounds,
    seed: Annotated[int, typer.Option(help="Seed for every source of randomness.")] = D.seed,
    k: Annotated[int, typer.Option("--k", help="CoRLL argmax samples per prompt (paper: 9 IMDB, 1 at 7B).")] = D.k,
    batch_size: Annotated[int, typer.Option("--batch-size", "-N",
                                            help="N preferences per DPO step (paper: 64).")] = D.batch_size,
    user: Annotated[str, typer.Option(help="Simulated editor: local (revises the draft in place), expert "
                                           "(the paper's: picks among l expert candidates) or llm (π_0 "
                                           "prompted with the user's preference revises it).")] = D.user,
    l: Annotated[int, typer.Option("--l", help="Expert candidates per edit (paper: 25 IMDB, 5 at 7B).")] = D.l,
    alpha: Annotated[Optional[float], typer.Option(
        help="--user expert only: feedback strength α in (0, 1] [default: unset = minimal improvement; "
             "paper ablation: 0.6].")] = D.alpha,
    noise_free: Annotated[bool, typer.Option(
        help="Drop rounds where no expert candidate beats the draft (paper: noisy by default).")] = D.noise_free,
    epsilon: Annotated[float, typer.Option(help="Injected mislabel probability ε in [0, 1] (paper: 0).")] = D.epsilon,
    weights: Annotated[str, typer.Option(
        help="rluf and rloo only: objective weights, e.g. love=1,help=0.5,safe=0.5 (non-negative, not all "
             "zero).")] = D.weights,
    beta: Annotated[float, typer.Option(help="KL strength β of DPO and the implicit reward (paper: 0.1).")] = D.beta,
    lr: Annotated[float, typer.Option(help="Adam learning rate (paper: 1e-5 full FT; LoRA here: 2e-4).")] = D.lr,
    loss: Annotated[str, typer.Option(help=f"DPO loss: {', '.join(DPO_LOSS_TYPES)}.")] = D.loss_type,
    label_smoothing: Annotated[float, typer.Option(
        help="Conservative DPO smoothing in [0, 0.5) (paper: 0).")] = D.label_smoothing,
    warmup_rounds: Annotated[int, typer.Option(help="Linear lr warm-up steps (paper 7B: 10%).")] = D.warmup_rounds,
    temperature: Annotated[float, typer.Option(help="Sampling temperature (paper: 1).")] = D.temperature,
    top_k: Annotated[int, typer.Option(help="Top-k sampling (paper: 50).")] = D.top_k,
    max_new_tokens: Annotated[int, typer.Option(help="Response length cap in tokens.")] = D.max_new_tokens,
    precision: PrecisionOption = D.precision,
    threads: ThreadsOption = None,
    jobs: Annotated[int, typer.Option(
        help="Train this many algorithms at once, in separate processes sharing the CPUs "
             "(on 2 cores, 2 one-thread processes finish more work than one two-thread process).")] = 1,
    full_finetune: Annotated[bool, typer.Option(help="Train all weights instead of a LoRA adapter.")] = False,
    lora_r: Annotated[int, typer.Option(help="LoRA rank (paper 7B: 8).")] = D.lora_r,
    lora_alpha: Annotated[int, typer.Option(help="LoRA alpha (paper 7B: 64; 16 here).")] = D.lora_alpha,
    init_adapter: Annotated[Optional[str], typer.Option(
        help="Start from this LoRA adapter; it also becomes the reference π_0.")] = None,
    eval_every: Annotated[int, typer.Option(help="Evaluate on held-out prompts every E rounds.")] = D.eval_every,
    eval_prompts: Annotated[int, typer.Option(help="Held-out prompts per evaluation.")] = D.eval_prompts,
    eval_samples: Annotated[int, typer.Option(help="Samples per held-out prompt.")] = D.eval_samples,
    checkpoint_every: Annotated[int, typer.Option(help="Checkpoint every C rounds.")] = D.checkpoint_every,
    offline_edits: Annotated[int, typer.Option(
        help="Learning from user edits (edit learners only): first learn from this many logged edits of π_0's drafts, then run "
             "--rounds online episodes (edit learners; floor and oracle agents never learn).")] = D.offline_edits,
    resume: Annotated[bool, typer.Option(help="Continue the run in --out from its last checkpoint.")] = False,
) -> None:
    """Train learners against simulated users and compare their held-out true reward."""
    config = SimulationConfig(
        task=task, model=model, algorithms=algorithm or list(D.algorithms), rounds=rounds, seed=seed, k=k,
        batch_size=batch_size, user=user, l=l, alpha=alpha, noise_free=noise_free, epsilon=epsilon, weights=weights,
        beta=beta, lr=lr,
        loss_type=loss, label_smoothing=label_smoothing, warmup_rounds=warmup_rounds, temperature=temperature,
        top_k=top_k, max_new_tokens=max_new_tokens, precision=precision, full_finetune=full_finetune, lora_r=lora_r,
        lora_alpha=lora_alpha, init_adapter=init_adapter, eval_every=eval_every, eval_prompts=eval_prompts,
        eval_samples=eval_samples, checkpoint_every=checkpoint_every, offline_edits=offline_edits,
    )
    try:
        check(config)
    except ConfigError as exc:
        fail(str(exc))
    if resume and (changed := options_changed_on_resume(ctx, out, config)):
        fail("--resume continues a run with the settings it was started with; these options differ: "
             + ", ".join(changed))
    if jobs < 1:
        fail("--jobs must be >= 1")
    use_hardware(config.precision, threads)
    from corll.learners import NonFiniteLossError
    from corll.report import comparison_rows, comparison_table, summary_table
    from corll.run_dir import RunExistsError
    from corll.simulate import run_simulation
    columns = (TextColumn("{task.description:<10}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TextColumn("{task.fields[status]}"))
    with progress_bars(*columns) as bar:
        bars = {name: bar.add_task(name, total=rounds, status="") for name in config.algorithms}

        latest: dict[str, str] = {}

        def progress(name: str, done: int, record: dict | None, doing: str) -> None:
            if record:
                latest[name] = f"R* {record['reward']:.3f} · feedback {record['feedback']}"
            status = " · ".join(part for part in (latest.get(name), doing) if part)
            bar.update(bars[name], completed=done, status=status)
            if record:
                bar.note(bars[name], latest[name])

        try:
            summary = run_simulation(config, out, resume=resume, progress=progress, jobs=jobs)
        except (RunExistsError, ConfigError, TaskError) as exc:
            fail(str(exc))
        except NonFiniteLossError as exc:
            fail(f"{exc}; the run stopped and its last good checkpoint is in {out / 'checkpoints'} "
                 "(continue with --resume, e.g. after lowering --lr)")
    console.print(summary_table([out]))
    if compared := comparison_rows([out]):
        console.print(comparison_table(compared))
    for name, result in summary.items():
        flags = result.get("monitor_flags", [])
        for flag in flags:
            console.print(f"[bold yellow]reward-hacking monitor ({name}):[/] {flag} — a gain bought this way is "
                          "reward hacking, not better text")
        if not flags:
            console.print(f"reward-hacking monitor ({name}): no flags (KL to π_0 {result['kl_final']:.1f} nats)")
    console.print(f"run folder: {out}")


@app.command()
def learners() -> None:
    """The learners --algorithm accepts: what each learns from and which options it reads."""
    from corll.learners.registry import LEARNERS

    table = Table(title="learners (corll simulate --algorithm NAME)")
    for column in ("name", "learns from", "what it does", "its own options"):
        table.add_column(column)
    for spec in LEARNERS.values():
        table.add_row(spec.name, spec.feedback, spec.summary, " ".join(f"--{o}" for o in spec.options))
    console.print(table)


@app.command()
def tasks() -> None:
    """The built-in tasks --task accepts (or bring your own: path/to/file.py:factory)."""
    from corll.tasks import TASK_DESCRIPTIONS

    table = Table(title="tasks (corll simulate --task NAME)")
    table.add_column("name")
    table.add_column("what it is")
    for name, description in TASK_DESCRIPTIONS.items():
        table.add_row(name, description)
    console.print(table)


@app.command()
def experiment(
    config: Annotated[Path, typer.Argument(help="Experiment file (YAML): seeds, base settings, arms, figures.")],
    out: Annotated[Optional[Path], typer.Option(
        help="Experiment folder (default: the file's 'out', else runs/experiments/NAME).")] = None,
    aggregate_only: Annotated[bool, typer.Option(help="Rebuild the aggregate from existing runs; run nothing.")] = False,
    seeds: Annotated[Optional[str], typer.Option(
        help="Only these of the file's seeds, e.g. '0,1': split one experiment over processes or machines "
             "sharing its folder, then --aggregate-only without --seeds.")] = None,
    arms: Annotated[Optional[str], typer.Option(
        help="Only these of the file's arms, e.g. 'floor,oracle' (splits like --seeds).")] = None,
    threads: ThreadsOption = None,
    plan: Annotated[bool, typer.Option(
        "--plan", help="Say what is finished and estimate the core-hours the rest needs; run nothing.")] = False,
) -> None:
    """Run a grid of simulations (arms × seeds) resumably, then aggregate them with intervals and plots."""
    from corll.experiment import ExperimentError, load_experiment, run_experiment, run_is_finished, subset
    from corll.experiment_results import aggregate
    from corll.learners import NonFiniteLossError

    if plan and aggregate_only:
        fail("--plan and --aggregate-only each run nothing: give one of them")
    try:
        spec = load_experiment(config, out)
        spec = subset(spec, seeds, arms)
    except ExperimentError as exc:
        fail(str(exc))
    if plan:
        console.print(plan_table(spec))
        return
    runs = spec.runs()
    if not aggregate_only:
        use_hardware(runs[0][2].precision if runs else "auto", threads)
    todo = [r for r in runs if not run_is_finished(r[3], r[2])]
    console.print(f"experiment {spec.name}: {len(runs)} runs ({len(runs) - len(todo)} finished) in {spec.out}")
    try:
        if aggregate_only:
            result = aggregate(spec)
        else:
            columns = (TextColumn("{task.description:<28}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                       TextColumn("{task.fields[status]}"))
            with progress_bars(*columns) as bar:
                overall = bar.add_task("all runs (rounds)", total=sum(c.rounds for _, _, c, _ in runs), status="")
                current: dict = {}

                latest: dict = {}

                def progress(arm: str, seed: int, done: int, total: int, record: dict | None, doing: str) -> None:
                    key = (arm, seed)
                    if key not in current:
                        current[key] = bar.add_task(f"{arm} seed {seed}", total=total, status="")
                    previous = bar.tasks[current[key]].completed
                    if record:
                        latest[key] = f"R* {record['reward']:.3f}"
                    status = " · ".join(part for part in (latest.get(key), doing) if part)
                    bar.update(current[key], completed=done, status=status)
                    if record:
                        bar.note(current[key], latest[key])
                    bar.advance(overall, done - previous)
                    if done == total:
                        bar.update(current[key], visible=False)

                run_experiment(spec, progress)
            result = aggregate(spec)
    except (ExperimentError, ConfigError) as exc:
        fail(str(exc))
    except NonFiniteLossError as exc:
        fail(f"{exc}; rerun the same command to resume, after changing the arm's settings")
    for arm, entry in result["arms"].items():
        final = entry.get("final_reward")
        console.print(f"{arm:<24} seeds {len(entry['finished_seeds'])}/{len(spec.seeds)}"
                      + (f"  R* final {final['mean']:+.3f} [{final['low']:+.3f}, {final['high']:+.3f}]" if final else ""))
    console.print(f"aggregate: {spec.out / 'aggregate.json'}, {spec.out / 'results.md'}")


def plan_table(spec: Experiment) -> Table:
    """`corll experiment --plan`: per arm, the runs finished and the core-hours the rest needs at the rate
    of its finished runs (one process per core: two one-thread processes halve the wall time)."""
    from corll.compute import machine_kind, plan
    from corll.hardware import detect

    hours = lambda h: "–" if h is None else f"{h:.2f}"  # noqa: E731
    machine = detect()
    plans = plan(spec, machine_kind(machine.cpu, machine.capability))
    own = [p for p in plans if not p.shared_with and p.left]
    known = [p.hours_left for p in own if p.hours_left is not None]
    notes = ["core-hours per finished run, as recorded by the runs (their CPU is in each config.json)"]
    elsewhere = [p.arm for p in own if p.hours_left is not None and not p.rate_from_here]
    if elsewhere:
        notes.append(f"at the rate of runs on other CPUs than this {machine.cpu} ({machine.capability}): "
                     f"{', '.join(elsewhere)}")
    if len(known) < len(own):
        notes.append("≥: arms with no finished run yet are not in the total")
    if any(p.evaluation_hours is None for p in own if p.hours_left is not None):
        notes.append("runs that did not time their evaluations count training rounds only")
    notes += [f"{p.arm}: runs of {p.shared_with}, counted there" for p in plans if p.shared_with]
    table = Table(title=f"{spec.name}: runs in {spec.out}", caption="\n".join(notes))
    for column in ("arm", "finished", "rounds h/run", "evaluations h/run", "runs left", "core-hours left"):
        table.add_column(column, justify="left" if column == "arm" else "right")
    for p in plans:
        table.add_row(p.arm, f"{p.finished}/{p.planned}", hours(p.rounds_hours), hours(p.evaluation_hours),
                      str(p.left), "0" if not p.left else "shared" if p.shared_with else hours(p.hours_left))
    table.add_row("total", "", "", "", str(sum(p.left for p in own)),
                  "–" if own and not known else ("≥ " if len(known) < len(own) else "") + f"{sum(known):.2f}")
    return table


@app.command()
def verdicts(
    claims: Annotated[Path, typer.Argument(help="Claims file (YAML): each claim's experiment, arms, measure.")] = Path(
        "experiments/claims.yaml"),
    out: Annotated[Path, typer.Option(help="Folder for the page (the claims file's `page`, default results: "
                                               "results.md, results.json) and figures/.")] = Path("docs"),
) -> None:
    """Judge a paper's claims from the experiments run so far: one primary test, the rest Holm-corrected."""
    from corll.experiment import ExperimentError
    from corll.verdicts import ClaimsError, write_results

    try:
        page, data = write_results(claims, out)
    except (ClaimsError, ExperimentError) as exc:
        fail(str(exc))
    console.print(f"verdicts: {page}, {data}")


@app.command()
def report(
    runs: Annotated[list[Path], typer.Argument(help="Run folders to tabulate and plot together.")],
    out: Annotated[Path, typer.Option(help="Where to write the plot.")] = Path("report.png"),
) -> None:
    """Plot and tabulate any runs together (seeds of the same configuration are pooled)."""
    from corll.report import load_series, plot_curves, summary_table

    try:
        if not load_series(runs):
            fail(f"nothing to report yet: no evaluation is recorded in {', '.join(map(str, runs))} "
                 "(a run records one when it starts and every --eval-every rounds)")
        plot_curves(runs, out)
        console.print(summary_table(runs))
    except FileNotFoundError as exc:
        fail(str(exc))
    console.print(f"plot: {out}")
