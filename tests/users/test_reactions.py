import pytest
import torch

from corll.embeddings import relevance
from corll.users.reactions import ReactionPanel, ReactionUser, calibrate_bias, features

PROMPTS = ["How do I boil an egg?", "Suggest a name for a cat.", "What is the capital of France?"] * 4
GOOD = ["Put the egg in boiling water for nine minutes, then cool it. Enjoy!",
        "Try Mochi, a sweet and lovely name for a cat.", "Paris is the capital of France, a wonderful city."] * 4
BAD = ["No.", "I hate this question and your cat.", "Bananas are yellow and taste awful."] * 4


def test_relevance_ranks_on_topic_answers_above_off_topic_ones():
    on_topic = relevance(PROMPTS[:3], GOOD[:3])
    off_topic = relevance(PROMPTS[:3], BAD[:3])
    assert all(a > b for a, b in zip(on_topic, off_topic))
    with pytest.raises(ValueError, match="one prompt per response"):
        relevance(PROMPTS[:2], GOOD[:3])


def test_calibration_hits_the_base_rate_and_loves_follow_utility():
    user = ReactionUser(base_rate=0.05)
    panel = ReactionPanel([user], PROMPTS, GOOD[:6] + BAD[:6])
    loves_good = panel.love_probability(0, PROMPTS, GOOD)
    loves_bad = panel.love_probability(0, PROMPTS, BAD)
    mean_reference = (sum(loves_good[:6]) + sum(loves_bad[6:])) / 12
    assert mean_reference == pytest.approx(0.05, abs=1e-3)
    assert min(loves_good) > max(loves_bad)
    assert calibrate_bias([0.0], scale=1.0, base_rate=0.5) == pytest.approx(0.0, abs=1e-6)


def test_adversarial_users_invert_or_ignore_quality_and_draws_replay_from_a_seed():
    panel = ReactionPanel([ReactionUser(adversarial="inverted"), ReactionUser(adversarial="random", base_rate=0.1)],
                          PROMPTS * 2, GOOD + BAD)
    assert min(panel.love_probability(0, PROMPTS, BAD)) > max(panel.love_probability(0, PROMPTS, GOOD))
    assert panel.love_probability(1, PROMPTS, GOOD) == [0.1] * len(GOOD)
    torch.manual_seed(3)
    first = panel.react(0, PROMPTS * 5, BAD * 5)
    torch.manual_seed(3)
    assert panel.react(0, PROMPTS * 5, BAD * 5) == first
    with pytest.raises(ValueError, match="unknown adversarial mode 'sometimes'"):
        ReactionUser(adversarial="sometimes")
    with pytest.raises(ValueError, match="base_rate"):
        ReactionUser(base_rate=0.0)


def test_features_see_emoji_and_closings():
    [f] = features(["hi"], ["Sure thing 😊 hope this helps!"])
    assert f["emoji"] == 1.0 and f["closing"] == 1.0 and f["words"] == 6.0


def test_checklist_helpfulness_counts_rubric_items_in_the_answers_own_words():
    from corll.tasks.reactions import checklist_helpfulness, checklists, split_requests

    water = "Explain the water cycle briefly."
    scores = checklist_helpfulness([water] * 4, [
        "The sun heats water, which evaporates, condenses into clouds and falls as rain.",  # 5 items: capped at 1
        "Water evaporates and then condenses.",  # evaporat, condens: 2 of 3
        "The water cycle is a fascinating phenomenon. Hope this helps!",  # enthusiasm, no content
        "Explain the water cycle briefly."])  # restating the request earns nothing
    assert scores == [1.0, pytest.approx(2 / 3), 0.0, 0.0]
    # "grey" is in the request, so only the other colour words and the names can earn; "name" cannot
    kitten = "Suggest a name for a grey kitten."
    assert checklist_helpfulness([kitten] * 2, ["Grey kitten name: Grey.", "Smokey, or Silver."]) == [0.0, 1.0]
    # a short stem must be the whole word: "ice" is not "nice"
    egg = "How do I boil an egg so the yolk stays soft?"
    assert checklist_helpfulness([egg], ["Nice."]) == [0.0]
    train, test = split_requests()
    assert set(checklists()) == set(train) | set(test) and len(test) == 30
    with pytest.raises(ValueError, match="no helpfulness checklist"):
        checklist_helpfulness(["An unknown request"], ["an answer"])


def test_each_seed_logs_its_own_reactions_and_seed_zero_is_the_tasks_log(tmp_path, monkeypatch):
    """Independent logs for the reward-model seeds: another seed, another file and other draws; the same seed
    reads the cached file back instead of drawing again."""
    from types import SimpleNamespace

    from corll.tasks import reactions

    monkeypatch.setenv("CORLL_CACHE", str(tmp_path))
    answers = iter(range(10_000))
    policy = SimpleNamespace(source=("tiny", 0), sampling=SimpleNamespace(max_new_tokens=8),
                             sample=lambda prompts, k, use_reference: [[f"answer {next(answers)}"] * k for _ in prompts])
    react = lambda xs, ys: [torch.rand(()).item() < 0.5 for _ in ys]  # noqa: E731
    assert reactions.reaction_log_path(policy, 0).name.count("seed") == 0
    first = reactions.cached_reaction_log(policy, ["a", "b"], react, seed=0)
    other = reactions.cached_reaction_log(policy, ["a", "b"], react, seed=1)
    assert reactions.reaction_log_path(policy, 1) != reactions.reaction_log_path(policy, 0)
    assert first[1] != other[1]  # other answers (and draws)
    assert reactions.cached_reaction_log(policy, ["a", "b"], react, seed=0) == first  # read back, not redrawn
