"""Simulated users who react instead of editing (the reactions paper): rare, binary, sometimes adversarial.

Each user has a latent utility over responses, a weighted sum of measurable features:

    u(x, y) = w_sentiment·sentiment(y) + w_relevance·relevance(x, y) + w_length·length_fit(y)
              + w_emoji·has_emoji(y) + w_closing·has_closing(y)

(VADER compound sentiment in [−1, 1]; cosine similarity of MiniLM embeddings;
1 − |words − preferred|/preferred clipped to [0, 1]; 0/1 habits), and sends a
"love" with probability σ(a·u + b), otherwise nothing. The bias b is calibrated so
that, on a reference set of responses, the mean love probability equals the
user's base rate (a few percent: most users never react). Adversarial users
love what the others dislike (their utility is negated) or react at random.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

import torch

EMOJI = re.compile("[\U0001f300-\U0001faff\u2600-\u27bf]")
CLOSINGS = re.compile(r"(hope this helps|let me know|happy to help|enjoy|cheers|best wishes)[.!]*\s*$", re.IGNORECASE)
ADVERSARIAL_MODES = ("none", "inverted", "random")


@functools.lru_cache(maxsize=1)
def _sentiment_analyzer():
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    return SentimentIntensityAnalyzer()  # loads its lexicon from disk: once per process


def features(prompts: Sequence[str], responses: Sequence[str]) -> list[dict[str, float]]:
    from corll.embeddings import relevance

    analyzer = _sentiment_analyzer()
    similarity = relevance(prompts, responses)
    return [{"sentiment": analyzer.polarity_scores(y)["compound"], "relevance": s, "words": float(len(y.split())),
             "emoji": float(bool(EMOJI.search(y))), "closing": float(bool(CLOSINGS.search(y.strip())))}
            for y, s in zip(responses, similarity)]


@dataclass(frozen=True)
class ReactionUser:
    """One user's taste and habits. Weights are per feature; `scale` is a in σ(a·u + b)."""

    sentiment: float = 1.0
    relevance: float = 2.0
    length: float = 0.5
    preferred_words: int = 40
    emoji: float = 0.0
    closing: float = 0.0
    scale: float = 4.0
    base_rate: float = 0.04
    adversarial: str = "none"

    def __post_init__(self) -> None:
        if not 0 < self.base_rate < 1:
            raise ValueError(f"base_rate must be in (0, 1), got {self.base_rate}")
        if self.adversarial not in ADVERSARIAL_MODES:
            raise ValueError(f"unknown adversarial mode {self.adversarial!r}: use one of {', '.join(ADVERSARIAL_MODES)}")

    def utility(self, f: dict[str, float]) -> float:
        length_fit = max(0.0, 1 - abs(f["words"] - self.preferred_words) / self.preferred_words)
        u = (self.sentiment * f["sentiment"] + self.relevance * f["relevance"] + self.length * length_fit
             + self.emoji * f["emoji"] + self.closing * f["closing"])
        return -u if self.adversarial == "inverted" else u


def calibrate_bias(utilities: Sequence[float], scale: float, base_rate: float) -> float:
    """The b for which mean σ(a·u + b) over these utilities equals the base rate (bisection; monotone in b)."""
    low, high = -50.0, 50.0
    for _ in range(100):
        mid = (low + high) / 2
        rate = sum(1 / (1 + math.exp(-(scale * u + mid))) for u in utilities) / len(utilities)
        low, high = (mid, high) if rate < base_rate else (low, mid)
    return (low + high) / 2


class ReactionPanel:
    """A set of users with calibrated biases; `react` draws who loves what (torch RNG, so runs replay)."""

    def __init__(self, users: Sequence[ReactionUser], reference_prompts: Sequence[str],
                 reference_responses: Sequence[str]) -> None:
        if not users:
            raise ValueError("a reaction panel needs at least one user")
        self.users = list(users)
        reference = features(reference_prompts, reference_responses)
        self.biases = [calibrate_bias([u.utility(f) for f in reference], u.scale, u.base_rate) for u in self.users]

    def _probabilities(self, user: int, found: list[dict[str, float]]) -> list[float]:
        u, b = self.users[user], self.biases[user]
        if u.adversarial == "random":
            return [u.base_rate] * len(found)
        return [1 / (1 + math.exp(-(u.scale * u.utility(f) + b))) for f in found]

    def love_probability(self, user: int, prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
        return self._probabilities(user, features(prompts, responses))

    def love_probabilities(self, prompts: Sequence[str], responses: Sequence[str]) -> list[list[float]]:
        """Every user's love probability for each response (features computed once): [user][response]."""
        found = features(prompts, responses)
        return [self._probabilities(user, found) for user in range(len(self.users))]

    def react(self, user: int, prompts: Sequence[str], responses: Sequence[str]) -> list[bool]:
        """True where the user sends a "love"; False means no reaction (the usual case)."""
        return [bool(torch.rand(()).item() < p) for p in self.love_probability(user, prompts, responses)]
