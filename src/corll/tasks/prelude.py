"""PRELUDE-style personalization tasks (the user-edits paper; Gao et al. 2024): summaries and emails for users
whose latent preference depends on the document's source.

Documents were written for the project, one per line, 20 per source: short ones
(`tasks/data/prelude/<source>.txt`, 35–42 words a document, the fast variants) and, for the
summaries, long ones (`tasks/data/prelude-long/<source>.txt`, 140–235 words, closer to PRELUDE's
articles, posts, abstracts and reviews; 8 per source held out, so 40 held-out prompts).
Episodes interleave the sources round-robin. The user is the
source's rule editor (`users/preferences.py`): no edit when the response fits,
otherwise a revision toward the preference; the true reward is minus the edit cost
in tokens (words and punctuation marks), R*(x, y) = −Δ(y, edit(y)), so 0 is a response the user keeps as is.
In the `-shift` variants the online users hold another source's preference while the
offline log (`offline_edit`) was made by users who kept their source's own.
"""

from __future__ import annotations

from collections.abc import Sequence
from importlib import resources

from corll.feedback import word_edit_distance
from corll.tasks import Task, TaskError
from corll.users.preferences import DESCRIPTIONS, revise

SUMMARIZE_SOURCES = {"news": "news article", "forum": "personal forum post", "encyclopedia": "encyclopedia article",
                     "abstract": "paper abstract", "review": "movie review"}
EMAIL_SOURCES = {"paper-notes": "notes on a paper", "forum-notes": "notes on a forum thread",
                 "review-notes": "review notes", "tweet-notes": "notes for a tweet"}
MIN_DOCUMENTS = 20
N_TEST_PER_SOURCE = 4
N_TEST_LONG = 8


def load_documents(source: str, corpus: str = "prelude") -> list[str]:
    """One document per line; a missing, short or malformed corpus file is an error naming the file."""
    path = resources.files("corll.tasks").joinpath(f"data/{corpus}/{source}.txt")
    if not path.is_file():
        raise TaskError(f"corpus file for source {source!r} is missing: {path}")
    try:
        lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    except UnicodeDecodeError as exc:
        raise TaskError(f"corpus file {path} is not UTF-8 text: {exc}") from exc
    documents = [line for line in lines if line]
    if len(documents) < MIN_DOCUMENTS:
        raise TaskError(f"corpus file {path} has {len(documents)} documents; at least {MIN_DOCUMENTS} are needed")
    return documents


def prompt_for(kind: str, label: str, document: str) -> str:
    if kind == "summarize":
        return f"Summarize this {label}:\n\n{document}"
    return f"Write an email based on these {label}:\n\n{document}"


def interleave(groups: Sequence[Sequence[str]]) -> list[str]:
    """Round-robin over the groups: one item of each, then the next of each."""
    return [group[i] for i in range(max(map(len, groups))) for group in groups if i < len(group)]


def build_prelude(kind: str, preference_of_source: dict[str, str] | None = None, long: bool = False) -> Task:
    """The summaries or emails task; `long` takes the long documents (summaries only) and holds out
    N_TEST_LONG of each source."""
    sources = SUMMARIZE_SOURCES if kind == "summarize" else EMAIL_SOURCES
    corpus, n_test = ("prelude-long", N_TEST_LONG) if long else ("prelude", N_TEST_PER_SOURCE)
    preference_of_source = preference_of_source or {s: s for s in sources}
    source_of: dict[str, str] = {}
    train, test = [], []
    for source, label in sources.items():
        prompts = [prompt_for(kind, label, d) for d in load_documents(source, corpus)]
        source_of.update({p: source for p in prompts})
        train.append(prompts[n_test:])
        test.append(prompts[:n_test])

    def preference(prompt: str) -> str:
        return preference_of_source[source_of[prompt]]

    def local_edit(x: str, y: str) -> str:
        return revise(preference(x), y)

    def reward(xs: Sequence[str], ys: Sequence[str]) -> list[float]:
        return [-float(word_edit_distance(y, local_edit(x, y))) for x, y in zip(xs, ys)]

    def offline_edit(x: str, y: str) -> str:
        """The offline log's users keep each source's own preference, also in the shift setting."""
        return revise(source_of[x], y)

    def describe_user(x: str) -> str:
        return DESCRIPTIONS[preference(x)]

    suffix = ("-long" if long else "") + ("" if preference_of_source == {s: s for s in sources} else "-shift")
    return Task(f"prelude-{kind}{suffix}", interleave(train), interleave(test), reward, local_edit=local_edit,
                offline_edit=offline_edit, describe_user=describe_user, source_of=source_of.__getitem__)


def shifted(sources: Sequence[str]) -> dict[str, str]:
    """The shift setting: each source's users now hold the next source's preference."""
    names = list(sources)
    return {s: names[(i + 1) % len(names)] for i, s in enumerate(names)}

