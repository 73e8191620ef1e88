"""A complete task of your own: `corll simulate --task examples/polite_task.py:build`.

The users want polite replies. What each `--user` needs:
  --user local   `local_edit(prompt, draft) -> the text the user keeps` (small edits of the draft)
  --user expert  `expert(prompts, n) -> n responses per prompt` (here: the base model, told what good looks like)
  --user llm     `describe_user(prompt) -> the user's preference in words` (a prompted model edits)
Evaluation always needs `reward(prompts, responses) -> one float per response`, batched.
"""

from collections.abc import Sequence

from corll.tasks import Task, prompted_expert

QUESTIONS = [f"A customer asks about order {n}: where is it?" for n in range(40)]
POLITE = ("please", "thank", "sorry", "glad", "happy to")


def politeness(response: str) -> float:
    text = response.lower()
    return sum(word in text for word in POLITE) / len(POLITE)


def reward(prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
    """R*: batched, one number per response (higher is better); only users and evaluation see it."""
    return [politeness(y) for y in responses]


def local_edit(prompt: str, draft: str) -> str:
    """What a user keeps: the draft with a polite opening and closing it lacks."""
    kept = draft.strip()
    if "thank" not in kept.lower():
        kept = "Thank you for asking. " + kept
    if "happy to" not in kept.lower():
        kept += " I am happy to help further."
    return kept


def describe_user(prompt: str) -> str:
    return "Always thank the customer and offer further help, politely."


def build(policy) -> Task:
    return Task("polite", train_prompts=QUESTIONS[8:], test_prompts=QUESTIONS[:8], reward=reward,
                expert=prompted_expert(policy, "You are a courteous support agent: thank the customer, apologise "
                                               "for any trouble and offer further help."),
                local_edit=local_edit, describe_user=describe_user)
