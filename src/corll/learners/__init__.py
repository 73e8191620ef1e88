"""Learners turn feedback into policy updates. Each `round` collects N preferences and takes one step."""

from corll.learners.corll import CoRLL
from corll.learners.dpo import DPOConfig, DPOLearner, NonFiniteLossError
from corll.learners.dueling import Dueling
from corll.learners.rounds import RoundLog

ALGORITHMS = ("corll", "dueling")

__all__ = ["ALGORITHMS", "CoRLL", "DPOConfig", "DPOLearner", "Dueling", "NonFiniteLossError", "RoundLog"]
