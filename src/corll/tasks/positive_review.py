"""positive-review: continue a movie-review opening so that the review turns out positive.

The CPU-scale analogue of the paper's IMDB task (the coactive-learning paper, §4.4):
R*(x, y) = log P(positive | y) + λ·(mean token log π_0(y|x)) − ρ·(1 − distinct(y)).
P(positive) comes from VADER (an offline lexicon scorer) as (1 + compound) / 2,
clipped to [0.001, 0.999]. The paper adds 3·Σ log π_ref(y|x); a sum grows with
length and swamps the sentiment term on short responses, so we use the per-token
mean with λ = 0.1 (a fluent response scores about −0.2, gibberish about −0.8).
A language model rates "wonderful wonderful wonderful …" as fluent, and without a
guard the policy found exactly that; no reader would, so R* also charges for
repetition: distinct(y) is the share of distinct words, ρ = 1 (ordinary prose
loses about 0.1–0.2, a chant of one word most of 1). An empty response gets the
lowest reward. The local editor swaps negative words for positive ones, deletes
words it has already read twice, and adds a closing line when needed. The expert
is the base model told, in a system prompt, to write glowing reviews (weak at
135M: the editor's selection among its l candidates is what makes the edits
better than the draft).
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Sequence
from importlib import resources

from corll.policy import Policy
from corll.tasks import Task, prompted_expert

FLUENCY_WEIGHT = 0.1
REPETITION_WEIGHT = 1.0
P_CLIP = 1e-3
EMPTY_REWARD = math.log(P_CLIP) - FLUENCY_WEIGHT * 20.0 - REPETITION_WEIGHT
WORD = re.compile(r"[A-Za-z']+")
MAX_REPEATS = 2
INSTRUCTION = "Continue this movie review in one or two sentences: "
EXPERT_SYSTEM = ("You are a film critic who loves movies. Continue the review with warm, "
                 "enthusiastic praise.")
# The local editor's moves: swap each negative word (VADER lexicon valence < 0) for a positive one,
# and, if the review is still not clearly positive, add a short closing line.
POSITIVE_WORDS = ("wonderful", "beautiful", "brilliant", "delightful", "great", "lovely")
CLOSINGS = ("I loved it.", "A wonderful film.", "Highly recommended!", "What a delight.")
CLEARLY_POSITIVE = 0.5
N_TEST = 40
SPLIT_SEED = 1234


def openings() -> list[str]:
    text = resources.files("corll.tasks").joinpath("data/review_openings.txt").read_text(encoding="utf-8")
    return [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]


def distinct_share(text: str) -> float:
    """Distinct words / words (1.0 for text without words)."""
    words = [w.lower() for w in WORD.findall(text)]
    return len(set(words)) / len(words) if words else 1.0


def positive_probability(text: str, analyzer) -> float:
    compound = analyzer.polarity_scores(text)["compound"]
    return min(max((1 + compound) / 2, P_CLIP), 1 - P_CLIP)


def build(policy: Policy) -> Task:
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    analyzer = SentimentIntensityAnalyzer()
    prompts = [INSTRUCTION + o for o in openings()]
    random.Random(SPLIT_SEED).shuffle(prompts)

    def reward(xs: Sequence[str], ys: Sequence[str]) -> list[float]:
        ref = policy.logprobs(xs, ys, reference=True)
        lengths = [len(policy.tokenizer(y, add_special_tokens=False)["input_ids"]) for y in ys]
        return [
            EMPTY_REWARD if n == 0 else math.log(positive_probability(y, analyzer)) + FLUENCY_WEIGHT * lp / n
            - REPETITION_WEIGHT * (1 - distinct_share(y))
            for y, lp, n in zip(ys, ref.tolist(), lengths)
        ]

    def local_edit(x: str, y: str) -> str:
        swaps = iter(POSITIVE_WORDS * (len(y) // len(POSITIVE_WORDS) + 1))
        seen: dict[str, int] = {}

        def revise(match: re.Match) -> str:
            word = match.group(0)
            seen[word.lower()] = seen.get(word.lower(), 0) + 1
            if seen[word.lower()] > MAX_REPEATS and len(word) > 3:
                return ""
            return next(swaps) if analyzer.lexicon.get(word.lower(), 0.0) < 0 else word

        edited = re.sub(r" {2,}", " ", WORD.sub(revise, y))
        if analyzer.polarity_scores(edited)["compound"] < CLEARLY_POSITIVE:
            edited = f"{edited.rstrip()} {CLOSINGS[len(y) % len(CLOSINGS)]}"
        return edited

    return Task("positive-review", prompts[N_TEST:], prompts[:N_TEST], reward, prompted_expert(policy, EXPERT_SYSTEM),
                local_edit)
