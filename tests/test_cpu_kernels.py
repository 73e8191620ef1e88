"""Prepacked oneDNN matmuls for frozen weights: the same numbers, only without gradients, never stale."""

import torch

from corll import cpu_kernels
from corll.policy import load_policy



def test_the_pinned_cpu_torch_offers_the_kernels():
    assert cpu_kernels.available()


def frozen_linear(bias: bool = True) -> torch.nn.Linear:
    torch.manual_seed(0)
    layer = torch.nn.Linear(16, 24, bias=bias).requires_grad_(False)
    assert cpu_kernels.pack_frozen_linears(layer) == 1
    return layer


def test_without_gradients_the_packed_kernel_gives_the_plain_product():
    layer, x = frozen_linear(), torch.randn(2, 3, 16)
    with torch.no_grad():
        out = layer(x)
    assert layer._corll_packed[1] is not None  # the packed path ran
    assert torch.allclose(out, torch.nn.functional.linear(x, layer.weight, layer.bias), atol=1e-5)


def test_a_forward_that_needs_gradients_takes_the_plain_path():
    layer, x = frozen_linear(bias=False), torch.randn(4, 16, requires_grad=True)
    layer(x).sum().backward()
    assert layer._corll_packed == (None, None)  # never packed
    assert torch.allclose(x.grad, layer.weight.sum(0).expand(4, 16), atol=1e-6)


def test_a_weight_changed_in_place_is_packed_again():
    layer, x = frozen_linear(), torch.randn(3, 16)
    with torch.no_grad():
        layer(x)
        layer.weight.mul_(2)
        out = layer(x)
    assert torch.allclose(out, torch.nn.functional.linear(x, layer.weight, layer.bias), atol=1e-5)


def test_a_lora_policy_packs_its_frozen_base_but_not_its_adapter():
    policy = load_policy("tiny", precision="fp32")
    packed = [m for m in policy.model.modules() if hasattr(m, "_corll_packed")]
    trainable = [m for m in policy.model.modules() if isinstance(m, torch.nn.Linear) and m.weight.requires_grad]
    assert packed and trainable and not set(map(id, packed)) & set(map(id, trainable))
    assert all(not m.weight.requires_grad for m in packed)
