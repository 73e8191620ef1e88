"""The paper's own expert (the coactive-learning paper, §4.1): π* trained by DPO on the task's preference data.

The true reward then is the expert's implicit reward, R*(x, y) = β·log π*(y|x)/π_0(y|x),
and the expert editor samples its candidates from π*. `positive-review-dpo` wraps
`positive-review` this way (`synthetic-dpo` wraps `synthetic`, for tests).

Training data (offline DPO): for each training prompt, `samples` responses from
π_0, ranked by the base task's reward; the best is chosen over the worst. The
trained adapter is cached under `<cache>/experts/`, keyed by base task, model,
seed and settings; the first use trains it (a few minutes for SmolLM2 on 2 cores)
and writes it atomically, later uses load it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import statistics
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from corll.feedback import PreferencePair
from corll.memo import Memo
from corll.models import cached_build
from corll.policy import prompt_key
from corll.tasks import Task

EXPERT_BETA = 0.1


@dataclass(frozen=True)
class ExpertTraining:
    """How π* is trained. Paper: DPO on IMDB preference pairs. Here: best-vs-worst of 4 π_0
    samples on 160 training prompts, 2 epochs, LoRA lr 5e-4 — enough to make π* clearly better
    than π_0 under the base reward without collapsing (`experiments/expert_check.py` measures it on
    the held-out prompts; docs/results.md reports it as a claim)."""

    prompts: int = 160
    samples: int = 4
    epochs: int = 2
    lr: float = 5e-4
    batch_size: int = 8
    max_new_tokens: int = 32
    beta: float = EXPERT_BETA


# The expert is the simulated user: one per task and model, whatever the learner's seed (seeds vary the
# learner's randomness, not who the user is).
EXPERT_SEED = 0


def expert_dir(base_name: str, source: tuple[str, int], settings: ExpertTraining, cache_dir: Path | None = None) -> Path:
    from corll.models import default_cache_dir

    key = json.dumps({"task": base_name, "model": source[0], "seed": source[1], **dataclasses.asdict(settings)},
                     sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    model = Path(source[0]).name
    return (cache_dir or default_cache_dir()) / "experts" / f"{base_name}-{model}-{digest}"


def _load_base_policy(source: tuple[str, int], precision: str, max_new_tokens: int):
    from corll.policy import LoraSettings, SamplingConfig, load_policy

    return load_policy(source[0], lora=LoraSettings(), sampling=SamplingConfig(max_new_tokens=max_new_tokens),
                       precision=precision, seed=source[1])


def train_dpo_expert(base_build: Callable, base_name: str, source: tuple[str, int], settings: ExpertTraining,
                     precision: str = "auto", log: Callable[[str], None] = lambda _: None) -> dict:
    """Train π* (a LoRA adapter) by offline DPO on best-vs-worst π_0 samples; return its weights and a report."""
    from corll.learners.dpo import DPOConfig, DPOLearner

    with torch.random.fork_rng():
        torch.manual_seed(source[1])
        policy = _load_base_policy(source, precision, settings.max_new_tokens)
        base = base_build(policy)
        prompts = base.train_prompts[: settings.prompts]
        pairs = []
        for start in range(0, len(prompts), settings.batch_size):
            chunk = prompts[start : start + settings.batch_size]
            samples = policy.sample(chunk, settings.samples)
            rewards = base.reward([x for x in chunk for _ in range(settings.samples)], [y for s in samples for y in s])
            for i, (x, ys) in enumerate(zip(chunk, samples)):
                r = rewards[i * settings.samples : (i + 1) * settings.samples]
                best, worst = max(range(len(ys)), key=r.__getitem__), min(range(len(ys)), key=r.__getitem__)
                if r[best] > r[worst]:
                    pairs.append(PreferencePair(x, ys[best], ys[worst]))
            log(f"expert data: {len(pairs)} pairs from {start + len(chunk)}/{len(prompts)} prompts")
        learner = DPOLearner(policy, DPOConfig(beta=settings.beta, lr=settings.lr))
        for epoch in range(settings.epochs):
            order = torch.randperm(len(pairs)).tolist()
            for start in range(0, len(order), settings.batch_size):
                learner.step([pairs[i] for i in order[start : start + settings.batch_size]])
            log(f"expert training: epoch {epoch + 1}/{settings.epochs} done")
        report = {"pairs": len(pairs), **_compare_to_reference(policy, base)}
        return {"trainable": policy.trainable_state(), "report": report}


def _compare_to_reference(policy, base: Task, prompts: int = 16, samples: int = 2) -> dict:
    """Mean base-task reward of π_0's and π*'s samples on held-out prompts: evidence that π* is an expert."""
    xs = base.test_prompts[:prompts]
    flat = [x for x in xs for _ in range(samples)]
    with torch.random.fork_rng():
        torch.manual_seed(0)
        reference = policy.sample(xs, samples, use_reference=True)
        expert = policy.sample(xs, samples)
    return {"base_reward_reference": statistics.fmean(base.reward(flat, [y for s in reference for y in s])),
            "base_reward_expert": statistics.fmean(base.reward(flat, [y for s in expert for y in s]))}


def load_expert(base_build: Callable, base_name: str, policy, settings: ExpertTraining = ExpertTraining()):
    """π* as a Policy whose reference (adapter off) is π_0; trained and cached on first use."""
    if policy.source is None:
        raise ValueError("a DPO expert needs a policy loaded by name (load_policy), to share its base model")
    source = (policy.source[0], EXPERT_SEED)
    folder = expert_dir(base_name, source, settings)
    weights = folder / "expert.pt"

    def train(staging: Path) -> None:
        print(f"training the DPO expert for {base_name} once; cached in {folder}", file=sys.stderr)
        trained = train_dpo_expert(base_build, base_name, source, settings, policy.precision,
                                   log=lambda m: print(m, file=sys.stderr))
        (staging / "report.json").write_text(json.dumps(trained["report"], indent=2) + "\n")
        (staging / "settings.json").write_text(json.dumps(dataclasses.asdict(settings), indent=2) + "\n")
        torch.save(trained["trainable"], staging / "expert.pt")

    cached_build(folder, train, marker="expert.pt")  # processes starting together train it once
    expert = _load_base_policy(source, policy.precision, policy.sampling.max_new_tokens)
    expert.sampling = policy.sampling
    expert.load_trainable_state(torch.load(weights, weights_only=True, map_location="cpu"))
    expert.model.requires_grad_(False)
    expert.share_reference(policy)  # the same π_0 (where the learner's base is the expert's): one cache
    return expert


class ExpertReward:
    """R*(x, y) = β·(log π*(y|x) − log π_0(y|x)) of a frozen expert, each (x, y) computed once.

    The expert never changes, so a value stays true: a round scores its drafts when the editor judges
    them and again as the responses shown, and the editor's candidates were scored while π* sampled
    them (log π* read off generate's logits, as the learner's own samples are)."""

    def __init__(self, expert, beta: float, size: int = 100_000) -> None:
        self.expert, self.beta = expert, beta
        self.known = Memo(size)

    def __call__(self, xs: Sequence[str], ys: Sequence[str]) -> list[float]:
        def compute(todo: list[int]) -> list[float]:
            return self.expert.implicit_reward([xs[i] for i in todo], [ys[i] for i in todo], self.beta).tolist()

        return self.known.get([(prompt_key(x), y) for x, y in zip(xs, ys)], compute)

    def sample(self, xs: Sequence[str], n: int) -> list[list[str]]:
        """n candidates per prompt from π*, their R* remembered for the editor that ranks them."""
        samples, logps = self.expert.sample_scored(list(xs), n)
        flat_xs = [x for x, ys in zip(xs, samples) for _ in ys]
        flat_ys = [y for ys in samples for y in ys]
        reference = self.expert.logprobs(flat_xs, flat_ys, reference=True)
        self.known.remember([(prompt_key(x), y) for x, y in zip(flat_xs, flat_ys)],
                            (self.beta * (logps.flatten() - reference)).tolist())
        return samples


def wrap(base_build: Callable, base_name: str, settings: ExpertTraining = ExpertTraining()) -> Callable:
    """A task factory: the base task's prompts, R* = β·log π*/π_0, candidates sampled from π*."""

    def build(policy) -> Task:
        base = base_build(policy)
        reward = ExpertReward(load_expert(base_build, base_name, policy, settings), settings.beta)
        return Task(f"{base_name}-dpo", base.train_prompts, base.test_prompts, reward, reward.sample)

    return build
