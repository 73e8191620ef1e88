"""Rule editors: deterministic, leave fitting text alone, and revise toward the preference until it fits."""

import random

import pytest

from corll.feedback import word_edit_distance
from corll.users.preferences import PREFERENCES, RuleEditor, edit_cost, fits, revise

SAMPLES = [
    "The city council approved a new park after a long and terrible debate about the budget, and many "
    "residents who had been angry for months finally said they were happy with the plan and the schedule.",
    "I moved to a new town last year and my neighbours were not friendly at first. We tried to join a club.",
    "Best regards,\nSam",
    "- first point\n- second point",
    "Q: What?\nA: A film about a dog.",
    "Short.",
    "Dear team,\nHere are my notes on the results, which show that our method failed twice.\nThanks,\nAlex",
    "",
]


@pytest.mark.parametrize("preference", sorted(PREFERENCES))
def test_every_editor_is_idempotent_and_its_output_fits(preference):
    rng = random.Random(0)
    texts = SAMPLES + [" ".join(rng.choice(SAMPLES[0].split()) for _ in range(rng.randint(3, 80))) for _ in range(20)]
    for text in texts:
        revised = revise(preference, text)
        assert fits(preference, revised), (preference, text, revised)
        assert revise(preference, revised) == revised  # the user accepts its own edit: cost 0
        assert revise(preference, text) == revised  # deterministic


def test_fitting_text_is_not_edited_and_costs_nothing():
    fitting = revise("encyclopedia", SAMPLES[0])
    editor = RuleEditor(lambda prompt: "encyclopedia")
    [none, edit] = editor.edit(["x", "x"], [fitting, SAMPLES[0]])
    assert none is None and edit_cost(fitting, none) == 0
    assert edit.text == fitting and edit_cost(SAMPLES[0], edit) == word_edit_distance(SAMPLES[0], fitting) > 0


def test_revision_moves_toward_the_preference_by_hand():
    assert revise("forum", "I lost my keys.") == "you lost your keys. How would you feel?"
    assert revise("encyclopedia", "Cats purr. Dogs bark.") == "- Cats purr.\n- Dogs bark."
    assert revise("review", "A film about a dog.") == "Q: What is it about?\nA: A film about a dog."
    assert revise("forum-notes", "Notes here.\nBest regards,\nSam") == "Hey! Notes here."
    assert word_edit_distance("a b c", "a x c d") == 2


def test_a_paragraph_opening_with_thanks_is_body_text_not_the_closing():
    body = "Hi there,\nThanks so much for the request. We're thrilled to have you at the bakery, and cookies are free!"
    # the closing is added after the body, not put in place of it
    assert revise("tweet-notes", body) == body + "\nThank you so much for your time!"
    signed = body + "\nThanks,\nSam"
    assert revise("tweet-notes", signed) == body + "\nThank you so much for your time!"
    assert revise("forum-notes", "Hey! " + signed.removeprefix("Hi there,\n")) == "Hey! " + body.removeprefix("Hi there,\n")
