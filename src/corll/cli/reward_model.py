"""`corll reward-model`: P[Love] reward models of users' binary reactions, trained and evaluated."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from corll.cli.common import D, DbOption, PrecisionOption, ThreadsOption, app, console, fail, open_store, use_hardware

rm_app = typer.Typer(help="P[Love] reward models of users' binary reactions (love or not).", no_args_is_help=True)
app.add_typer(rm_app, name="reward-model")


def reaction_data(task: str, model: str, db: str | None, tenant: str | None, per_prompt: int, split: str, seed: int,
                  precision: str, threads: int | None):
    """(prompts, responses, labels) from the store, or simulated on the task's train or test prompts."""
    if db is not None:
        from corll.reward_model import reaction_log_from_store

        return reaction_log_from_store(open_store(db), tenant)
    precision = use_hardware(precision, threads)
    import torch

    from corll.policy import LoraSettings, SamplingConfig, load_policy
    from corll.reward_model import simulated_reaction_log
    from corll.tasks import TaskError, load_task

    torch.manual_seed(seed)
    policy = load_policy(model, lora=LoraSettings(), sampling=SamplingConfig(max_new_tokens=D.max_new_tokens),
                         precision=precision)
    try:
        spec = load_task(task, policy)
    except (TaskError, ValueError) as exc:
        fail(str(exc))
    if spec.react is None:
        fail(f"task {task!r} has no reaction users: use assistant-reactions or synthetic-reactions")
    prompts = spec.train_prompts if split == "train" else spec.test_prompts
    with console.status(f"simulating the reaction log: {len(prompts)} prompts × {per_prompt} answers, "
                        "each judged by the task's users"):
        return simulated_reaction_log(spec.react, policy, per_prompt, prompts)


@rm_app.command("train")
def reward_model_train(
    out: Annotated[Path, typer.Option(help="Where to write the reward model (.pt).")],
    task: Annotated[str, typer.Option(help="Reaction task to simulate the log from.")] = "assistant-reactions",
    model: Annotated[str, typer.Option(help="Policy whose answers are logged.")] = D.model,
    db: DbOption = None,
    tenant: Annotated[Optional[str], typer.Option(help="With --db: only this tenant.")] = None,
    per_prompt: Annotated[int, typer.Option(help="Simulated answers logged per training prompt.")] = 8,
    loss: Annotated[str, typer.Option(help="weighted | focal | plain (imbalance handling).")] = "weighted",
    features: Annotated[str, typer.Option(help="text | embeddings | both (the model's input).")] = "text",
    seed: Annotated[int, typer.Option()] = 0,
    precision: PrecisionOption = "auto",
    threads: ThreadsOption = None,
) -> None:
    """Train P[Love] on a reaction log: from the store (--db) or simulated with the task's users."""
    from corll.reward_model import RewardModelConfig, reward_features, train_reward_model

    try:
        config = RewardModelConfig(loss=loss, features=features, seed=seed)
    except ValueError as exc:
        fail(str(exc))
    prompts, responses, labels = reaction_data(task, model, db, tenant, per_prompt, "train", seed, precision, threads)
    try:
        with console.status(f"training P[Love] on {len(labels)} logged responses ({features} features)"):
            rm = train_reward_model(reward_features(prompts, responses, features), labels, config)
    except ValueError as exc:
        fail(f"{exc} ({len(labels)} logged responses, {sum(labels)} loves)")
    rm.save(out, details={"source": db or task, "logged": len(labels), "loves": sum(labels), "loss": loss})
    console.print(f"reward model trained on {len(labels)} responses ({sum(labels)} loves): {out}")


@rm_app.command("eval")
def reward_model_eval(
    file: Annotated[Path, typer.Argument(help="A reward model written by `corll reward-model train`.")],
    task: Annotated[str, typer.Option(help="Reaction task whose held-out prompts are simulated.")] = "assistant-reactions",
    model: Annotated[str, typer.Option(help="Policy whose answers are scored.")] = D.model,
    db: DbOption = None,
    tenant: Annotated[Optional[str], typer.Option(help="With --db: only this tenant.")] = None,
    per_prompt: Annotated[int, typer.Option(help="Simulated answers per held-out prompt.")] = 16,
    plot: Annotated[Path, typer.Option(help="Reliability plot (PNG).")] = Path("reliability.png"),
    seed: Annotated[int, typer.Option()] = 1,
    precision: PrecisionOption = "auto",
    threads: ThreadsOption = None,
) -> None:
    """AUROC, ECE and a reliability plot on held-out reactions."""
    from corll.reward_model import (RewardModel, RewardModelFileError, evaluate_reward_model, plot_reliability,
                                    reward_features)

    try:
        rm = RewardModel.load(file)
    except RewardModelFileError as exc:
        fail(str(exc))
    prompts, responses, labels = reaction_data(task, model, db, tenant, per_prompt, "test", seed, precision, threads)
    try:
        report = evaluate_reward_model(rm, reward_features(prompts, responses, rm.features), labels)
    except ValueError as exc:
        fail(f"{exc} ({len(labels)} responses, {sum(labels)} loves): log more reactions")
    plot_reliability(report["bins"], plot, f"P[Love] reliability (n={len(labels)})")
    console.print(f"AUROC {report['auroc']:.3f} · ECE {report['ece']:.3f} · base rate {report['base_rate']:.3f} · "
                  f"mean P[Love] {report['mean_prediction']:.3f} · plot {plot}")
