"""Many users' LoRA adapters in one batch: each target layer keeps every loaded adapter's matrices
stacked, and a step's rows use theirs through two matrix products per layer, however many adapters.

peft computes a mixed-adapter batch adapter by adapter: for every distinct adapter in the batch and every
LoRA layer it selects that adapter's rows, runs its two small matrices and adds the result back, so the
work per step grows with the number of distinct adapters (six operations × adapters × 120 layers for
SmolLM2). Punica and S-LoRA compute all rows' adapters in one batched operation with custom kernels.
Here, with PyTorch's own: the u adapters a step uses are laid side by side (rank r each), every row is
multiplied by all of them at once, and a mask keeps each row's own r columns:

    low = (x · [A₁ … A_u]ᵀ) ⊙ mask        # [rows, u·r]: row i keeps only its adapter's block
    y   = W x + low · [B₁ … B_u]ᵀ           # the addition inside the product (addmm)

Two dense products of width u·r instead of a gather of each row's matrices and two batched products:
on SmolLM2's shapes (32 rows, r = 8, one bf16 thread) 2–4× cheaper per layer at 1 to 30 distinct
adapters. Fewer operations per step, since a step's cost here is mostly their number: q, k and v read
the same input, so their first products are one (`x · [A_q; A_k; A_v]ᵀ`, masked once); and the
side-by-side matrices are gathered once for a set of adapters and kept while the steps use that set (with
8 users' adapters among 32 rows, most steps do). Each layer keeps the last two sets (a step's running rows
and the newcomers prefilled beside them use different ones), at most twice the memory of the adapters in
use. Slot 0 is the base model: its rows get an all-zero mask, and a step of base-model rows only
skips the LoRA term entirely. An adapter's scale (α/r, or α/√r for rsLoRA) is folded into its B when it
is loaded, and a rank below the engine's maximum is padded with zeros, which add nothing.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn

PEFT_PREFIX = "base_model.model."
KEPT_SETS = 2  # sets of adapters whose side-by-side matrices each layer keeps


class AdapterError(ValueError):
    """An adapter this engine cannot serve (its rank, its layers), named with the reason."""


class StackedLoRA(nn.Module):
    """A frozen linear layer plus every loaded adapter's low-rank update, chosen per row."""

    def __init__(self, base: nn.Linear, slots: AdapterSlots, group: SharedInput, count: int, rank: int,
                 dtype: torch.dtype) -> None:
        super().__init__()
        self.base, self.slots, self.group = base, [slots], [group]  # lists: shared objects, not submodules
        device = base.weight.device
        self.register_buffer("A", torch.zeros(count, rank, base.in_features, dtype=dtype, device=device))
        self.register_buffer("Bt", torch.zeros(count, rank, base.out_features, dtype=dtype, device=device))  # Bᵀ
        self._bt: dict[tuple, torch.Tensor] = {}  # the used slots' Bᵀ side by side, per set of adapters
        self.place = group.join(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        plan = self.slots[0].plan
        if plan is None:
            return y
        low = self.group[0].low(self.place, x, plan)  # [rows, tokens, u·r], each row its own block
        bt = _kept(self._bt, plan.key, lambda: self.Bt[plan.used].flatten(0, 1))  # [u·r, out]
        # y is this call's own fresh output (in the slots' dtype, the model's): the product is added into it
        # in one operation, not two (8 users' adapters among 32 rows of SmolLM2 in bf16: x1.10 tokens/s)
        return y.view(-1, y.shape[-1]).addmm_(low.reshape(-1, low.shape[-1]), bt).view_as(y)


class SharedInput:
    """Sibling layers that read the same input (attention's q, k and v): their first LoRA products are one
    product, `x · [A_q; A_k; A_v]ᵀ`, masked once. A layer called with another input than its siblings' last
    one computes the group's product afresh, so the result is right for any model, and fastest where the
    siblings do share it (every Llama-style attention)."""

    def __init__(self) -> None:
        self.members: list[StackedLoRA] = []
        self._down: dict[tuple, torch.Tensor] = {}  # per set of adapters: the members' A side by side
        self._input: torch.Tensor | None = None  # the last call's input and plan: siblings reuse its product
        self._plan: Plan | None = None
        self._low: torch.Tensor | None = None

    def join(self, layer: StackedLoRA) -> int:
        self.members.append(layer)
        return len(self.members) - 1

    def low(self, place: int, x: torch.Tensor, plan: Plan) -> torch.Tensor:
        """Member `place`'s masked `x · Aᵀ` for this plan, computed for every member at the first call."""
        if x is not self._input or plan is not self._plan:
            a = _kept(self._down, plan.key, lambda: torch.cat([m.A[plan.used].flatten(0, 1)
                                                                for m in self.members]))  # [members·u·r, in]
            self._low = (x.to(a.dtype) @ a.T) * plan.tiled(len(self.members))[:, None, :]
            self._input, self._plan = x, plan
        width = plan.mask.shape[1]
        return self._low[..., place * width:(place + 1) * width]

    def release(self) -> None:
        """Forget the last input (the forward is over)."""
        self._input = self._plan = self._low = None


def _kept(cache: dict, key: tuple, make):
    """`cache[key]`, made if missing; the oldest entry goes beyond KEPT_SETS (one set of adapters for a step's
    running rows, another for the newcomers prefilled beside them)."""
    if key not in cache:
        if len(cache) >= KEPT_SETS:
            del cache[next(iter(cache))]
        cache[key] = make()
    return cache[key]


@dataclass(frozen=True)
class Plan:
    """A forward's adapters: the slots it uses, each row's mask over their ranks, and a key that changes
    whenever the slots used or their weights do."""

    used: torch.Tensor
    mask: torch.Tensor  # per row: this forward's rows, so never kept beyond it
    key: tuple
    _tiled: dict[int, torch.Tensor] = field(default_factory=dict, compare=False, repr=False)

    def tiled(self, times: int) -> torch.Tensor:
        """The mask repeated for `times` layers' products side by side (made once per forward)."""
        if times not in self._tiled:
            self._tiled[times] = self.mask.repeat(1, times)
        return self._tiled[times]


class AdapterSlots:
    """`count` adapter slots (slot 0, the base model, included) in every target layer of `model`."""

    def __init__(self, model: nn.Module, count: int, *, rank: int = 8,
                 targets: Sequence[str] = ("q_proj", "k_proj", "v_proj", "o_proj"),
                 shared: Sequence[str] = ("q_proj", "k_proj", "v_proj"),
                 dtype: torch.dtype = torch.float32) -> None:
        if count < 2:
            raise ValueError(f"adapter slots must leave room for one adapter beside the base model, not {count}")
        self.count, self.rank, self.targets = count, rank, tuple(targets)
        self.plan: Plan | None = None  # while a forward runs; None: every row on the base model
        self.loads = 0  # adapters loaded so far: part of a plan's key, so new weights are never missed
        self.layers: dict[str, StackedLoRA] = {}
        for parent_name, parent in list(model.named_modules()):
            siblings = SharedInput()  # this module's `shared` targets; every other target is a group alone
            for name, child in list(parent.named_children()):
                if name in self.targets and isinstance(child, nn.Linear):
                    path = f"{parent_name}.{name}" if parent_name else name
                    group = siblings if name in shared else SharedInput()
                    self.layers[path] = StackedLoRA(child, self, group, count, rank, dtype)
                    setattr(parent, name, self.layers[path])
        self.groups = list({id(layer.group[0]): layer.group[0] for layer in self.layers.values()}.values())
        if not self.layers:
            raise ValueError(f"the model has no linear layers named {', '.join(self.targets)}")

    @property
    def bytes_per_adapter(self) -> int:
        """Memory one slot takes across every layer."""
        return sum((layer.A[0].numel() + layer.Bt[0].numel()) * layer.A.element_size() for layer in self.layers.values())

    def load(self, slot: int, config, weights: dict[str, torch.Tensor]) -> None:
        """Copy a peft LoRA adapter (its config and saved weights) into `slot`; raises AdapterError for
        one this engine cannot serve, leaving the slot as it was."""
        if not 0 < slot < self.count:
            raise ValueError(f"slot {slot} is not one of 1..{self.count - 1}")
        rank = int(config.r)
        if rank > self.rank:
            raise AdapterError(f"the adapter's LoRA rank {rank} exceeds this engine's maximum {self.rank} "
                               "(--max-lora-rank)")
        scale = config.lora_alpha / (math.sqrt(rank) if getattr(config, "use_rslora", False) else rank)
        pairs: dict[str, dict[str, torch.Tensor]] = {}
        for key, tensor in weights.items():
            path, _, kind = key.removeprefix(PEFT_PREFIX).removesuffix(".weight").rpartition(".")
            if kind not in ("lora_A", "lora_B") or path not in self.layers:
                raise AdapterError(f"the adapter changes {key!r}, which this engine does not serve "
                                   f"(LoRA on {', '.join(self.targets)} only)")
            pairs.setdefault(path, {})[kind] = tensor
        self.loads += 1
        for path, layer in self.layers.items():
            a, b = pairs.get(path, {}).get("lora_A"), pairs.get(path, {}).get("lora_B")
            layer.A[slot].zero_()
            layer.Bt[slot].zero_()
            if a is not None and b is not None:
                layer.A[slot, :rank] = a
                layer.Bt[slot, :rank] = (b * scale).T

    @contextmanager
    def rows(self, slots: Sequence[int]) -> Iterator[None]:
        """Run the model's forward with row i through adapter `slots[i]` (0: the base model)."""
        first = next(iter(self.layers.values()))
        used = sorted({s for s in slots if s})
        if used:
            mask = torch.zeros(len(slots), len(used) * self.rank, dtype=first.A.dtype)
            for row, slot in enumerate(slots):
                if slot:
                    start = used.index(slot) * self.rank
                    mask[row, start:start + self.rank] = 1
            self.plan = Plan(torch.tensor(used, device=first.A.device), mask.to(first.A.device),
                             (tuple(used), self.loads))
        try:
            yield
        finally:
            self.plan = None
            for group in self.groups:
                group.release()
