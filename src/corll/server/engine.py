"""The model behind the server: one base model, one LoRA adapter per policy version, loaded on demand.

Each request is answered by the version the store says is active for its user
(their own adapter if `corll train --per-user` made one, else the tenant's shared
one, else the base model). A version trained while the server runs is picked up
at the next request: no restart. Generation holds a lock — one model, one
request at a time; run several server processes to serve more.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

import torch

from corll.policy import LoraSettings, Policy, SamplingConfig, load_policy
from corll.store import Store


@dataclass(frozen=True)
class Completion:
    text: str
    logprob: float
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    version_id: int | None
    sampling: dict


def load_adapter_weights(policy: Policy, adapter_dir: str | Path, name: str) -> None:
    """Load a saved adapter into the policy's model under `name` (not trainable)."""
    policy.model.load_adapter(str(adapter_dir), adapter_name=name, is_trainable=False)


class PolicyEngine:
    def __init__(self, model: str, store: Store, *, precision: str = "auto", seed: int = 0,
                 default_max_tokens: int = 128, max_tokens_limit: int = 1024) -> None:
        torch.manual_seed(seed)
        self.policy = load_policy(model, lora=LoraSettings(), sampling=SamplingConfig(), precision=precision, seed=seed)
        self.model_name = model
        self.store = store
        self.default_max_tokens = default_max_tokens
        self.max_tokens_limit = max_tokens_limit  # a request may ask for less, never for more
        self.lock = threading.Lock()
        self.loaded: set[str] = set()

    def _use_version(self, tenant: str, user: str) -> int | None:
        """Switch the model to the active version for this user; returns its id (None: base model)."""
        version = self.store.active_version(tenant, user)
        if version is None or version.adapter_path is None:
            self.policy.model.set_adapter("default")  # the fresh adapter: the base model exactly
            return None if version is None else version.id
        name = f"v{version.id}"
        if name not in self.loaded:
            load_adapter_weights(self.policy, version.adapter_path, name)
            self.loaded.add(name)
        self.policy.model.set_adapter(name)
        return version.id

    def complete(self, tenant: str, user: str, messages: list[dict], *, temperature: float | None,
                 top_p: float | None, max_tokens: int | None, seed: int | None = None) -> Completion:
        sampling = SamplingConfig(temperature=temperature if temperature is not None else 1.0,
                                  top_p=top_p if top_p is not None else 1.0,
                                  max_new_tokens=min(max_tokens or self.default_max_tokens, self.max_tokens_limit))
        with self.lock:
            version_id = self._use_version(tenant, user)
            previous, self.policy.sampling = self.policy.sampling, sampling
            try:
                with torch.random.fork_rng():
                    if seed is not None:
                        torch.manual_seed(seed)
                    texts, logps = self.policy.sample_scored([messages], 1)  # log π comes with the sample
                text, logprob = texts[0][0], float(logps[0, 0])
            finally:
                self.policy.sampling = previous
            prompt_tokens = len(self.policy.prompt_ids(messages))
            completion_tokens = len(self.policy.tokenizer(text, add_special_tokens=False)["input_ids"])
        finish = "length" if completion_tokens >= sampling.max_new_tokens else "stop"
        return Completion(text, logprob, finish, prompt_tokens, completion_tokens, version_id,
                          {"temperature": sampling.temperature, "top_k": sampling.top_k,
                           "max_new_tokens": sampling.max_new_tokens, "top_p": sampling.top_p, "seed": seed})
