"""Feedback records by hand: an edit's cost over words and punctuation, its pair, relative cost, TRL rows."""

from __future__ import annotations

from corll.feedback import Edit, PreferencePair, edit_costs, edit_tokens, relative_cost, word_edit_distance


def test_edit_cost_counts_changed_words_and_punctuation():
    assert edit_tokens("Don't stop, well-known!") == ["Don't", "stop", ",", "well-known", "!"]
    assert word_edit_distance("It was great.", "It was great!") == 1  # a punctuation fix is an edit
    assert word_edit_distance("a b c", "a x c d") == 2
    assert Edit(draft="a b", text="a c").changed() == 1
    assert Edit(draft="a b", text="a c", cost=7).changed() == 7  # the task's own measure wins
    assert edit_costs(["a b", "kept"], [Edit(draft="a b", text="b a"), None]) == [2, 0]
    assert relative_cost("one two three four", 2) == 0.5 and relative_cost("", 3) == 3.0


def test_an_edit_is_a_preference_for_the_kept_text_and_knows_when_it_is_wrong_way():
    better = Edit(draft="bad", text="good", draft_reward=0.1, edit_reward=0.9)
    worse = Edit(draft="bad", text="worse", draft_reward=0.5, edit_reward=0.2)
    assert better.to_pair("x") == PreferencePair("x", chosen="good", rejected="bad", mislabeled=False)
    assert worse.to_pair("x").mislabeled and not Edit(draft="a", text="b").mislabeled  # unknown rewards: not


def test_pairs_become_trl_rows_plain_or_conversational():
    assert PreferencePair("x", "c", "r").to_trl() == {"prompt": "x", "chosen": "c", "rejected": "r"}
    chat = [{"role": "user", "content": "hi"}]
    assert PreferencePair(chat, "c", "r").to_trl() == {
        "prompt": chat, "chosen": [{"role": "assistant", "content": "c"}],
        "rejected": [{"role": "assistant", "content": "r"}]}
