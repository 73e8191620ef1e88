"""Token batches of prompts and responses, and their log-probabilities under a model: what sampling,
scoring and training pass to the model, padded the one way they all share (prompts on the left)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from corll.kv_rows import RowsCache


@dataclass
class EncodedBatch:
    """Prompt+response token ids with masks; `response_mask` marks the response tokens."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    response_mask: torch.Tensor

    def to(self, device: torch.device | str) -> EncodedBatch:
        return _batch_to(self, device)


@dataclass
class SharedPromptBatch:
    """Responses that continue a few distinct prompts: each prompt is encoded once (left-padded
    rows of `prompt_ids`) and row i of the right-padded `response_ids` continues prompt
    `row_prompt[i]`. k samples of one prompt, or a preference pair's chosen and rejected
    response, then pay for their shared prompt once instead of k or 2 times."""

    prompt_ids: torch.Tensor
    prompt_mask: torch.Tensor
    response_ids: torch.Tensor
    response_mask: torch.Tensor
    row_prompt: torch.Tensor

    @property
    def tokens(self) -> int:
        """Token positions the forward pass computes (the work, for FLOP counts)."""
        return int(self.prompt_mask.sum() + self.response_mask.sum())

    def to(self, device: torch.device | str) -> SharedPromptBatch:
        return _batch_to(self, device)


def _batch_to(batch, device: torch.device | str):
    """The same batch with every tensor on `device` (the very same tensors where they are there already)."""
    return dataclasses.replace(batch, **{f.name: getattr(batch, f.name).to(device) for f in dataclasses.fields(batch)})


def left_pad(rows: Sequence[Sequence[int]], pad: int, device: torch.device | str | None = None
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """Token rows padded on the left to one width, and their attention mask: prompts end where the
    response (or the next sampled token) begins, in every row at the same position."""
    width = max(len(r) for r in rows)
    ids = torch.tensor([[pad] * (width - len(r)) + list(r) for r in rows], dtype=torch.long, device=device)
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], dtype=torch.long, device=device)
    return ids, mask


def encode_responses(
    tokenizer, prompt_ids: Sequence[Sequence[int]], responses: Sequence[str], padding_side: str = "left"
) -> EncodedBatch:
    """Concatenate each prompt's ids with its response's ids and pad the batch.

    The response is tokenized on its own without special tokens: the prompt ids
    already end with the chat template's assistant header, so no BOS or EOS is doubled.
    """
    response_ids = [tokenizer(r, add_special_tokens=False)["input_ids"] for r in responses]
    rows = [list(p) + list(r) for p, r in zip(prompt_ids, response_ids)]
    width = max(len(row) for row in rows)
    pad = tokenizer.pad_token_id
    input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    response_mask = torch.zeros((len(rows), width), dtype=torch.bool)
    for i, (p, row) in enumerate(zip(prompt_ids, rows)):
        start = width - len(row) if padding_side == "left" else 0
        input_ids[i, start : start + len(row)] = torch.tensor(row, dtype=torch.long)
        attention_mask[i, start : start + len(row)] = 1
        response_mask[i, start + len(p) : start + len(row)] = True
    return EncodedBatch(input_ids, attention_mask, response_mask)


def encode_shared(tokenizer, prompt_ids: Sequence[Sequence[int]], responses: Sequence[str],
                  ends: Sequence[bool] | None = None) -> SharedPromptBatch:
    """Group rows by prompt: each distinct prompt once, each response tokenized on its own. A response
    marked in `ends` is a whole text and is followed by the end-of-text token, so its log-probability
    includes stopping there (a draft cut at the token limit is a prefix and has none)."""
    index: dict[tuple[int, ...], int] = {}
    row_prompt = [index.setdefault(tuple(p), len(index)) for p in prompt_ids]
    prompts = list(index)
    ends = ends or [False] * len(responses)
    response_ids = [tokenizer(r, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id] * end
                    for r, end in zip(responses, ends)]
    pad = tokenizer.pad_token_id
    length = max(1, max(len(r) for r in response_ids))
    p_ids, p_mask = left_pad(prompts, pad)
    r_ids = torch.tensor([r + [pad] * (length - len(r)) for r in response_ids], dtype=torch.long)
    r_mask = torch.tensor([[1] * len(r) + [0] * (length - len(r)) for r in response_ids], dtype=torch.long)
    return SharedPromptBatch(p_ids, p_mask, r_ids, r_mask, torch.tensor(row_prompt, dtype=torch.long))


def shared_prompt_logprobs(model: nn.Module, batch: SharedPromptBatch) -> torch.Tensor:
    """log π(y|x) per row, each distinct prompt run through the model once.

    The prompts' forward leaves a KV cache that is gathered row by row (differentiably, so a
    training step backpropagates into the prompt too) and continued by the responses. The
    first response token is scored by the prompt's last logits, the rest by the responses'
    own; the log-softmax is taken only at the targets (logit − logsumexp).
    """
    prompt_positions = (batch.prompt_mask.cumsum(-1) - 1).clamp(min=0)
    prompt_out = model(input_ids=batch.prompt_ids, attention_mask=batch.prompt_mask, position_ids=prompt_positions,
                       use_cache=True, logits_to_keep=1)
    cache = prompt_out.cache
    cache.reorder_cache(batch.row_prompt)
    prompt_lengths = batch.prompt_mask.sum(-1)[batch.row_prompt]
    length = batch.response_ids.shape[1]
    positions = prompt_lengths[:, None] + torch.arange(length, device=prompt_lengths.device)[None, :]
    mask = torch.cat([batch.prompt_mask[batch.row_prompt], batch.response_mask], dim=1)
    logits = model(input_ids=batch.response_ids, attention_mask=mask, position_ids=positions,
                   cache=cache, use_cache=True, logits_to_keep=length).logits
    logits = torch.cat([prompt_out.logits[batch.row_prompt, -1:], logits[:, :-1]], dim=1).float()
    token_logps = -nn.functional.cross_entropy(logits.flatten(0, 1), batch.response_ids.flatten(), reduction="none")
    return (token_logps.view_as(batch.response_ids) * batch.response_mask).sum(-1)


def sequence_logprobs(model: nn.Module, batch: EncodedBatch | SharedPromptBatch) -> torch.Tensor:
    """log π(y|x): the sum of the response tokens' log-probabilities, one value per row.

    Position ids follow the attention mask, so left and right padding give the same
    values. Logits are computed only from the first response position on
    (`logits_to_keep`), and the log-softmax only at the gathered targets
    (logit − logsumexp), instead of over the whole vocabulary at every position.
    """
    if isinstance(batch, SharedPromptBatch):
        return shared_prompt_logprobs(model, batch)
    position_ids = (batch.attention_mask.cumsum(-1) - 1).clamp(min=0)
    width = batch.input_ids.shape[1]
    has_response = batch.response_mask.any(dim=0).nonzero()
    first = int(has_response[0]) if len(has_response) else width - 1
    logits = model(
        input_ids=batch.input_ids, attention_mask=batch.attention_mask, position_ids=position_ids,
        logits_to_keep=width - first + 1,
    ).logits[:, :-1].float()
    targets = batch.input_ids[:, first:]
    token_logps = -nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="none")
    token_logps = token_logps.view_as(targets)
    return (token_logps * batch.response_mask[:, first:]).sum(-1)


def prefill_cache(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, copies: int):
    """The KV cache of left-padded prompts, each row repeated `copies` times for sampling; decoding then
    writes each token's keys into room after the prompt's instead of copying the cache (`kv_rows`)."""
    positions = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    cache = RowsCache()
    model(input_ids=input_ids, attention_mask=attention_mask, position_ids=positions, cache=cache, use_cache=True,
          logits_to_keep=1)
    cache.batch_repeat_interleave(copies)
    return cache
