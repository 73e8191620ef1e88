"""Logged edits for the learner's tests."""

from corll.store import Principal, Store

ALICE = Principal("acme", "alice")
BOB = Principal("acme", "bob")
PROMPTS = [f"Write a note about topic {i}." for i in range(40)]


def log_edits(store: Store, who: Principal, n: int, *, start: int = 0, draft: str = "hello there, friend",
              edit: str = "yes yes yes") -> list[int]:
    """n logged completions of `who`, each edited: the user always turns the draft into `edit`."""
    events = []
    for i in range(start, start + n):
        messages = [{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}]
        interaction = store.record_interaction(who, messages, draft, policy_version_id=None, sampling={},
                                               response_logprob=None)
        events.append(store.add_feedback(who, interaction, edit=edit))
    return events
