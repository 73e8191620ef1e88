"""Reaction tasks (the reactions paper): users who react rarely and in binary instead of editing.

`assistant-reactions`: 119 everyday assistant requests written for the project
(30 held out), answered for a panel of simulated reaction users (six with
different tastes, one adversarial who loves what the others dislike, one who
reacts at random). The true reward is the expected love rate of a random panel
member, σ(a·u + b) averaged over users; `react` draws one user per response and
one Bernoulli draw. The learner never sees that: it sees reactions, and the RLUF
learner sees a P[Love] reward model trained on logged reactions to π_0's answers
(trained on first use and cached), beside the helpfulness and safety scorers.

Helpfulness here is a checklist score that shares nothing with the users' tastes or
the love model's features (no sentiment, no embeddings, no habits): each request has a
rubric of what a useful answer mentions (`data/assistant_checklists.txt`, written for
the project: "boil|simmer; minute; cold|ice; …"), and an answer earns an item when one
of its words starts with one of the item's stems — a word the request itself contains
does not count, so restating the question earns nothing. Score = items earned / 3
(capped at 1; fewer when the rubric has fewer earnable items). So whether optimizing
love costs helpfulness is an empirical question, not a shared feature.

`synthetic-reactions` (tiny model, tests): love probability σ(8·(lowercase share − 0.6)),
and the "love" objective is that probability itself (an oracle reward model), so
tests isolate the optimizer.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import random
import sys
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

import torch

from corll.objectives import WORD, distinct_n, helpfulness, repeated_phrase_rate, safety
from corll.tasks import ReactFn, RewardFn, Task
from corll.files import atomic

N_TEST = 30
SPLIT_SEED = 7
LOG_SAMPLES_PER_PROMPT = 8  # responses of π_0 logged per training prompt to train the reward model
CHECKLIST_ITEMS = 3  # rubric items a fully helpful (32-token) answer mentions


def assistant_requests() -> list[str]:
    text = resources.files("corll.tasks").joinpath("data/assistant_requests.txt").read_text(encoding="utf-8")
    return [line.strip() for line in text.splitlines() if line.strip()]


@functools.lru_cache(maxsize=1)
def checklists() -> dict[str, list[tuple[str, ...]]]:
    """request -> rubric items, each a tuple of alternative word stems."""
    text = resources.files("corll.tasks").joinpath("data/assistant_checklists.txt").read_text(encoding="utf-8")
    rubrics = {}
    for line in filter(str.strip, text.splitlines()):
        request, items = line.split("\t")
        rubrics[request] = [tuple(a.strip() for a in item.split("|")) for item in items.split(";")]
    return rubrics


def _mentions(stem: str, word: str) -> bool:
    """A stem of three letters or fewer must be the whole word ("ice" is not "icing"); longer ones prefix it."""
    return word == stem if len(stem) <= 3 else word.startswith(stem)


def checklist_helpfulness(prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
    """Share of the request's rubric an answer covers with words of its own (see the module doc)."""
    rubrics = checklists()
    scores = []
    for x, y in zip(prompts, responses, strict=True):
        if x not in rubrics:
            raise ValueError(f"no helpfulness checklist for the request {x!r}")
        asked = set(WORD.findall(x.lower()))
        own = [w for w in WORD.findall(y.lower()) if w not in asked]
        earnable = [item for item in rubrics[x] if any(not any(_mentions(s, w) for w in asked) for s in item)]
        earned = sum(any(_mentions(s, w) for s in item for w in own) for item in earnable)
        scores.append(min(1.0, earned / min(CHECKLIST_ITEMS, len(earnable))) if earnable else 0.0)
    return scores


def panel_users():
    from corll.users.reactions import ReactionUser

    return [
        ReactionUser(sentiment=1.0, relevance=2.0, length=0.5),
        ReactionUser(sentiment=2.0, relevance=1.0, length=0.0, emoji=1.0),
        ReactionUser(sentiment=0.5, relevance=3.0, length=1.0, preferred_words=25),
        ReactionUser(sentiment=1.5, relevance=1.5, closing=1.0),
        ReactionUser(sentiment=1.0, relevance=2.5, length=0.5, preferred_words=60),
        ReactionUser(sentiment=2.5, relevance=0.5, emoji=0.5, closing=0.5, base_rate=0.06),
        ReactionUser(adversarial="inverted", base_rate=0.02),
        ReactionUser(adversarial="random", base_rate=0.02),
    ]


def split_requests() -> tuple[list[str], list[str]]:
    """(training, held-out) requests: a fixed shuffle, the first N_TEST held out."""
    prompts = assistant_requests()
    random.Random(SPLIT_SEED).shuffle(prompts)
    return prompts[N_TEST:], prompts[:N_TEST]


def diversity_metrics(xs: Sequence[str], ys: Sequence[str]) -> dict[str, float]:
    return {"distinct_2": distinct_n(ys, 2), "repetition": repeated_phrase_rate(ys)}


def _react_with(love_probability: RewardFn) -> ReactFn:
    def react(xs: Sequence[str], ys: Sequence[str]) -> list[bool]:
        return [bool(torch.rand(()).item() < p) for p in love_probability(xs, ys)]

    return react


def build_assistant(policy) -> Task:
    from corll.users.reactions import ReactionPanel

    train, test = split_requests()
    with torch.random.fork_rng():
        torch.manual_seed(SPLIT_SEED)
        reference = policy.sample(train[:32], 2, use_reference=True)
    panel = ReactionPanel(panel_users(), [x for x in train[:32] for _ in range(2)], [y for s in reference for y in s])

    def love_rate(xs: Sequence[str], ys: Sequence[str]) -> list[float]:
        per_user = panel.love_probabilities(xs, ys)
        return [sum(column) / len(column) for column in zip(*per_user)]

    def react(xs: Sequence[str], ys: Sequence[str]) -> list[bool]:
        users = [int(torch.randint(len(panel.users), ()).item()) for _ in ys]
        per_user = panel.love_probabilities(xs, ys)
        return [bool(torch.rand(()).item() < per_user[user][i]) for i, user in enumerate(users)]

    reward_model = _cached_reward_model(policy, train, react)

    def metrics(xs: Sequence[str], ys: Sequence[str]) -> dict[str, float]:
        return {"help": sum(checklist_helpfulness(xs, ys)) / len(ys),
                "on_topic": sum(helpfulness(xs, ys)) / len(ys), "safe": sum(safety(ys)) / len(ys),
                "love_model": sum(reward_model.predict(xs, ys)) / len(ys), **diversity_metrics(xs, ys)}

    objectives = {"love": reward_model.predict, "help": checklist_helpfulness, "safe": lambda xs, ys: safety(ys)}
    return Task("assistant-reactions", train, test, love_rate, react=react, objectives=objectives, metrics=metrics)


def _cached_reward_model(policy, train: list[str], react: ReactFn):
    """P[Love] trained on a log of π_0's answers and the panel's reactions; log and model cached per policy."""
    from corll.reward_model import RewardModel, RewardModelConfig, reward_features, train_reward_model

    config = RewardModelConfig()
    path = cached_reward_model_path(policy, config.features)
    if path.exists():
        return RewardModel.load(path)
    xs, ys, labels = cached_reaction_log(policy, train, react)
    model = train_reward_model(reward_features(xs, ys, config.features), labels, config)
    model.save(path, details={"logged": len(ys), "loves": sum(labels), "features": config.features})
    return model


def cached_reaction_log(policy, train: list[str], react: ReactFn, seed: int = 0) -> tuple[list[str], list[str], list[int]]:
    """The simulated log: π_0's answers to the training requests and the panel's reactions, kept so that
    every learner (the reward model, KTO) can be compared on exactly the same feedback. Each `seed` is an
    independent log (other answers, other reactions); the task's own reward model is trained on seed 0's."""
    from corll.reward_model import simulated_reaction_log

    path = reaction_log_path(policy, seed)
    if path.exists():
        return read_reaction_log(path)
    print(f"logging π_0's answers and simulated reactions once; cached in {path}", file=sys.stderr)
    with torch.random.fork_rng():
        torch.manual_seed(SPLIT_SEED + 1 + seed)
        xs, ys, labels = simulated_reaction_log(react, policy, LOG_SAMPLES_PER_PROMPT, train)
    write_reaction_log(path, xs, ys, labels)
    return xs, ys, labels


def write_reaction_log(path: Path, xs: Sequence[str], ys: Sequence[str], labels: Sequence[int]) -> None:
    with atomic(path) as tmp, tmp.open("w", encoding="utf-8") as f:
        for x, y, label in zip(xs, ys, labels):
            f.write(json.dumps({"prompt": x, "response": y, "love": int(label)}) + "\n")


def read_reaction_log(path: Path) -> tuple[list[str], list[str], list[int]]:
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [r["prompt"] for r in rows], [r["response"] for r in rows], [int(r["love"]) for r in rows]


def _log_key(policy, seed: int = 0) -> str:
    source = policy.source or ("unknown", 0)
    key = hashlib.sha256(repr((source, policy.sampling.max_new_tokens, LOG_SAMPLES_PER_PROMPT)).encode()).hexdigest()[:12]
    return key if seed == 0 else f"{key}-seed{seed}"


def reaction_log_path(policy, seed: int = 0) -> Path:
    from corll.models import default_cache_dir

    return default_cache_dir() / "reward-models" / f"assistant-reactions-{_log_key(policy, seed)}.log.jsonl"


def cached_reward_model_path(policy, features: str = "text") -> Path:
    from corll.models import default_cache_dir

    return default_cache_dir() / "reward-models" / f"assistant-reactions-{_log_key(policy)}-{features}.pt"


def lowercase_love(xs: Sequence[str], ys: Sequence[str]) -> list[float]:
    from corll.tasks.synthetic import lowercase_share

    return [1 / (1 + math.exp(-8 * (lowercase_share(y) - 0.6))) for y in ys]


def build_synthetic(policy=None) -> Task:
    return Task("synthetic-reactions", [f"word {i}" for i in range(64)], [f"word {i}" for i in range(64, 80)],
                lowercase_love, react=_react_with(lowercase_love),
                objectives={"love": lowercase_love, "help": lambda xs, ys: [min(1.0, len(y) / 8) for y in ys]},
                metrics=diversity_metrics)
