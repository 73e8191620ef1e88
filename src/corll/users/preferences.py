"""Latent-preference users (the user-edits paper, PRELUDE): deterministic rule editors, one per latent preference.

A preference is a list of traits. Each trait can tell whether a text already has
it (`fits`) and can rewrite a text so that it does (`apply`). The user first
checks every trait; if all fit, there is no edit (cost 0); otherwise it applies
the traits in order and returns the result. Traits are ordered so that later ones
never undo earlier ones, which makes every editor idempotent: editing its own
output changes nothing, and the cost against its own output is zero (tested).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from corll.feedback import Edit

SENTENCE = re.compile(r"(?<=[.!?])\s+")
WORD = re.compile(r"[A-Za-z']+")
EMOJIS = "🙂✨📚🚀🎉"
NEGATIVE = {"bad": "tricky", "sad": "quiet", "terrible": "surprising", "angry": "upset", "failed": "tried",
            "problem": "puzzle", "problems": "puzzles", "worst": "oddest", "awful": "unusual", "hate": "dislike",
            "crisis": "challenge", "damage": "change", "lost": "missed", "fear": "worry", "died": "passed away"}
SECOND_PERSON = {"i": "you", "my": "your", "me": "you", "mine": "yours", "we": "you", "our": "your", "us": "you"}
# A sign-off is a short line ("Best regards,", "Thank you so much for your time!"), not every line that starts
# with its words: a paragraph opening "Thanks so much for the request. We're thrilled ..." is body text, and a
# person who wants a different closing does not delete it with everything after it.
CLOSING_LINE = re.compile(r"^(best regards|kind regards|regards|best|thanks|thank you|cheers|sincerely)\b[^\n]{0,40}$",
                          re.IGNORECASE | re.MULTILINE)


GREETING_LINE = re.compile(r"^(dear|hey|hi|hello)\b", re.IGNORECASE)


def sentences(text: str) -> list[str]:
    return [s.strip() for s in SENTENCE.split(text.strip()) if s.strip()]


def word_count(text: str) -> int:
    """Words proper: bullet markers and emojis do not count."""
    return len(WORD.findall(text))


def first_words(text: str, n: int) -> str:
    """The text cut after its n-th word (line breaks kept), ending with a full stop if it was cut."""
    kept, count = [], 0
    for line in text.strip().splitlines():
        words = line.split()
        take = []
        for w in words:
            if count >= n:
                break
            take.append(w)
            count += bool(WORD.search(w))
        if take:
            kept.append(" ".join(take))
        if count >= n:
            break
    cut = "\n".join(kept)
    if word_count(cut) < word_count(text) and cut and cut[-1] not in ".!?":
        cut = cut.rstrip(",;:") + "."
    return cut


def body_lines(text: str) -> list[str]:
    """Lines before the closing (and signature), other than a greeting: what bullets apply to."""
    closing = CLOSING_LINE.search(text)
    body = text[: closing.start()] if closing else text
    return [line for line in body.strip().splitlines() if line.strip() and not GREETING_LINE.match(line)]


@dataclass(frozen=True)
class Trait:
    name: str
    fits: Callable[[str], bool]
    apply: Callable[[str], str]


# --- traits. Length traits cut below their limit (`reserve`), so that the greeting, ending or
# format a later trait adds still fits inside it; that is what makes every editor idempotent. ----


def _short_sentences(limit: int, reserve: int = 5) -> Trait:
    def split(text: str) -> str:
        out = []
        for sentence in sentences(text):
            words = sentence.split()
            while len(words) > limit - reserve:
                out.append(" ".join(words[: limit - reserve]).rstrip(",;:") + ".")
                words = words[limit - reserve :]
            if words:
                out.append(" ".join(words))
        return " ".join(out)

    return Trait(f"sentences of at most {limit} words",
                 lambda t: all(word_count(s) <= limit for s in sentences(t)), split)


def _brief(limit: int, reserve: int = 10) -> Trait:
    return Trait(f"at most {limit} words", lambda t: word_count(t) <= limit, lambda t: first_words(t, limit - reserve))


def _positive() -> Trait:
    pattern = re.compile(r"\b(" + "|".join(NEGATIVE) + r")\b", re.IGNORECASE)
    return Trait("positive words only", lambda t: not pattern.search(t),
                 lambda t: pattern.sub(lambda m: NEGATIVE[m.group(0).lower()], t))


def _ends_with(name: str, suffix: str, test: Callable[[str], bool]) -> Trait:
    """Append `suffix` as its own sentence (or line, in line-structured text)."""
    def append(text: str) -> str:
        text = text.rstrip()
        if text and text[-1] not in ".!?":
            text += "."
        return (text + ("\n" if "\n" in text else " ") + suffix).strip()

    return Trait(name, test, append)


def _starts_with(name: str, prefix: str, test: Callable[[str], bool]) -> Trait:
    return Trait(name, test, lambda t: (prefix + ("" if prefix.endswith("\n") else " ") + t.lstrip()).strip())


def _closing(line: str) -> Trait:
    """End with this closing line, replacing whatever closing (and signature) the text had."""
    def close(text: str) -> str:
        match = CLOSING_LINE.search(text)
        body = (text[: match.start()] if match else text).rstrip()
        return f"{body}\n{line}" if body else line

    return Trait(f"closing '{line}'", lambda t: t.rstrip().endswith(line) and len(CLOSING_LINE.findall(t)) == 1, close)


def _no_closing() -> Trait:
    """No closing line: the text is cut where its closing (and the signature after it) starts."""
    return Trait("no closing line", lambda t: not CLOSING_LINE.search(t),
                 lambda t: t[: CLOSING_LINE.search(t).start()].rstrip())


def _second_person() -> Trait:
    pattern = re.compile(r"\b(" + "|".join(SECOND_PERSON) + r")\b", re.IGNORECASE)

    def swap(text: str) -> str:
        swapped = pattern.sub(lambda m: SECOND_PERSON[m.group(0).lower()], text)
        return swapped if re.search(r"\byou\b", swapped, re.IGNORECASE) else ("You will see: " + swapped).strip()

    return Trait("second person", lambda t: not pattern.search(t) and bool(re.search(r"\byou\b", t, re.I)), swap)


def _bullets() -> Trait:
    def to_bullets(text: str) -> str:
        lines = text.strip().splitlines()
        head = [l for l in lines[:1] if GREETING_LINE.match(l)]
        closing = CLOSING_LINE.search(text)
        tail = text[closing.start():].strip().splitlines() if closing else []
        body = body_lines(text)
        items = [l.strip().lstrip("-•* ").strip() for l in body] if len(body) > 1 else sentences(" ".join(body))
        return "\n".join(head + [f"- {item}" for item in items if item] + tail)

    return Trait("bullet points", lambda t: all(l.startswith("- ") for l in body_lines(t)), to_bullets)


def _question_answer() -> Trait:
    def qa(text: str) -> str:
        body = " ".join(l.removeprefix("Q: ").removeprefix("A: ") for l in text.strip().splitlines()).strip()
        return f"Q: What is it about?\nA: {body}"

    return Trait("question-answer format", lambda t: t.startswith("Q: ") and "\nA: " in t, qa)


def _tweet(limit: int = 280, reserve: int = 30) -> Trait:
    def shorten(text: str) -> str:
        words = text.split()
        while len(" ".join(words)) > limit - reserve:
            words = words[:-1]
        return " ".join(words)

    return Trait("tweet length", lambda t: len(t) <= limit and "\n" not in t, shorten)


# --- the latent preferences of the user-edits paper's table --------------------------------------------------

def _has_question(t: str) -> bool:
    return "?" in t


def _has_emoji(t: str) -> bool:
    return any(e in t for e in EMOJIS)


PREFERENCES: dict[str, list[Trait]] = {
    # summarize
    "news": [_positive(), _short_sentences(12),
             _starts_with("storytelling opening", "Once upon a time,", lambda t: t.startswith("Once upon a time,")),
             _ends_with("playful ending", "What a day!", lambda t: t.rstrip().endswith("!"))],
    "forum": [_brief(50), _second_person(),
              _ends_with("invites reflection", "How would you feel?", lambda t: t.rstrip().endswith("?"))],
    "encyclopedia": [_brief(50), _bullets()],
    "abstract": [_tweet(), _ends_with("inquisitive, with emojis", "Curious? 🚀",
                                      lambda t: _has_question(t) and _has_emoji(t))],
    "review": [_brief(60), _question_answer()],
    # email
    "paper-notes": [_bullets(), _starts_with("respectful greeting", "Dear colleague,\n", lambda t: t.startswith("Dear ")),
                    _closing("Kind regards")],
    "forum-notes": [_no_closing(), _starts_with("informal greeting", "Hey!", lambda t: t.startswith("Hey"))],
    "review-notes": [_positive(), _no_closing(),
                     _ends_with("call to action", "Can you take a look this week?",
                                lambda t: t.rstrip().endswith("this week?"))],
    "tweet-notes": [_starts_with("personal greeting", "Hi there,", lambda t: t.startswith("Hi ")),
                    _closing("Thank you so much for your time!")],
}


# Each preference in words, as a user would state it if asked: what the oracle agent of the user-edits paper's
# protocol is told in its system prompt (the learners never see it).
DESCRIPTIONS: dict[str, str] = {
    "news": "Use only positive words and sentences of at most 12 words. Start with 'Once upon a time,' "
            "and end with a playful exclamation such as 'What a day!'",
    "forum": "Use at most 50 words, address the reader as 'you' (never 'I' or 'we'), and end with a "
             "question such as 'How would you feel?'",
    "encyclopedia": "Use at most 50 words, written as bullet points, each line starting with '- '.",
    "abstract": "Write one tweet of at most 280 characters on a single line, ending with a question and an "
                "emoji, such as 'Curious? 🚀'",
    "review": "Use at most 60 words in question-answer format: a line 'Q: What is it about?' and then a line "
              "starting with 'A: '.",
    "paper-notes": "Start with 'Dear colleague,' on its own line, write the body as bullet points starting "
                   "with '- ', and close with 'Kind regards'.",
    "forum-notes": "Start with 'Hey!' and write no closing line or signature.",
    "review-notes": "Use only positive words, write no closing line, and end with 'Can you take a look this week?'",
    "tweet-notes": "Start with 'Hi there,' and close with 'Thank you so much for your time!'",
}


def fits(preference: str, text: str) -> bool:
    return all(trait.fits(text) for trait in PREFERENCES[preference])


MAX_PASSES = 4


def revise(preference: str, text: str) -> str:
    """Apply every trait the text lacks, in order, until all fit (a later trait's addition can push a
    length limit over; the next pass cuts below the limit, leaving room, so this settles in ≤ 3 passes)."""
    for _ in range(MAX_PASSES):
        if fits(preference, text):
            break
        for trait in PREFERENCES[preference]:
            if not trait.fits(text):
                text = trait.apply(text)
    return text


@dataclass
class RuleEditor:
    """A user with one latent preference per prompt's source: no edit when the response fits."""

    preference_of: Callable[[str], str]  # prompt -> latent preference name

    def edit(self, prompts: Sequence[str], drafts: Sequence[str]) -> list[Edit | None]:
        out: list[Edit | None] = []
        for x, y in zip(prompts, drafts):
            preference = self.preference_of(x)
            out.append(None if fits(preference, y) else Edit(draft=y, text=revise(preference, y)))
        return out


def edit_cost(draft: str, edit: Edit | None) -> int:
    """Tokens (words and punctuation marks) changed by the user (0 when the response needed no edit)."""
    return 0 if edit is None else edit.changed()
