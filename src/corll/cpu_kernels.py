"""oneDNN's prepacked fp32 matmul for the frozen linear layers of a CPU model, wherever no gradient is taken
(sampling, scoring, serving).

Decoding multiplies a handful of rows by every weight matrix. For such few-row products the default fp32
GEMM (MKL) is slow on this project's CPUs: 8 rows reach about 13 GFLOP/s on an AVX2 EPYC core. oneDNN,
with the weight reordered once into its blocked layout, runs the same product about 2× faster on one thread
and 4× faster on two (`benchmarks/levers.py` measures it inside a whole sampling call). Only frozen weights
are packed (the base model under a LoRA adapter, the tied output head, a frozen reference copy); a forward
that needs gradients, or a weight that became trainable, takes the plain path, and a weight changed in place
is packed again (its version counter moved), so training and merged adapters see exact weights. The packed
copy costs memory: one more copy of every frozen weight.
"""

from __future__ import annotations

import os
import types
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from corll.policy import Policy


def available() -> bool:
    """oneDNN (mkldnn) is compiled into this torch and offers the prepacked linear kernels."""
    return (torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")
            and hasattr(torch.ops.mkldnn, "_linear_pointwise"))


def _packed_forward(self: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
    weight = self.weight
    if (torch.is_grad_enabled() or weight.requires_grad or weight.device.type != "cpu"
            or x.dtype != torch.float32 or weight.dtype != torch.float32):
        return F.linear(x, weight, self.bias)
    version, packed = self._corll_packed
    if packed is None or version != weight._version:
        packed = torch.ops.mkldnn._reorder_linear_weight(weight.detach())
        self._corll_packed = (weight._version, packed)
    return torch.ops.mkldnn._linear_pointwise(x, packed, self.bias, "none", [], "")


def pack_frozen_linears(model: torch.nn.Module) -> int:
    """Route every frozen fp32 `nn.Linear` of `model` through the prepacked kernel when no gradient is taken;
    returns how many layers now do. Weights are packed on first use, not here."""
    count = 0
    for module in model.modules():
        if type(module) is torch.nn.Linear and not module.weight.requires_grad and not hasattr(module, "_corll_packed"):
            module._corll_packed = (None, None)
            module.forward = types.MethodType(_packed_forward, module)
            count += 1
    return count


def fast_inference(policy: Policy) -> Policy:
    """In fp32 on a CPU, the policy's (and its frozen reference's) frozen weights run through the prepacked
    kernels whenever no gradient is taken. Set CORLL_PACKED_KERNELS=0 to compare or to save the memory."""
    if (policy.precision == "fp32" and policy.device.type == "cpu" and available()
            and os.environ.get("CORLL_PACKED_KERNELS", "1") != "0"):
        for model in (policy.model, policy._reference_model):
            if model is not None:
                pack_frozen_linears(model)
    return policy
