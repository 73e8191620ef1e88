"""The learners `corll simulate` runs, found by name.

Each entry says in one line what the learner does (the CLI's help and `corll learners`
read it), which feedback it learns from — a simulated user's edits, users' reactions,
or labels from the true reward — and which options it reads beyond the shared ones,
and builds it from a `Setup`. A new learner is one file in `learners/` plus one
`register(...)` here; the simulation loop does not change.

It also owns the check of the names a run's settings give (learners, model, task, reaction
weights), which `corll.config` cannot make without importing the rooms that own them.

Importing this module loads no torch: builders import their learner when they run.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from corll.config import ConfigError, SimulationConfig
from corll.models import resolve_model
from corll.tasks import resolve_task

if TYPE_CHECKING:
    from corll.learners.base import Learner
    from corll.learners.dpo import DPOLearner
    from corll.policy import Policy
    from corll.tasks import Task

FEEDBACK_KINDS = ("edits", "reactions", "true reward")
LATE_MEMBERS = ("preference", "sft", "cost")  # the late ensemble's learners, in its bandit's arm order


@dataclass
class Setup:
    """What a builder gets: the run's settings, its policy and task, and the shared pieces, made on demand."""

    config: SimulationConfig
    policy: Policy
    task: Task
    new_policy: Callable[[], Policy]  # another policy of the run's settings (the late ensemble's members)
    _dpo: DPOLearner | None = field(default=None, repr=False)

    def dpo(self, policy: Policy | None = None) -> DPOLearner:
        """The DPO learner of the run's settings (for `policy`: a fresh one on that policy)."""
        from corll.learners.dpo import DPOLearner

        config = self.config.dpo()
        if policy is not None:
            return DPOLearner(policy, config)
        if self._dpo is None:
            self._dpo = DPOLearner(self.policy, config)
        return self._dpo

    def editor(self):
        """The simulated user who edits drafts (--user)."""
        from corll.users import ExpertEditor, LLMEditor, LocalEditor

        c, task = self.config, self.task
        if c.user == "local":
            if task.local_edit is None:
                raise ConfigError(f"task {task.name!r} defines no local edit: use --user expert")
            return LocalEditor(task)
        if c.user == "llm":
            try:
                return LLMEditor(task, self.policy)
            except ValueError as exc:
                raise ConfigError(str(exc)) from exc
        return ExpertEditor(task, l=c.l, alpha=c.alpha, noise_free=c.noise_free, epsilon=c.epsilon)

    def objective(self):
        """Σ w·objective over the task's scorers, from --weights."""
        from corll.config import parse_weights
        from corll.learners.rluf import weighted_reward

        try:
            return weighted_reward(self.reaction_task().objectives, parse_weights(self.config.weights))
        except ValueError as exc:
            raise ConfigError(str(exc)) from exc

    def reaction_task(self) -> Task:
        if self.task.react is None or self.task.objectives is None:
            raise ConfigError(f"this learner needs a reaction task (assistant-reactions, synthetic-reactions), "
                              f"not {self.task.name!r}")
        return self.task


@dataclass(frozen=True)
class LearnerSpec:
    name: str
    summary: str  # one line: what it shows users and what it learns from
    feedback: str  # one of FEEDBACK_KINDS
    build: Callable[[Setup], Learner]
    options: tuple[str, ...] = ()  # options it reads beyond the shared ones (rounds, N, β, lr, loss, …)


LEARNERS: dict[str, LearnerSpec] = {}


def register(spec: LearnerSpec) -> None:
    if spec.feedback not in FEEDBACK_KINDS:
        raise ValueError(f"learner {spec.name!r}: feedback must be one of {', '.join(FEEDBACK_KINDS)}")
    LEARNERS[spec.name] = spec


def learners_for(feedback: str) -> tuple[str, ...]:
    return tuple(name for name, spec in LEARNERS.items() if spec.feedback == feedback)


def check(config: SimulationConfig) -> None:
    """Every setting of a run, values and names, before any model loads; a problem is a ConfigError."""
    config.validate()
    for name in config.algorithms:
        if name not in LEARNERS:
            raise ConfigError(f"unknown algorithm {name!r}: use one of {', '.join(LEARNERS)}")
    try:
        resolve_model(config.model)
        resolve_task(config.task)
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc


def build(name: str, config: SimulationConfig, policy: Policy, task: Task,
          new_policy: Callable[[], Policy]) -> Learner:
    """The learner registered under `name`, built for this run."""
    return LEARNERS[name].build(Setup(config, policy, task, new_policy))


# --- the built-in learners ----------------------------------------------------------------------


def _corll(s: Setup):
    from corll.learners.corll import CoRLL, RankAgreement

    kind = RankAgreement if s.config.rank_agreement and s.config.k > 1 else CoRLL
    return kind(s.policy, s.dpo(), s.editor(), k=s.config.k, batch_size=s.config.batch_size)


def _dueling(s: Setup):
    from corll.learners.dueling import Dueling
    from corll.users import DuelingLabeller

    return Dueling(s.policy, s.dpo(), DuelingLabeller(s.task), batch_size=s.config.batch_size)


def _rluf(s: Setup):
    from corll.learners.rluf import RLUF

    return RLUF(s.policy, s.dpo(), s.objective(), n=max(s.config.k, 2), batch_size=s.config.batch_size)


def _rloo(s: Setup):
    from corll.learners.rluf import RLOO

    c = s.config
    return RLOO(s.policy, s.objective(), n=max(c.k, 2), batch_size=c.batch_size, lr=c.lr, beta=c.beta)


def _kto(s: Setup):
    from corll.learners.kto import KTOConfig, KTOFromReactions, KTOLearner

    learner = KTOLearner(s.policy, KTOConfig(beta=s.config.beta, lr=s.config.lr))
    return KTOFromReactions(s.policy, learner, s.reaction_task().react, batch_size=s.config.batch_size)


def _sft(s: Setup):
    from corll.learners.edits import SFTAgent, SFTLearner

    return SFTAgent(s.policy, SFTLearner(s.policy, s.config.lr), s.editor(), batch_size=s.config.batch_size)


def _cost(s: Setup):
    from corll.learners.edits import CostAgent

    return CostAgent(s.policy, s.dpo(), s.editor(), k=max(s.config.k, 2), batch_size=s.config.batch_size)


def _early(s: Setup):
    from corll.learners.edits import EarlyEnsemble

    return EarlyEnsemble(s.policy, s.dpo(), s.editor(), k=s.config.k, batch_size=s.config.batch_size)


def _late(s: Setup):
    """Three learners on separate adapters over copies of the same base weights; a bandit picks who answers."""
    from corll.learners.corll import CoRLL
    from corll.learners.edits import CostAgent, LateEnsemble, SFTAgent, SFTLearner

    sft, cost = s.new_policy(), s.new_policy()
    members = [CoRLL(s.policy, s.dpo(), None, k=s.config.k), SFTAgent(sft, SFTLearner(sft, s.config.lr), None),
               CostAgent(cost, s.dpo(cost), None, k=max(s.config.k, 2))]
    return LateEnsemble(members, s.editor(), batch_size=s.config.batch_size, names=LATE_MEMBERS)


def _floor(s: Setup):
    from corll.learners.edits import FloorAgent

    return FloorAgent(s.policy, s.editor(), batch_size=s.config.batch_size)


def _headroom(s: Setup):
    from corll.learners.edits import HeadroomAgent

    return HeadroomAgent(s.policy, s.editor(), batch_size=s.config.batch_size, k=s.config.k)


def _oracle(s: Setup):
    from corll.learners.edits import OracleAgent

    if s.task.describe_user is None:
        raise ConfigError(f"--algorithm oracle needs a task that describes its users' preferences "
                          f"(prelude-summarize, prelude-email, their -shift variants), not {s.task.name!r}")
    return OracleAgent(s.policy, s.editor(), batch_size=s.config.batch_size, describe_user=s.task.describe_user)


EDITOR_OPTIONS = ("user", "l", "alpha", "noise-free", "epsilon", "offline-edits")
for _spec in (
    LearnerSpec("corll", "coactive learning: shows the best of k drafts by its implicit reward, learns "
                "edit ≻ draft by online DPO", "edits", _corll, ("k", *EDITOR_OPTIONS)),
    LearnerSpec("dueling", "dueling RLHF baseline: two samples labelled by the true reward, online DPO",
                "true reward", _dueling),
    LearnerSpec("rluf", "reactions: online DPO on best vs worst of k samples under Σ w·objective "
                "(P[Love], helpfulness, safety)", "reactions", _rluf, ("k", "weights")),
    LearnerSpec("rloo", "reactions: REINFORCE with a leave-one-out baseline on Σ w·objective", "reactions", _rloo,
                ("k", "weights")),
    LearnerSpec("kto", "reactions: KTO on loved / not-loved responses directly", "reactions", _kto),
    LearnerSpec("sft", "learning from user edits: supervised fine-tuning on the text the user kept", "edits", _sft,
                EDITOR_OPTIONS),
    LearnerSpec("cost", "learning from user edits: a model of the edit cost picks the cheapest of k drafts and "
                "ranks them for DPO", "edits", _cost, ("k", *EDITOR_OPTIONS)),
    LearnerSpec("ensemble-early", "learning from user edits: one loss combining preference, SFT and cost",
                "edits", _early, ("k", *EDITOR_OPTIONS)),
    LearnerSpec("ensemble-late", "learning from user edits: a bandit chooses per response among preference, SFT "
                "and cost learners", "edits", _late, ("k", *EDITOR_OPTIONS)),
    LearnerSpec("floor", "π₀, never learns (the bound from below for edit learners)", "edits", _floor,
                EDITOR_OPTIONS),
    LearnerSpec("oracle", "π₀ told each user's preference (the bound from above for edit learners)", "edits",
                _oracle, EDITOR_OPTIONS),
    LearnerSpec("headroom", "π₀'s least-edited of k samples, its user consulted before showing: what choosing "
                "among π₀'s own answers could save, without learning", "edits", _headroom, ("k", *EDITOR_OPTIONS)),
):
    register(_spec)

ALGORITHMS = tuple(LEARNERS)
EDIT_ALGORITHMS = learners_for("edits")
REACTION_ALGORITHMS = learners_for("reactions")
