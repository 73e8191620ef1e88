"""Learners turn feedback into policy updates. Each `round` collects N preferences and takes one step."""

from corll.learners.corll import CoRLL
from corll.learners.dpo import DPOConfig, DPOLearner, NonFiniteLossError
from corll.learners.dueling import Dueling
from corll.learners.kto import KTOConfig, KTOFromReactions, KTOLearner
from corll.learners.rluf import RLUF, parse_weights, weighted_reward
from corll.learners.rounds import RoundLog

ALGORITHMS = ("corll", "dueling", "rluf", "kto", "sft", "cost", "ensemble-early", "ensemble-late")
EDIT_ALGORITHMS = ("corll", "sft", "cost", "ensemble-early", "ensemble-late")
REACTION_ALGORITHMS = ("rluf", "kto")

__all__ = ["ALGORITHMS", "EDIT_ALGORITHMS", "REACTION_ALGORITHMS", "RLUF", "CoRLL", "DPOConfig", "DPOLearner", "Dueling", "KTOConfig",
           "KTOFromReactions", "KTOLearner", "NonFiniteLossError", "RoundLog", "parse_weights", "weighted_reward"]
