"""P[Love] on frozen MiniLM embeddings, trained on a simulated reaction log."""

import random

import pytest
import torch

from corll.classification import auroc
from corll.reward_model import (
    RewardModel,
    RewardModelConfig,
    RewardModelFileError,
    evaluate_reward_model,
    reward_features,
    reward_model_loss,
    train_reward_model,
)
from corll.tasks.reactions import assistant_requests

TOPICAL = "{x} Here is a clear, friendly answer with the steps you need."
OFF_TOPIC = "I would rather talk about the weather on Mars today."


@pytest.fixture(scope="module")
def log():
    """Requests answered on-topic or off-topic; users love on-topic answers rarely, off-topic ones almost never."""
    rng = random.Random(0)
    prompts, responses, labels, truth = [], [], [], []
    for x in assistant_requests() * 3:
        topical = rng.random() < 0.5
        prompts.append(x)
        responses.append(TOPICAL.format(x=x) if topical else OFF_TOPIC)
        truth.append(0.25 if topical else 0.01)
        labels.append(int(rng.random() < truth[-1]))
    return reward_features(prompts, responses, "embeddings"), labels, truth


def test_reward_model_learns_to_rank_reactions_and_stays_calibrated(log):
    features, labels, truth = log
    cut = 200
    model = train_reward_model(features[:cut], labels[:cut], RewardModelConfig(loss="weighted", features="embeddings"))
    report = evaluate_reward_model(model, features[cut:], labels[cut:])
    best = auroc(truth[cut:], labels[cut:])  # the true love probability: no model can rank better on average
    assert report["auroc"] > best - 0.06 and report["auroc"] > 0.7, (report["auroc"], best)
    assert abs(report["mean_prediction"] - report["base_rate"]) < 0.08, report  # prior correction keeps it honest


def test_weighting_changes_the_loss_by_the_class_ratio():
    logits, labels = torch.zeros(4), torch.tensor([1.0, 0.0, 0.0, 0.0])
    weighted = reward_model_loss(logits, labels, RewardModelConfig(loss="weighted")).item()
    plain = reward_model_loss(logits, labels, RewardModelConfig(loss="plain")).item()
    # log 2 per example; the positive counts 3 times: (3 + 3)/4 · log 2 vs (1 + 3)/4 · log 2
    assert weighted == pytest.approx(6 / 4 * 0.693147, abs=1e-5) and plain == pytest.approx(0.693147, abs=1e-5)


def test_save_load_round_trip_and_refusals(log, tmp_path):
    features, labels, _ = log
    model = train_reward_model(features[:120], labels[:120], RewardModelConfig(epochs=20, features="embeddings"))
    model.save(tmp_path / "rm.pt")
    again = RewardModel.load(tmp_path / "rm.pt")
    assert torch.allclose(again(features[:10]), model(features[:10]))
    saved = torch.load(tmp_path / "rm.pt", weights_only=True)
    saved["backbone"] = "some-other-encoder"
    torch.save(saved, tmp_path / "other.pt")
    with pytest.raises(RewardModelFileError, match="trained on some-other-encoder"):
        RewardModel.load(tmp_path / "other.pt")
    (tmp_path / "junk.pt").write_text("not a model")
    with pytest.raises(RewardModelFileError, match="not a corll reward model"):
        RewardModel.load(tmp_path / "junk.pt")
    with pytest.raises(ValueError, match="both reactions and silences"):
        train_reward_model(features[:5], [0] * 5, RewardModelConfig(features="embeddings"))
    with pytest.raises(ValueError, match="unknown reward-model loss 'hinge'"):
        RewardModelConfig(loss="hinge")


def test_feature_sets_and_a_text_model_round_trip(tmp_path):
    prompts, responses = ["How do I boil an egg?"] * 2, ["Boil it for nine minutes 😊. Hope this helps!", "No."]
    assert [reward_features(prompts, responses, kind).shape[1] for kind in ("text", "embeddings", "both")] == [
        5, 768, 773]
    text = reward_features(prompts, responses, "text")
    assert text[0, 3] == 1.0 and text[0, 4] == 1.0 and text[1, 3] == 0.0  # emoji and closing columns
    model = train_reward_model(text.repeat(4, 1), [1, 0] * 4, RewardModelConfig(epochs=50, features="text"))
    model.save(tmp_path / "rm.pt")
    again = RewardModel.load(tmp_path / "rm.pt")
    assert again.features == "text" and again.predict(prompts, responses) == pytest.approx(model.predict(prompts, responses))
    assert again.predict(prompts, responses)[0] > again.predict(prompts, responses)[1]


def test_a_linear_model_and_cross_validated_weight_decay(tmp_path):
    """hidden = 0 is logistic regression (monotone in its one feature); cross-validation prefers the decay that
    keeps a real signal over one that crushes every weight to zero (constant scores rank at chance)."""
    from corll.reward_model import cross_validated

    rng = random.Random(1)
    signal = [rng.gauss(0, 1) for _ in range(400)]
    labels = [int(rng.random() < 1 / (1 + 2.718 ** (-(3 * s - 3)))) for s in signal]
    features = torch.tensor([[s] + [rng.gauss(0, 1) for _ in range(3)] for s in signal])
    config = RewardModelConfig(features="text", hidden=0, epochs=200, lr=0.05)
    chosen = cross_validated(features[:, :1].repeat(1, 5), labels, config, weight_decays=(0.01, 1e4))
    assert chosen.weight_decay == 0.01
    model = train_reward_model(features[:, :1].repeat(1, 5), labels, chosen)
    assert isinstance(model.net, torch.nn.Linear)
    scores = model(torch.tensor([[-1.0] * 5, [0.0] * 5, [1.0] * 5])).tolist()
    assert scores[0] < scores[1] < scores[2]
    model.save(tmp_path / "rm.pt", details={"config": {"weight_decay": 0.01}})
    assert RewardModel.details(tmp_path / "rm.pt") == {"config": {"weight_decay": 0.01}}
    assert isinstance(RewardModel.load(tmp_path / "rm.pt").net, torch.nn.Linear)
    with pytest.raises(ValueError, match="at least 4 positives"):
        cross_validated(features, [1, 1, 1] + [0] * 397, config)
