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
"""

from __future__ import annotations

import os
import types
from collections.abc import Iterable

import torch
import torch.nn.functional as F

PACKABLE = (torch.float32, torch.bfloat16)


def available() -> bool:
    """oneDNN (mkldnn) is compiled into this torch and offers the prepacked linear kernels."""
    return (torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")
            and hasattr(torch.ops.mkldnn, "_linear_pointwise"))


def pack_weight(weight: torch.Tensor) -> torch.Tensor:
    """A frozen weight (out × in) reordered once into oneDNN's blocked layout, for `packed_linear`."""
    return torch.ops.mkldnn._reorder_linear_weight(weight.detach().contiguous())


def packed_linear(x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """`F.linear` by a weight `pack_weight` made; the input is cast to the weight's dtype, as bf16 autocast
    casts it for a bf16 weight."""
    return torch.ops.mkldnn._linear_pointwise(x.to(packed.dtype), packed, bias, "none", [], "")


def _packed_forward(self: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
    weight = self.weight
    if (torch.is_grad_enabled() or weight.requires_grad or weight.device.type != "cpu"
            or weight.dtype not in PACKABLE or x.dtype not in PACKABLE):
        return F.linear(x, weight, self.bias)
    version, packed = self._corll_packed
    if packed is None or version != weight._version:
        packed = pack_weight(weight)
        self._corll_packed = (weight._version, packed)
    return packed_linear(x, packed, self.bias)


def pack_frozen_linears(model: torch.nn.Module) -> int:
    """Route every frozen fp32 or bf16 `nn.Linear` of `model` through the prepacked kernel when no gradient
    is taken; returns how many layers now do. Weights are packed on first use, not here."""
    count = 0
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
