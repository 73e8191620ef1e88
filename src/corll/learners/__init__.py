"""Learners turn feedback into policy updates. Each `round` collects N preferences and takes one step."""

from corll.learners.corll import CoRLL
from corll.learners.dpo import DPOConfig, DPOLearner, NonFiniteLossError
from corll.learners.dueling import Dueling
from corll.learners.kto import KTOConfig, KTOFromReactions, KTOLearner
from corll.learners.rluf import RLOO, RLUF, parse_weights, weighted_reward
from corll.learners.rounds import RoundLog

ALGORITHMS = ("corll", "dueling", "rluf", "rloo", "kto", "sft", "cost", "ensemble-early", "ensemble-late", "floor", "oracle")
EDIT_ALGORITHMS = ("corll", "sft", "cost", "ensemble-early", "ensemble-late", "floor", "oracle")
REACTION_ALGORITHMS = ("rluf", "rloo", "kto")

__all__ = ["ALGORITHMS", "EDIT_ALGORITHMS", "REACTION_ALGORITHMS", "RLOO", "RLUF", "CoRLL", "DPOConfig", "DPOLearner", "Dueling", "KTOConfig",
           "KTOFromReactions", "KTOLearner", "NonFiniteLossError", "RoundLog", "parse_weights", "weighted_reward"]
