"""Tasks: what the simulated users want.

A task is train and held-out prompts, a true reward R*(x, y) that only simulated
users and evaluation may see, and an expert policy π* that proposes better
responses. Built-in tasks are listed in `CATALOGUE`; users bring their own as
`path/to/file.py:factory`, where `factory(policy) -> Task`.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from corll.feedback import word_edit_distance

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

    Personalization tasks (the user-edits paper) may say how the users behind an offline log edited
    (`offline_edit`, different from `local_edit` in the shift setting) and describe each
    prompt's user in words (`describe_user`, for the oracle agent), and name the group of users a prompt
    comes from (`source_of`), so that costs are reported per source as well as in total.

    Reaction tasks (the reactions paper) have no expert; they give `react` (which responses get a
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
    # prompt -> the group of users it comes from (PRELUDE: the document's source), for per-source costs
    source_of: Callable[[str], str] | None = None
    edit_cost: Callable[[str, str], int] = word_edit_distance  # (draft, edit) -> what the user changed


def prompted_expert(policy: Policy, system: str) -> ExpertFn:
    """An expert π* that is the base model π_0 told what good looks like (a system prompt): the cheapest
    expert a task can have. `expert(prompts, n)` returns n responses per prompt."""

    def expert(prompts: Sequence[str], n: int) -> list[list[str]]:
        return policy.sample(prompts, n, system=system, use_reference=True)

    return expert


class TaskError(ValueError):
    """An unknown task name, or a task file that cannot be used."""


TaskFactory = Callable[["Policy"], Task]


def _task_module(name: str):
    return importlib.import_module(f"corll.tasks.{name}")


def _prelude(kind: str, *, shift: bool = False, long: bool = False) -> Callable[[], TaskFactory]:
    def make() -> TaskFactory:
        prelude = _task_module("prelude")
        sources = prelude.SUMMARIZE_SOURCES if kind == "summarize" else prelude.EMAIL_SOURCES
        preferences = prelude.shifted(sources) if shift else None
        return lambda policy: prelude.build_prelude(kind, preferences, long=long)

    return make


def _with_dpo_expert(base: str, small: bool = False) -> Callable[[], TaskFactory]:
    def make() -> TaskFactory:
        dpo_expert = _task_module("dpo_expert")
        training = dpo_expert.ExpertTraining(prompts=64, epochs=3, lr=1e-2, max_new_tokens=16) if small else None
        return dpo_expert.wrap(getattr(_task_module(base.replace("-", "_")), "build"), base,
                               *([training] if training else []))

    return make


# The built-in tasks: name -> (what it is, how to get its factory). Factories import their module only
# when asked, so naming and checking a task loads no torch.
CATALOGUE: dict[str, tuple[str, Callable[[], TaskFactory]]] = {
    "positive-review": ("continue a movie review; R* rewards positive sentiment and fluency; the local user "
                        "swaps negative words (coactive learning's demo)",
                        lambda: _task_module("positive_review").build),
    "synthetic": ("tiny-model task with an exact reward (share of lowercase characters), for tests and quick trials",
                  lambda: _task_module("synthetic").build),
    "positive-review-dpo": ("positive-review with the paper's expert: SmolLM2 with a DPO-trained adapter "
                            "(trained once, ~5 min); R* = 0.1·log π*/π₀", _with_dpo_expert("positive-review")),
    "synthetic-dpo": ("synthetic with a DPO-trained expert, for tests", _with_dpo_expert("synthetic", small=True)),
    "assistant-reactions": ("119 assistant requests and a panel of simulated users who rarely love an answer "
                            "(reactions)", lambda: _task_module("reactions").build_assistant),
    "synthetic-reactions": ("tiny-model reaction task, for tests", lambda: _task_module("reactions").build_synthetic),
    "prelude-summarize": ("summarize short documents (35–42 words) from five sources, each source's users with a "
                          "latent style preference; R* = minus the tokens the user changes (learning from user "
                          "edits)", _prelude("summarize")),
    "prelude-email": ("write emails from notes, each user with a latent preference (learning from user edits)",
                      _prelude("email")),
    "prelude-summarize-shift": ("prelude-summarize where the offline log came from users with other preferences",
                                _prelude("summarize", shift=True)),
    "prelude-email-shift": ("prelude-email where the offline log came from users with other preferences",
                            _prelude("email", shift=True)),
    "prelude-summarize-long": ("prelude-summarize on long documents (140–235 words: news, forum posts, "
                               "encyclopedia articles, abstracts, film reviews), 40 held-out documents",
                               _prelude("summarize", long=True)),
    "prelude-summarize-long-shift": ("prelude-summarize-long where the offline log came from users with other "
                                     "preferences", _prelude("summarize", shift=True, long=True)),
    "synthetic-personal": ("tiny-model personalization task with rule editors, for tests and quick trials",
                           lambda: _task_module("synthetic").build_personal),
}
TASK_DESCRIPTIONS = {name: description for name, (description, _) in CATALOGUE.items()}
TASK_NAMES = tuple(TASK_DESCRIPTIONS)


def resolve_task(spec: str) -> TaskFactory:
    """The factory for a built-in name or `file.py:factory`; fails before any model loads."""
    if spec in TASK_NAMES:
        return lambda policy: CATALOGUE[spec][1]()(policy)
    path, sep, attr = spec.rpartition(":")
    if not sep and spec.endswith(".py"):
        raise TaskError(f"task {spec!r} names a file but not its factory: use {spec}:FACTORY, where "
                        "FACTORY(policy) returns a corll.tasks.Task")
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
    check_reward(spec, task)
    return task


def check_reward(spec: str, task: Task) -> None:
    """Call the reward once, as evaluation will: batched, reward(prompts, responses) -> one float each.
    A wrong contract is named here with its task, not as a traceback at the first evaluation."""
    contract = "reward(prompts, responses) must take lists and return one number per response"
    try:
        values = task.reward(task.test_prompts[:2], ["A short test response.", "Another one."])
    except Exception as exc:  # any error inside the user's reward is reported with its task
        raise TaskError(f"task {spec!r}: its reward failed on a batch of two ({type(exc).__name__}: {exc}); "
                        f"{contract}") from exc
    try:
        ok = len(values) == 2 and all(isinstance(float(v), float) for v in values)
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise TaskError(f"task {spec!r}: its reward returned {values!r} for two responses; {contract}")
