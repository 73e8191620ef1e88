import math

import pytest
import torch

from corll.feedback import Edit, edit_tokens, word_edit_distance
from corll.tasks import Task
from corll.users import DuelingLabeller, ExpertEditor, choose_edit

CANDIDATES = [0.9, 0.2, 0.6, 0.7]


def test_minimal_improvement_is_the_lowest_candidate_above_the_draft():
    assert choose_edit(0.5, CANDIDATES).index == 2  # 0.6


@pytest.mark.parametrize(("alpha", "expected"), [(0.5, 3), (0.6, 0), (1.0, 0), (0.1, 2)])
def test_alpha_informative_choice(alpha, expected):
    # gap to the best = 0.4; α=0.5 needs a gain >= 0.2 -> 0.7; α=0.6 needs >= 0.24 -> 0.9
    assert choose_edit(0.5, CANDIDATES, alpha=alpha).index == expected


def test_no_better_candidate_noisy_returns_the_best_and_noise_free_drops():
    assert choose_edit(0.95, CANDIDATES).index == 0
    assert choose_edit(0.95, CANDIDATES, noise_free=True).index is None


def fake_task(candidate_rewards):
    """Candidates are their own rewards written as text; the draft's reward is 0.5."""
    def reward(xs, ys):
        return [float(y) for y in ys]

    def expert(xs, n):
        return [[str(r) for r in candidate_rewards][:n] for _ in xs]

    return Task("fake", ["p"], ["q"], reward, expert)


def test_editor_reports_rewards_alpha_hat_and_mislabels():
    editor = ExpertEditor(fake_task([0.1, 0.6, 0.9]), l=3)
    (edit,) = editor.edit(["p"], ["0.5"])
    assert edit.text == "0.6" and not edit.mislabeled
    assert edit.alpha_hat == pytest.approx(0.1 / 0.4)
    (noisy,) = ExpertEditor(fake_task([0.1, 0.3]), l=2).edit(["p"], ["0.5"])
    assert noisy.text == "0.3" and noisy.mislabeled and math.isnan(noisy.alpha_hat)
    assert ExpertEditor(fake_task([0.1, 0.3]), l=2, noise_free=True).edit(["p"], ["0.5"]) == [None]


def test_injected_mislabels_flip_the_preference_at_rate_epsilon_even_when_every_candidate_beats_the_draft():
    torch.manual_seed(0)
    editor = ExpertEditor(fake_task([0.6, 0.9]), l=2, epsilon=0.2)  # both candidates beat the draft's 0.5
    edits = editor.edit(["p"] * 3000, ["0.5"] * 3000)
    rate = sum(e.mislabeled for e in edits) / len(edits)
    assert abs(rate - 0.2) < 0.025  # without the flip there would be none
    # a flipped answer prefers the draft to the candidate the user would have given
    assert {(e.to_pair("p").chosen, e.to_pair("p").rejected) for e in edits if e.mislabeled} == {("0.5", "0.6")}
    assert {e.text for e in edits if not e.mislabeled} == {"0.6"}
    assert all(not e.mislabeled for e in ExpertEditor(fake_task([0.6, 0.9]), l=2).edit(["p"] * 200, ["0.5"] * 200))


def test_dueling_prefers_the_higher_reward_in_either_order_and_reports_ties():
    labeller = DuelingLabeller(fake_task([]))
    duels = labeller.compare(["a", "b", "c"], ["0.2", "0.9", "0.4"], ["0.7", "0.1", "0.4"])
    assert (duels[0].pair.chosen, duels[0].pair.rejected) == ("0.7", "0.2")
    assert (duels[1].pair.chosen, duels[1].pair.rejected) == ("0.9", "0.1")
    assert duels[2].pair is None and duels[2].rewards == (0.4, 0.4)


def test_word_edit_distance_counts_word_operations():
    assert word_edit_distance("the film was bad", "the film was great") == 1
    assert word_edit_distance("the film was bad", "the film was truly great fun") == 3
    assert word_edit_distance("", "two words") == 2


def test_punctuation_marks_are_tokens_of_the_edit_cost():
    """PRELUDE's measure: a changed mark costs one, not a whole new word; inner apostrophes stay in words."""
    assert edit_tokens("Great film. Isn't it?") == ["Great", "film", ".", "Isn't", "it", "?"]
    assert word_edit_distance("A great film.", "A great film!") == 1
    assert word_edit_distance("Great, great film", "Great great film") == 1
    assert word_edit_distance("well-known", "well known") == 2
    assert Edit("a b", "a c", 0.0, 1.0).to_pair("x").to_trl() == {"prompt": "x", "chosen": "a c", "rejected": "a b"}


def test_local_editor_revises_in_place_and_skips_drafts_it_leaves_alone():
    from corll.tasks.synthetic import build
    from corll.users import LocalEditor

    editor = LocalEditor(build())
    fixed, untouched = editor.edit(["p", "p"], ["AB1cd", "abc"])
    assert fixed.text == "eeecd" and fixed.edit_reward > fixed.draft_reward and not fixed.mislabeled
    assert word_edit_distance(fixed.draft, fixed.text) == 1
    assert untouched is None


def test_positive_review_local_edit_swaps_negative_words_and_keeps_line_breaks(policy):
    from corll.tasks.positive_review import build

    task = build(policy)
    edited = task.local_edit("x", "a bad\nday. \n\nIt was boring")
    assert "bad" not in edited and "boring" not in edited and "\n\n" in edited
    assert task.reward(["x", "x"], ["a bad\nday. \n\nIt was boring", edited])[1] > task.reward(["x"], ["a bad\nday. \n\nIt was boring"])[0]
    assert task.local_edit("x", edited) == edited  # a fitting draft is left alone


def test_positive_review_reward_and_editor_punish_repetition(policy):
    from corll.tasks.positive_review import build

    task = build(policy)
    chant = "a wonderful wonderful wonderful wonderful wonderful wonderful film"
    prose = "a wonderful film with a warm and funny heart"
    r_chant, r_prose = task.reward(["x", "x"], [chant, prose])
    assert r_prose > r_chant
    assert task.local_edit("x", chant).split().count("wonderful") == 2
