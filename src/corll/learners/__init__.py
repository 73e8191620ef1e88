"""Learners turn feedback into policy updates. Each `round` collects N preferences and takes one step.

The names below load on first use, so that `corll.learners.registry` (which names every
learner) can be read without loading torch.
"""

import importlib

_HOMES = {
    "CoRLL": "corll.learners.corll",
    "DPOConfig": "corll.learners.dpo", "DPOLearner": "corll.learners.dpo", "NonFiniteLossError": "corll.learners.dpo",
    "Dueling": "corll.learners.dueling",
    "KTOConfig": "corll.learners.kto", "KTOFromReactions": "corll.learners.kto", "KTOLearner": "corll.learners.kto",
    "RLOO": "corll.learners.rluf", "RLUF": "corll.learners.rluf",
    "weighted_reward": "corll.learners.rluf",
    "RoundLog": "corll.learners.rounds",
}

__all__ = sorted(_HOMES)


def __getattr__(name: str):
    if name not in _HOMES:
        raise AttributeError(f"module 'corll.learners' has no attribute {name!r}")
    return getattr(importlib.import_module(_HOMES[name]), name)
