import pytest

import corll.tasks.prelude as prelude
from corll.tasks import TaskError, load_task
from corll.users.preferences import PREFERENCES, revise


def test_every_source_has_a_preference_and_a_shipped_corpus():
    assert set(prelude.SUMMARIZE_SOURCES) | set(prelude.EMAIL_SOURCES) == set(PREFERENCES)
    for source in PREFERENCES:
        assert len(prelude.load_documents(source)) >= 20


def test_sources_are_interleaved_and_the_reward_is_minus_the_edit_cost():
    task = load_task("prelude-email", None)
    heads = [p.split(":")[0] for p in task.train_prompts[:4]]
    assert heads == [f"Write an email based on these {label}" for label in prelude.EMAIL_SOURCES.values()]
    x = task.train_prompts[1]  # forum notes: informal greeting, no closing
    assert task.reward([x], ["Hey! Sounds good."]) == [0.0]
    # add "Hey" and "!", drop the closing "Best regards , Sam" (4 tokens)
    assert task.reward([x], ["Sounds good.\nBest regards,\nSam"]) == [-6.0]
    assert task.local_edit(x, "Sounds good.\nBest regards,\nSam") == "Hey! Sounds good."


def test_shift_gives_each_source_another_preference():
    plain, shifted = load_task("prelude-summarize", None), load_task("prelude-summarize-shift", None)
    x = plain.train_prompts[0]  # a news article
    text = "A park opened."
    assert plain.local_edit(x, text) == revise("news", text)
    assert shifted.local_edit(x, text) == revise("forum", text)


def test_a_missing_or_short_corpus_is_a_clear_error(monkeypatch, tmp_path):
    (tmp_path / "data" / "prelude").mkdir(parents=True)
    (tmp_path / "data" / "prelude" / "news.txt").write_text("one\ntwo\n")
    monkeypatch.setattr(prelude.resources, "files", lambda package: tmp_path)
    with pytest.raises(TaskError, match="has 2 documents; at least 20"):
        prelude.load_documents("news")
    with pytest.raises(TaskError, match="corpus file for source 'forum' is missing"):
        prelude.load_documents("forum")


def test_the_offline_log_of_the_shift_setting_comes_from_the_old_preferences():
    shifted = load_task("prelude-summarize-shift", None)
    x, text = shifted.train_prompts[0], "A park opened."  # a news article
    assert shifted.offline_edit(x, text) == revise("news", text) != shifted.local_edit(x, text)


def test_the_oracle_description_names_each_users_preference():
    from corll.users.preferences import DESCRIPTIONS

    assert set(DESCRIPTIONS) == set(PREFERENCES)
    task = load_task("prelude-email", None)
    x = task.train_prompts[1]  # forum notes: "Hey!", no closing
    assert "Hey!" in task.describe_user(x) and "no closing" in task.describe_user(x)


def test_the_long_summaries_hold_out_forty_documents_of_hundreds_of_words():
    task = load_task("prelude-summarize-long", None)
    assert task.name == "prelude-summarize-long"
    assert len(task.test_prompts) == 40 and len(task.train_prompts) == 60
    assert not set(task.test_prompts) & set(task.train_prompts)
    documents = [p.split("\n\n", 1)[1] for p in task.test_prompts + task.train_prompts]
    assert min(len(d.split()) for d in documents) >= 130 and len(set(documents)) == 100
    assert [task.source_of(x) for x in task.test_prompts[:5]] == list(prelude.SUMMARIZE_SOURCES)
    shifted = load_task("prelude-summarize-long-shift", None)
    x = shifted.train_prompts[0]  # a news article, whose online users now hold the forum preference
    assert shifted.local_edit(x, "A park opened.") == revise("forum", "A park opened.")
    assert shifted.offline_edit(x, "A park opened.") == revise("news", "A park opened.")
