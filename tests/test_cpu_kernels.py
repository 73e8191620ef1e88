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


def test_a_bf16_weight_under_autocast_gives_autocasts_own_product():
    torch.manual_seed(0)
    layer = torch.nn.Linear(16, 24).requires_grad_(False).to(torch.bfloat16)  # a frozen weight stored in bf16
    assert cpu_kernels.pack_frozen_linears(layer) == 1
    x = torch.randn(2, 3, 16)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = layer(x)
        expected = torch.nn.functional.linear(x, layer.weight, layer.bias)
    assert layer._corll_packed[1] is not None and out.dtype == expected.dtype == torch.bfloat16
    assert torch.allclose(out.float(), expected.float(), atol=2e-2, rtol=1e-2)


def test_a_bf16_policy_packs_its_frozen_base_and_scores_as_the_plain_kernels_do(monkeypatch):
    policy = load_policy("tiny", precision="bf16", seed=0)
    packed = [m for m in policy.model.modules() if hasattr(m, "_corll_packed")]
    assert packed and all(m.weight.dtype == torch.bfloat16 for m in packed)
    monkeypatch.setenv("CORLL_PACKED_KERNELS", "0")
    plain = load_policy("tiny", precision="bf16", seed=0)
    assert not any(hasattr(m, "_corll_packed") for m in plain.model.modules())
    prompts, responses = ["hello", "x"], ["abc def", "the quick brown fox"]
    assert torch.allclose(policy.logprobs(prompts, responses), plain.logprobs(prompts, responses), atol=0.05)
