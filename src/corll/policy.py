"""The policy: a causal LM with a trainable LoRA adapter (or full weights) and its reference π_0.

Everything the learners need from a language model goes through `Policy`:
`sample` (k responses per prompt), `sequence_logprobs` (log π(y|x) summed over
response tokens only) and `implicit_reward` (β·(log π − log π_0)). The reference
policy is the same weights with the adapter switched off whenever that is exact
(a fresh adapter), a frozen copy of the starting adapter when training starts
from one, and a frozen copy of the model only for full fine-tuning.
"""

from __future__ import annotations

import contextlib
import copy
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from corll.batches import (SharedPromptBatch, encode_shared, left_pad, prefill_cache,
                           sequence_logprobs)
from corll.cpu_kernels import fast_inference
from corll.feedback import Prompt
from corll.hardware import choose_precision, compute_device
from corll.memo import Memo
from corll.models import TINY, chat_prompt_ids, load_tokenizer, model_dir, tiny_model

REFERENCE_ADAPTER = "reference"
COMPUTE_PRECISIONS = ("fp32", "bf16")  # what a loaded policy computes in ("auto" resolves to one)
REFERENCE_CACHE_SIZE = 200_000
GREEDY_BELOW = 0.01

@dataclass
class SamplingConfig:
    """How responses are drawn. Paper defaults (the coactive-learning paper, §4.1): temperature 1, top-k 50."""

    temperature: float = 1.0
    top_k: int = 50
    max_new_tokens: int = 48
    top_p: float = 1.0

    def generate_kwargs(self) -> dict:
        """`generate` settings. A temperature below 0.01 means greedy decoding (OpenAI's temperature 0):
        dividing logits by a near-zero temperature overflows to inf."""
        if self.temperature < GREEDY_BELOW:
            return {"do_sample": False, "temperature": None, "top_k": None, "top_p": None}
        return {"do_sample": True, "temperature": self.temperature, "top_k": self.top_k, "top_p": self.top_p}


@dataclass
class LoraSettings:
    """LoRA on the attention projections. The paper's 7B runs use r=8, α=64, dropout 0.1;
    we keep r=8 but α=16 and no dropout so that scores used for the argmax are
    deterministic and learning rates around 1e-4–1e-3 move a 135M model stably."""

    r: int = 8
    alpha: int = 16
    dropout: float = 0.0
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")


def store_frozen_linears_in_bf16(model: nn.Module) -> None:
    """Keep frozen linear weights in bf16, the dtype autocast would cast them to anyway.

    Under bf16 autocast every matmul first casts its fp32 weight to bf16, on every
    forward and every decoding step; frozen weights never change, so casting them once
    gives the same products without the copies. Trainable weights (LoRA, or all of them
    under full fine-tuning) stay fp32. A frozen head tied to the input embedding gets its own
    bf16 copy (the embedding's lookups are not autocast and keep fp32): otherwise autocast
    re-casts SmolLM2's 28 M head weights at every decoding step, 40 ms of a 32-row step on a
    native-bf16 CPU, for 57 MB more memory. The weights left in fp32 are copied out of the
    memory-mapped checkpoint, so the mapping (and the fp32 pages of the weights now
    held in bf16) is released: 0.4 GiB less resident memory for SmolLM2.
    """
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    for module in model.modules():
        if isinstance(module, nn.Linear) and not module.weight.requires_grad:
            if id(module.weight) in embeddings:  # tied: untie into a bf16 copy of the same values
                module.weight = nn.Parameter(module.weight.detach().to(torch.bfloat16), requires_grad=False)
            else:
                module.weight.data = module.weight.data.to(torch.bfloat16)
            if module.bias is not None and not module.bias.requires_grad:
                module.bias.data = module.bias.data.to(torch.bfloat16)
    for tensor in [*model.parameters(), *model.buffers()]:
        if tensor.dtype == torch.float32:
            tensor.data = tensor.data.clone()


def prompt_key(prompt: Prompt) -> str:
    """A hashable key for a prompt (a chat's messages are serialised)."""
    return prompt if isinstance(prompt, str) else json.dumps([dict(m) for m in prompt], sort_keys=True)


class TokenLogprobs:
    """A logits processor that records log π of each sampled token from the logits generate
    computes anyway. HF applies custom processors before temperature and top-k, so these are
    the policy's own probabilities. It keeps one step's log-softmax until the next call shows
    which token was drawn."""

    def __init__(self) -> None:
        self.previous: torch.Tensor | None = None
        self.steps: list[torch.Tensor] = []

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if self.previous is not None:
            self.steps.append(self.previous.gather(1, input_ids[:, -1:]).squeeze(1))
        self.previous = torch.log_softmax(scores.float(), -1)
        return scores

    def totals(self, tokens: torch.Tensor, eos: int) -> torch.Tensor:
        """Per row, the sum over the sampled tokens before EOS (`tokens`: -1 from EOS on)."""
        if self.previous is not None and len(self.steps) < tokens.shape[1]:
            self.steps.append(self.previous.gather(1, tokens[:, -1:].clamp(min=0)).squeeze(1))
        values = torch.stack(self.steps, 1) if self.steps else torch.zeros(tokens.shape[0], 0, device=tokens.device)
        return (values * (tokens >= 0)).sum(1)


class Policy:
    """A causal LM being trained (`model`) together with its reference policy π_0."""

    def __init__(self, model: nn.Module, tokenizer, *, reference_model: nn.Module | None = None,
                 sampling: SamplingConfig | None = None, precision: str = "fp32",
                 score_batch_size: int = 16, source: tuple[str, int] | None = None) -> None:
        if precision not in COMPUTE_PRECISIONS:
            raise ValueError(f"unknown precision {precision!r}: use one of {', '.join(COMPUTE_PRECISIONS)}")
        self.model = model
        self.tokenizer = tokenizer
        # (model name, seed) it was loaded with, so companion models (a task's expert) can share its base
        self.source = source
        self.sampling = sampling or SamplingConfig()
        self.precision = precision
        # π_0 never changes, so log π_0(y|x) is computed once per (x, y): the argmax, the
        # simulated user's reward and the DPO step all ask for the same values.
        self._reference_cache = Memo(REFERENCE_CACHE_SIZE)
        self._reference_model = reference_model
        self.score_batch_size = score_batch_size
        if precision == "bf16":
            for module in (model, reference_model):
                if module is not None:
                    store_frozen_linears_in_bf16(module)

    # --- prompts -------------------------------------------------------------------------
    def prompt_ids(self, prompt: Prompt, system: str | None = None) -> list[int]:
        """The chat-templated prompt, ending with the assistant header, as token ids. A prompt is a
        user message, or a whole chat (a list of {role, content} messages, as the server receives)."""
        messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
        return chat_prompt_ids(self.tokenizer, messages, system)

    # --- reference -----------------------------------------------------------------------
    @contextlib.contextmanager
    def reference(self) -> Iterator[nn.Module]:
        """Yield the module that computes π_0: the adapter disabled, the frozen starting
        adapter, or a frozen model copy (full fine-tuning)."""
        if self._reference_model is not None:
            yield self._reference_model
        elif REFERENCE_ADAPTER in getattr(self.model, "peft_config", {}):
            active = self.model.active_adapter
            self.model.set_adapter(REFERENCE_ADAPTER)
            try:
                yield self.model
            finally:
                self.model.set_adapter(active)
                self._mark_trainable(active)
        else:
            with self.model.disable_adapter():
                yield self.model

    def share_reference(self, other: Policy) -> bool:
        """Use `other`'s cache of log π_0 values if both π_0 are the same base model, weight for weight (a
        task's expert and the learner it judges ask for the same drafts' and edits' values). Returns
        whether they now share it."""
        mine, theirs = self._base_weights(), other._base_weights()
        if (self.precision != other.precision or mine is None or theirs is None or mine.keys() != theirs.keys()
                or not all(torch.equal(mine[name], theirs[name]) for name in mine)):
            return False
        self._reference_cache = other._reference_cache
        return True

    def _base_weights(self) -> dict[str, torch.Tensor] | None:
        """The base model's weights by name when π_0 is the base model (LoRA with no starting adapter)."""
        if self._reference_model is not None or REFERENCE_ADAPTER in getattr(self.model, "peft_config", {}) \
                or not hasattr(self.model, "disable_adapter"):
            return None
        return {name.replace(".base_layer", ""): p for name, p in self.model.named_parameters() if "lora_" not in name}

    def _mark_trainable(self, adapter: str) -> None:
        """`set_adapter` re-enables gradients on the active adapter; keep the reference frozen."""
        for name, param in self.model.named_parameters():
            if "lora_" in name:
                param.requires_grad = f".{adapter}." in name

    @property
    def device(self) -> torch.device:
        """Where the model computes (the CPU, or a GPU); every tensor handed to it is made there."""
        return next(self.model.parameters()).device

    def autocast(self) -> contextlib.AbstractContextManager:
        """bf16 autocast (weights and gradients stay fp32) when precision is 'bf16'."""
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16")

    @contextlib.contextmanager
    def training_attention(self) -> Iterator[None]:
        """Eager attention for a block with gradients, on a CPU. There the fused SDPA kernel samples
        fastest, but its backward makes a DPO step on SmolLM2 ~1.3x slower than eager attention
        (docs/performance.md); both compute the same function. A GPU keeps its fused kernels."""
        if self.device.type != "cpu":
            yield
            return
        base = self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model
        previous = base.config._attn_implementation
        base.set_attn_implementation("eager")
        try:
            yield
        finally:
            base.set_attn_implementation(previous)

    # --- sampling ------------------------------------------------------------------------
    def sample(self, prompts: Sequence[Prompt], k: int, *, system: str | None = None,
               use_reference: bool = False) -> list[list[str]]:
        """k sampled responses per prompt (settings in `self.sampling`), in one batched
        `generate` call with a KV cache; `use_reference` samples from π_0 instead."""
        return self._generate(prompts, k, system, use_reference, None)[0]

    def sample_scored(self, prompts: Sequence[Prompt], k: int) -> tuple[list[list[str]], torch.Tensor]:
        """k responses per prompt and log π(y|x) of each ([prompts, k]), read off the logits that
        `generate` computes while sampling instead of a second forward pass. A response whose
        text does not re-tokenize to the sampled tokens is scored by a forward pass, so the
        values always equal `logprobs(x, y)` up to floating-point rounding.

        Only in fp32, though: in bf16 the cached decode and a full forward pass round differently
        (0.06–0.08 nats per 32-token response on SmolLM2), and log π_0 always comes from a forward
        pass, so a fresh adapter's implicit reward β·(log π − log π_0) would be rounding noise that
        the argmax follows and the KL estimate reports. There every value is a forward pass."""
        if self.precision != "fp32":
            texts = self.sample(prompts, k)
            flat = [y for ys in texts for y in ys]
            logps = self.logprobs([x for x in prompts for _ in range(k)], flat)
            return texts, logps.view(len(prompts), k)
        recorder = TokenLogprobs()
        texts, tokens = self._generate(prompts, k, None, False, recorder)
        logps = recorder.totals(tokens, self.tokenizer.eos_token_id)
        flat = [y for ys in texts for y in ys]
        redo = [i for i, (y, row) in enumerate(zip(flat, tokens.tolist()))
                if self.tokenizer(y, add_special_tokens=False)["input_ids"] != row[: len(row) - row.count(-1)]]
        if redo:
            xs = [prompts[i // k] for i in redo]
            logps[redo] = self.logprobs(xs, [flat[i] for i in redo])
        return texts, logps.view(len(prompts), k)

    @torch.no_grad()
    def _generate(self, prompts: Sequence[Prompt], k: int, system: str | None, use_reference: bool,
                  recorder: TokenLogprobs | None) -> tuple[list[list[str]], torch.Tensor]:
        """Texts, and the sampled token ids per row with everything from EOS on set to -1."""
        sampling = self.sampling
        prompt_ids = [self.prompt_ids(p, system) for p in prompts]
        input_ids, attention_mask = left_pad(prompt_ids, self.tokenizer.pad_token_id, self.device)
        width = input_ids.shape[1]
        context = self.reference() if use_reference else contextlib.nullcontext(self.model)
        with context as model, self.autocast():
            was_training = model.training
            model.eval()
            # HF's num_return_sequences copies each prompt k times before the prefill; encode each
            # prompt once instead (all but its last token) and hand generate a cache copied per sample.
            cache = prefill_cache(model, input_ids[:, :-1], attention_mask[:, :-1], k) if width > 1 else None
            out = model.generate(
                input_ids=input_ids.repeat_interleave(k, 0), attention_mask=attention_mask.repeat_interleave(k, 0),
                cache=cache, max_new_tokens=sampling.max_new_tokens, pad_token_id=self.tokenizer.pad_token_id,
                eos_token_id=self.tokenizer.eos_token_id, logits_processor=[recorder] if recorder else None,
                **sampling.generate_kwargs(),
            )
            model.train(was_training)
        texts = self.tokenizer.batch_decode(out[:, width:], skip_special_tokens=True)
        tokens = out[:, width:].clone()
        ended = (tokens == self.tokenizer.eos_token_id).cumsum(1) > 0
        tokens[ended] = -1
        return [texts[i * k : (i + 1) * k] for i in range(len(prompts))], tokens

    # --- scoring -------------------------------------------------------------------------
    def encode(self, prompts: Sequence[Prompt], responses: Sequence[str],
               ends: Sequence[bool] | None = None) -> SharedPromptBatch:
        """Prompts and responses for `sequence_logprobs`, each distinct prompt encoded once; a response
        marked in `ends` is scored as a whole text (with its end-of-text token). On the model's device."""
        return encode_shared(self.tokenizer, [self.prompt_ids(p) for p in prompts], responses, ends).to(self.device)

    def logprobs(self, prompts: Sequence[Prompt], responses: Sequence[str], *, reference: bool = False,
                 ends: Sequence[bool] | None = None) -> torch.Tensor:
        """log π(y|x) (or log π_0(y|x), cached) without gradients, in micro-batches; with `ends`, the marked
        responses as whole texts (see `encode`)."""
        ends = list(ends) if ends is not None else [False] * len(responses)
        if not reference:
            return self._score(self.model, prompts, responses, ends)
        def compute(todo: list[int]) -> list[float]:
            with self.reference() as model:
                return self._score(model, [prompts[i] for i in todo], [responses[i] for i in todo],
                                   [ends[i] for i in todo]).tolist()

        keys = [(prompt_key(x), y, end) for x, y, end in zip(prompts, responses, ends)]
        return torch.tensor(self._reference_cache.get(keys, compute), device=self.device)

    def _score(self, model: nn.Module, prompts: Sequence[Prompt], responses: Sequence[str],
               ends: Sequence[bool]) -> torch.Tensor:
        values = []
        size = self.score_batch_size
        with torch.no_grad(), self.autocast():
            was_training = model.training
            model.eval()
            for i in range(0, len(prompts), size):
                batch = self.encode(prompts[i : i + size], responses[i : i + size], ends[i : i + size])
                values.append(sequence_logprobs(model, batch))
            model.train(was_training)
        return torch.cat(values)

    def implicit_reward(self, prompts: Sequence[Prompt], responses: Sequence[str], beta: float) -> torch.Tensor:
        """R_π(x, y) = β·(log π(y|x) − log π_0(y|x)) — CoRLL's score for the argmax."""
        return beta * (self.logprobs(prompts, responses) - self.logprobs(prompts, responses, reference=True))

    # --- parameters ----------------------------------------------------------------------
    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """The trained weights only (the adapter, or every weight under full fine-tuning)."""
        return {n: p.detach().clone() for n, p in self.model.named_parameters() if p.requires_grad}

    def load_trainable_state(self, state: dict[str, torch.Tensor]) -> None:
        params = dict(self.model.named_parameters())
        missing = set(state) ^ {n for n, p in params.items() if p.requires_grad}
        if missing:
            raise ValueError(f"checkpoint does not match the policy's trainable weights: {sorted(missing)[:3]}")
        with torch.no_grad():
            for name, value in state.items():
                params[name].copy_(value)


def load_policy(name: str, *, lora: LoraSettings | None = LoraSettings(), init_adapter: str | Path | None = None,
                sampling: SamplingConfig | None = None, precision: str = "auto", cache_dir: Path | None = None,
                seed: int = 0, device: str | None = None) -> Policy:
    """Load a policy by name: 'smollm2-135m-instruct', 'tiny', or a local model directory.

    `precision` is fp32, bf16, or auto: bf16 where the hardware computes it natively, else fp32.
    `device` is where it computes: by default this process's GPU where CUDA is available, else the CPU.
    `lora=None` means full fine-tuning (the reference is then a frozen copy). With
    `init_adapter`, training starts from that adapter and π_0 is a frozen copy of it.
    """
    precision = choose_precision(precision).precision
    model, tokenizer = _load_base(name, cache_dir, seed, device)

    if lora is None:
        if init_adapter is not None:
            raise ValueError("init_adapter needs LoRA training; it cannot be combined with full fine-tuning")
        reference = copy.deepcopy(model).eval().requires_grad_(False)
        policy = Policy(model, tokenizer, reference_model=reference, sampling=sampling, precision=precision,
                        source=(name, seed))
        fast_inference([model, reference])
        return policy

    from peft import LoraConfig, PeftModel, get_peft_model

    if init_adapter is not None:
        model = PeftModel.from_pretrained(model, str(init_adapter), adapter_name="default", is_trainable=True)
        model.load_adapter(str(init_adapter), adapter_name=REFERENCE_ADAPTER, is_trainable=False)
        model.set_adapter("default")
    else:
        config = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                            target_modules=list(lora.target_modules), task_type="CAUSAL_LM")
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            model = get_peft_model(model, config)
    policy = Policy(model, tokenizer, sampling=sampling, precision=precision, source=(name, seed))
    policy._mark_trainable("default")
    fast_inference([model])
    return policy


def load_frozen(name: str, *, precision: str = "auto", cache_dir: Path | None = None, seed: int = 0,
                device: str | None = None) -> Policy:
    """The model alone, frozen, for serving: no adapter and no reference copy (a serving engine applies
    users' adapters its own way, `server/lora_batch.py`)."""
    precision = choose_precision(precision).precision
    model, tokenizer = _load_base(name, cache_dir, seed, device)
    model.eval().requires_grad_(False)
    policy = Policy(model, tokenizer, precision=precision, source=(name, seed))
    if precision == "bf16":
        # Nothing here is trained, so everything computes in bf16, as served models commonly do. Under autocast
        # alone the residual stream, the rotary products and so the KV cache stay fp32: every projection
        # re-casts its input and attention re-casts the whole cache at every decoding step, which made a 32-row
        # step of SmolLM2 on a native-bf16 CPU slower than fp32 (77 against 62 ms); in bf16 throughout it takes
        # 41 ms against fp32's 57 (two threads), and the cache takes half the memory. A head tied to the
        # embedding is tied again: the copy autocast needed (see store_frozen_linears_in_bf16) would now hold
        # the same bf16 values twice.
        model.to(torch.bfloat16)
        if getattr(model.config, "tie_word_embeddings", False):
            model.get_output_embeddings().weight = model.get_input_embeddings().weight
    fast_inference([model])
    return policy


def _load_base(name: str, cache_dir: Path | None, seed: int, device: str | None):
    """The base model (fp32, on its device) and its tokenizer, with a pad token and a chat template."""
    from transformers import AutoModelForCausalLM

    tokenizer = load_tokenizer(name, cache_dir)
    if name == TINY:
        model = tiny_model(tokenizer, seed)
    else:
        # No Hub kernels: transformers would fetch them from the Hub on a GPU the first time the model runs,
        # and corll runs offline; the model's own PyTorch layers compute the same function.
        model = AutoModelForCausalLM.from_pretrained(model_dir(name, cache_dir), dtype=torch.float32,
                                                     use_kernels=False)
    model.to(device or compute_device())  # before LoRA and the reference copy: both are made beside it
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer
