"""A user's edit habits: spans their edits insert or delete again and again, and the cost they predict."""

from corll.service.edit_habits import EditHabits, changed_spans


def test_changed_spans_are_the_diff_over_word_and_punctuation_tokens():
    assert changed_spans("Dear Sam, the plan works.\nBest regards,\nAna",
                         "Hi there, Dear Sam, the plan works.\nThank you!") == (
        {("Best", "regards", ",", "Ana")}, {("Hi", "there", ","), ("Thank", "you", "!")})
    assert changed_spans("same text", "same text") == (set(), set())


def test_a_habit_recurs_in_the_given_share_of_the_edits_and_predicts_the_cost_by_hand():
    pairs = [("Dear Sam, the plan works.\nBest regards,\nAna", "Hi there, Dear Sam, the plan works."),
             ("Dear Bo, we ship today.\nBest regards,\nAna", "Hi there, Dear Bo, we ship today."),
             ("The results are in.\nCheers", "Hi there, The results are in."),
             ("Hi there, all good.", "Hi there, all good.")]  # accepted: not an edit, no habits from it
    habits = EditHabits.learn(pairs, share=0.5)
    # "Hi there ," is in all 3 edits, "Best regards , Ana" in 2 of 3; "Cheers" in one only
    assert habits == EditHabits(deleted=(("Best", "regards", ",", "Ana"),), inserted=(("Hi", "there", ","),))
    assert EditHabits.learn(pairs, share=0.9).deleted == ()
    # a draft missing the greeting and keeping the signature: 3 tokens to add, 4 to delete
    assert habits.cost("Dear Kim, notes attached.\nBest regards,\nAna") == 3 + 4
    assert habits.cost("Hi there, notes attached.") == 0
    assert habits.cost("Hi there, notes attached.\nBest regards, Ana") == 4
    assert EditHabits.learn([]).cost("anything") == 0
