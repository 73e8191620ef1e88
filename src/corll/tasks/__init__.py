"""Tasks: what the simulated users want.

A task is train and held-out prompts, a true reward R*(x, y) that only simulated
users and evaluation may see, and an expert policy π* that proposes better
responses. Built-in tasks are listed in `TASKS`; users bring their own as
`path/to/file.py:factory`, where `factory(policy) -> Task`.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from corll.policy import Policy

RewardFn = Callable[[Sequence[str], Sequence[str]], list[float]]
ExpertFn = Callable[[Sequence[str], int], list[list[str]]]
LocalEditFn = Callable[[str, str], str]
ReactFn = Callable[[Sequence[str], Sequence[str]], list[bool]]
MetricsFn = Callable[[Sequence[str], Sequence[str]], dict[str, float]]


@dataclass
class Task:
    """Prompts, the true reward R*(x, y) (batched), the expert π* (l candidates per prompt) and,
    optionally, how a user of this task revises a draft in place (`local_edit(x, y) -> ȳ`).

    Personalization tasks (seed 003) may say how the users behind an offline log edited
    (`offline_edit`, different from `local_edit` in the shift setting) and describe each
    prompt's user in words (`describe_user`, for the oracle agent).

    Reaction tasks (seed 004) have no expert; they give `react` (which responses get a
    "love" — drawn, rare), `objectives` (scorers the RLUF learner may weight: love,
    help, safe), and `metrics` (extra held-out measurements: helpfulness, diversity…).
    """

    name: str
    train_prompts: list[str]
    test_prompts: list[str]
    reward: RewardFn
    expert: ExpertFn | None = None
    local_edit: LocalEditFn | None = None
    react: ReactFn | None = None
    objectives: dict[str, RewardFn] | None = None
    metrics: MetricsFn | None = None
    offline_edit: LocalEditFn | None = None  # how the users behind the offline log edited (default: local_edit)
    describe_user: Callable[[str], str] | None = None  # prompt -> its user's preference in words (oracle only)


class TaskError(ValueError):
    """An unknown task name, or a task file that cannot be used."""


TaskFactory = Callable[["Policy"], Task]


def _builtin() -> dict[str, TaskFactory]:
    from corll.tasks import dpo_expert, positive_review, prelude, reactions, synthetic

    tiny_expert = dpo_expert.ExpertTraining(prompts=64, epochs=3, lr=1e-2, max_new_tokens=16)
    return {
        "positive-review": positive_review.build,
        "synthetic": synthetic.build,
        "synthetic-personal": synthetic.build_personal,
        "positive-review-dpo": dpo_expert.wrap(positive_review.build, "positive-review"),
        "synthetic-dpo": dpo_expert.wrap(synthetic.build, "synthetic", tiny_expert),
        "assistant-reactions": reactions.build_assistant,
        "synthetic-reactions": reactions.build_synthetic,
        "prelude-summarize": lambda policy: prelude.build_prelude("summarize"),
        "prelude-email": lambda policy: prelude.build_prelude("email"),
        "prelude-summarize-shift": lambda policy: prelude.build_prelude(
            "summarize", prelude.shifted(prelude.SUMMARIZE_SOURCES)),
        "prelude-email-shift": lambda policy: prelude.build_prelude("email", prelude.shifted(prelude.EMAIL_SOURCES)),
    }


TASK_NAMES = ("positive-review", "synthetic", "positive-review-dpo", "synthetic-dpo", "assistant-reactions",
              "synthetic-reactions", "prelude-summarize", "prelude-email", "prelude-summarize-shift",
              "prelude-email-shift", "synthetic-personal")


def resolve_task(spec: str) -> TaskFactory:
    """The factory for a built-in name or `file.py:factory`; fails before any model loads."""
    if spec in TASK_NAMES:
        return _builtin()[spec]
    path, sep, attr = spec.rpartition(":")
    if not sep or not path.endswith(".py"):
        raise TaskError(f"unknown task {spec!r}: use one of {', '.join(TASK_NAMES)} or path/to/file.py:factory")
    file = Path(path)
    if not file.is_file():
        raise TaskError(f"task file {path} does not exist")
    module_spec = importlib.util.spec_from_file_location(f"corll_user_task_{file.stem}", file)
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
    except Exception as exc:  # any error in user code is reported with its file
        raise TaskError(f"could not import task file {path}: {type(exc).__name__}: {exc}") from exc
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise TaskError(f"task file {path} has no callable {attr!r}")
    return factory


def load_task(spec: str, policy: Policy) -> Task:
    task = resolve_task(spec)(policy)
    if not isinstance(task, Task) or not task.train_prompts or not task.test_prompts:
        raise TaskError(f"task {spec!r} must return a Task with train and test prompts")
    return task
