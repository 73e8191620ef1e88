"""Tiny tasks with exact rewards, for tests and quick trials on the tiny model.

`synthetic`: R*(x, y) is the share of characters of y that are lowercase letters (an
empty response scores 0). The expert writes short strings whose lowercase share varies
from candidate to candidate, so some beat a draft and some do not — exactly what the
expert-based editor needs.

`synthetic-personal` (the user-edits paper's protocol in miniature): two users by the prompt's
parity, one who wants a response to start with a lowercase letter and one who also
accepts a digit; each fixes the first character when it is wrong, and R* = −(words
changed). The tiny model cannot learn to tell the users apart in a few steps, so the
users overlap: what both accept is learnable.
"""

from __future__ import annotations

import string
from collections.abc import Sequence

import torch

from rapidfuzz.distance import Levenshtein
from corll.tasks import Task

GOOD = string.ascii_lowercase
OTHER = string.ascii_uppercase + string.digits + "!#$%&*+-/<=>?@[]^_{|}~"


def lowercase_share(text: str) -> float:
    return sum(c in GOOD for c in text) / len(text) if text else 0.0


def reward(prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
    return [lowercase_share(y) for y in responses]


def _pick(alphabet: str) -> str:
    return alphabet[int(torch.randint(len(alphabet), ()).item())]


def expert(prompts: Sequence[str], n: int) -> list[list[str]]:
    """n candidates per prompt; randomness from torch's global generator, so runs replay from a seed."""
    out = []
    for _ in prompts:
        candidates = []
        for _ in range(n):
            share, length = torch.rand(()).item(), int(torch.randint(4, 17, ()).item())
            candidates.append("".join(_pick(GOOD) if torch.rand(()).item() < share else _pick(OTHER)
                                      for _ in range(length)))
        out.append(candidates)
    return out


def local_edit(prompt: str, response: str) -> str:
    """Fix the first three characters that are not lowercase letters (or extend an empty draft)."""
    chars, fixed = list(response), 0
    for i, c in enumerate(chars):
        if fixed < 3 and c not in GOOD:
            chars[i], fixed = "e", fixed + 1
    return "".join(chars) if response else "eee"


def build(policy=None) -> Task:
    return Task(
        name="synthetic",
        train_prompts=[f"word {i}" for i in range(64)],
        test_prompts=[f"word {i}" for i in range(64, 80)],
        reward=reward,
        expert=expert,
        local_edit=local_edit,
    )


PERSONAL_USERS = {"lower": (GOOD, "e", "Start with a lowercase letter."),
                  "lower-or-digit": (GOOD + string.digits, "7", "Start with a lowercase letter or a digit.")}


def whitespace_edit_distance(a: str, b: str) -> int:
    """The miniature's cost: its users fix one character of the tiny model's gibberish, which word-and-
    punctuation tokens would split at every symbol; counted over whitespace-separated words instead."""
    return Levenshtein.distance(a.split(), b.split())


def personal_user(prompt: str) -> str:
    return "lower" if int(prompt.split()[-1]) % 2 == 0 else "lower-or-digit"


def personal_edit(prompt: str, response: str) -> str:
    """Replace the first visible character if the prompt's user does not accept it (extend an empty draft)."""
    accepted, replacement, _ = PERSONAL_USERS[personal_user(prompt)]
    stripped = response.lstrip()
    if not stripped:
        return replacement
    if stripped[0] in accepted:
        return response
    i = len(response) - len(stripped)
    return response[:i] + replacement + response[i + 1:]


def build_personal(policy=None) -> Task:
    def reward(prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
        return [-float(whitespace_edit_distance(y, personal_edit(x, y))) for x, y in zip(prompts, responses)]

    return Task(name="synthetic-personal", train_prompts=[f"word {i}" for i in range(64)],
                test_prompts=[f"word {i}" for i in range(64, 80)], reward=reward, local_edit=personal_edit,
                describe_user=lambda prompt: PERSONAL_USERS[personal_user(prompt)][2], source_of=personal_user,
                edit_cost=whitespace_edit_distance)
