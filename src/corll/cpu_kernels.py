"""oneDNN's prepacked matmul for the frozen linear layers of a CPU model, wherever no gradient is taken
(sampling, scoring, serving), in fp32 and in bf16.

Decoding multiplies a handful of rows by every weight matrix. For such few-row products the default
GEMM is slow on this project's CPUs: 8 rows reach about 13 GFLOP/s in fp32 on an AVX2 EPYC core. oneDNN,
with the weight reordered once into its blocked layout, runs the same product about 2× faster on one thread
and 4× faster on two (`benchmarks/levers.py` measures it inside a whole sampling call); on a native-bf16
CPU the bf16 product gains about 1.6× the same way (8 rows, one thread, AVX512-BF16). Only frozen weights
are packed (the base model under a LoRA adapter, the output head, a frozen reference copy); a forward
that needs gradients, or a weight that became trainable, takes the plain path, and a weight changed in place
is packed again (its version counter moved), so training and merged adapters see exact weights. A bf16
weight is what bf16 autocast multiplies by (frozen weights are stored in bf16 under it): its input is cast
to bf16 and the product is bf16, as autocast's own linear gives. The packed copy costs memory: one more
copy of every frozen weight.

Frozen sibling layers that read the same input (attention's q, k and v projections, the MLP's gate and up
projections, under one parent) share one packed weight, theirs side by side: the first sibling called
computes the product for all, and each returns its slice of it. Two products per layer instead of five, each
wider, run faster (SmolLM2's shapes, 32 rows, two threads, AVX512 Xeon: 0.69 against 0.87 ms a layer).
"""

from __future__ import annotations

import os
import types
from collections.abc import Iterable

import torch
import torch.nn.functional as F

PACKABLE = (torch.float32, torch.bfloat16)
SIBLINGS = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))  # Llama-style layers reading one input


def available() -> bool:
    """oneDNN (mkldnn) is compiled into this torch and offers the prepacked linear kernels."""
    return (torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")
            and hasattr(torch.ops.mkldnn, "_linear_pointwise"))


def _plain(layer: torch.nn.Linear, x: torch.Tensor) -> bool:
    """Whether this product must take the plain path: a gradient is taken, or the kernel cannot run it."""
    weight = layer.weight
    return (torch.is_grad_enabled() or weight.requires_grad or weight.device.type != "cpu"
            or weight.dtype not in PACKABLE or x.dtype not in PACKABLE)


def _packed_forward(self: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
    if _plain(self, x):
        return F.linear(x, self.weight, self.bias)
    x = x.to(self.weight.dtype)  # bf16 weights are multiplied under bf16 autocast, which casts the input too
    version, packed = self._corll_packed
    if packed is None or version != self.weight._version:
        packed = torch.ops.mkldnn._reorder_linear_weight(self.weight.detach())
        self._corll_packed = (self.weight._version, packed)
    return torch.ops.mkldnn._linear_pointwise(x, packed, self.bias, "none", [], "")


class _Siblings:
    """Frozen layers reading the same input, multiplied by their weights side by side in one packed product.

    A product serves its input only as long as that input is unchanged (the same tensor at the same version)
    and only once per member: a member called again, or with another input, starts a new product. It is
    dropped once every member has taken its slice, so no activation outlives its layer."""

    def __init__(self, members: list[torch.nn.Linear]) -> None:
        self.members = members
        ends = torch.tensor([m.out_features for m in members]).cumsum(0).tolist()
        self.slices = [slice(end - m.out_features, end) for m, end in zip(members, ends)]
        self._packed: tuple[tuple[int, ...] | None, torch.Tensor | None, torch.Tensor | None] = (None, None, None)
        self._input: tuple[torch.Tensor, int] | None = None
        self._output: torch.Tensor | None = None
        self._taken: set[int] = set()

    def output(self, place: int, x: torch.Tensor) -> torch.Tensor:
        """Member `place`'s output for `x`: its slice of the siblings' product."""
        versions = tuple(m.weight._version for m in self.members)
        if self._packed[0] != versions:
            weight = torch.cat([m.weight.detach() for m in self.members])
            bias = None if self.members[0].bias is None else torch.cat([m.bias.detach() for m in self.members])
            self._packed = (versions, torch.ops.mkldnn._reorder_linear_weight(weight), bias)
            self._input = None  # a product of the old weights serves no one
        if self._input is None or self._input[0] is not x or self._input[1] != x._version or place in self._taken:
            _, packed, bias = self._packed
            inputs = x.to(self.members[0].weight.dtype)
            self._input, self._taken = (x, x._version), set()
            self._output = torch.ops.mkldnn._linear_pointwise(inputs, packed, bias, "none", [], "")
        output = self._output[..., self.slices[place]]
        self._taken.add(place)
        if len(self._taken) == len(self.members):
            self._input = self._output = None
        return output


def _sibling_forward(self: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
    if _plain(self, x):
        return F.linear(x, self.weight, self.bias)
    siblings, place = self._corll_siblings
    return siblings.output(place, x)


def _siblings_of(parent: torch.nn.Module) -> list[list[torch.nn.Linear]]:
    """`parent`'s groups of frozen linear children named in SIBLINGS that can share one product (same input
    width, dtype and device, all with a bias or none)."""
    groups = []
    for names in SIBLINGS:
        members = [getattr(parent, name, None) for name in names]
        if all(type(m) is torch.nn.Linear and not m.weight.requires_grad and not hasattr(m, "_corll_packed")
               for m in members) and len({(m.in_features, m.weight.dtype, m.weight.device, m.bias is None)
                                          for m in members}) == 1:
            groups.append(members)
    return groups


def pack_frozen_linears(model: torch.nn.Module) -> int:
    """Route every frozen fp32 or bf16 `nn.Linear` of `model` through the prepacked kernel when no gradient
    is taken, siblings reading one input through one product; returns how many layers now do. Weights are
    packed on first use, not here."""
    count = 0
    for parent in model.modules():
        for members in _siblings_of(parent):
            siblings = _Siblings(members)
            for place, member in enumerate(members):
                member._corll_packed = None  # packed as a sibling
                member._corll_siblings = (siblings, place)
                member.forward = types.MethodType(_sibling_forward, member)
                count += 1
    for module in model.modules():
        if type(module) is torch.nn.Linear and not module.weight.requires_grad and not hasattr(module, "_corll_packed"):
            module._corll_packed = (None, None)
            module.forward = types.MethodType(_packed_forward, module)
            count += 1
    return count


def fast_inference(models: Iterable[torch.nn.Module]) -> None:
    """On a CPU, the frozen weights of these models run through the prepacked kernels whenever no gradient
    is taken. Set CORLL_PACKED_KERNELS=0 to compare or to save the memory."""
    if available() and os.environ.get("CORLL_PACKED_KERNELS", "1") != "0":
        for model in models:
            if next(model.parameters()).device.type == "cpu":
                pack_frozen_linears(model)
