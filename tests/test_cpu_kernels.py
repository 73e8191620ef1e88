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


class Attention(torch.nn.Module):
    """q, k and v read one input, as in a Llama layer."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.q_proj, self.k_proj, self.v_proj = (torch.nn.Linear(16, n, bias=False) for n in (24, 8, 8))
        self.requires_grad_(False)


def test_siblings_reading_one_input_share_one_product_and_each_gets_its_own_output():
    attention, x = Attention(), torch.randn(2, 3, 16)
    assert cpu_kernels.pack_frozen_linears(attention) == 3
    siblings = attention.q_proj._corll_siblings[0]
    assert siblings is attention.v_proj._corll_siblings[0]
    layers = [attention.q_proj, attention.k_proj, attention.v_proj]
    with torch.no_grad():
        q = attention.q_proj(x)
        assert siblings._output is not None  # computed once for all three
        outputs = [q, attention.k_proj(x), attention.v_proj(x)]
        assert siblings._output is None  # dropped once every sibling took its slice
        for layer, out in zip(layers, outputs):
            assert torch.allclose(out, torch.nn.functional.linear(x, layer.weight), atol=1e-5)
        # a second call, a changed input and a changed weight each get a fresh product
        again = attention.q_proj(x)
        attention.q_proj(x).add_(1.0)  # a caller adding into its output in place (as a LoRA layer does)
        assert torch.allclose(attention.q_proj(x), again, atol=1e-6)
        x.mul_(2)
        assert torch.allclose(attention.k_proj(x), torch.nn.functional.linear(x, attention.k_proj.weight), atol=1e-5)
        attention.v_proj.weight.mul_(3)
        assert torch.allclose(attention.v_proj(x), torch.nn.functional.linear(x, attention.v_proj.weight), atol=1e-5)


def test_a_frozen_model_with_fused_siblings_scores_as_the_plain_kernels_do(monkeypatch):
    from corll.policy import load_frozen

    fused = load_frozen("tiny", precision="fp32")
    assert any(hasattr(m, "_corll_siblings") for m in fused.model.modules())
    monkeypatch.setenv("CORLL_PACKED_KERNELS", "0")
    plain = load_frozen("tiny", precision="fp32")
    ids = torch.randint(0, 100, (3, 7))
    with torch.no_grad():
        assert torch.allclose(fused.model(input_ids=ids).logits, plain.model(input_ids=ids).logits, atol=1e-4)
