"""Stacked adapters give each row exactly what peft gives it alone, in one mixed batch."""

from __future__ import annotations

import pytest
import torch

from corll.server.adapters import read_adapter
from corll.server.lora_batch import AdapterError, AdapterSlots
from tests.conftest import random_adapter


def peft_logits(folder: str, ids: torch.Tensor) -> torch.Tensor:
    from peft import PeftModel

    from corll.models import tiny_model, tiny_tokenizer

    model = PeftModel.from_pretrained(tiny_model(tiny_tokenizer()), folder).eval()
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_each_row_of_a_mixed_batch_gets_its_own_adapter_exactly(tmp_path):
    from corll.models import tiny_model, tiny_tokenizer

    first = random_adapter(tmp_path / "a", seed=1, std=0.3)
    second = random_adapter(tmp_path / "b", seed=2, r=4, alpha=32, targets=("q_proj", "v_proj"), std=0.3)  # padded, other scale
    ids = torch.randint(3, 90, (1, 7))
    model = tiny_model(tiny_tokenizer()).eval()
    slots = AdapterSlots(model, 4, rank=8)
    slots.load(1, *read_adapter(first))
    slots.load(3, *read_adapter(second))
    batch = ids.repeat(4, 1)
    with torch.no_grad(), slots.rows([1, 0, 3, 1]):
        mixed = model(input_ids=batch).logits
    with torch.no_grad():
        base = model(input_ids=ids).logits  # outside `rows`: the base model
    expected = [peft_logits(first, ids), base, peft_logits(second, ids), peft_logits(first, ids)]
    for row, want in enumerate(expected):
        torch.testing.assert_close(mixed[row : row + 1], want, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(expected[0], base, atol=1e-3)  # the adapters do change the output
    # the same adapters in another forward with other rows (a step's newcomers beside its running rows)
    with torch.no_grad(), slots.rows([3, 1]):
        fewer = model(input_ids=ids.repeat(2, 1)).logits
    torch.testing.assert_close(fewer, torch.cat([expected[2], expected[0]]), atol=1e-5, rtol=1e-5)
    # the same slots in use, but slot 1 now holds the second adapter: its rows follow the new weights
    slots.load(1, *read_adapter(second))
    with torch.no_grad(), slots.rows([1, 0, 3, 1]):
        torch.testing.assert_close(model(input_ids=batch).logits[:1], expected[2], atol=1e-5, rtol=1e-5)
    # rank 8 × (in + out) fp32 numbers per layer: q, k, v, o of both layers
    assert slots.bytes_per_adapter == sum(4 * 8 * (l.base.in_features + l.base.out_features)
                                          for l in slots.layers.values()) == 4 * 8 * 2 * (128 + 96 + 96 + 128)


def test_an_adapter_the_slots_cannot_hold_is_refused_with_the_reason(tmp_path):
    from corll.models import tiny_model, tiny_tokenizer

    slots = AdapterSlots(tiny_model(tiny_tokenizer()), 2, rank=4)
    with pytest.raises(AdapterError, match="rank 8 exceeds this engine's maximum 4"):
        slots.load(1, *read_adapter(random_adapter(tmp_path / "wide", seed=1, r=8)))
    with pytest.raises(AdapterError, match="up_proj"):
        slots.load(1, *read_adapter(random_adapter(tmp_path / "mlp", seed=1, r=4, targets=("q_proj", "up_proj"))))
    assert all(not layer.A[1].any() for layer in slots.layers.values())  # a refused adapter leaves nothing


def test_sibling_layers_given_different_inputs_each_get_their_own_update():
    """q, k and v share one first product when they read the same input; a model whose siblings read
    different inputs still gets each layer's own x·Aᵀ·Bᵀ."""
    torch.manual_seed(0)

    class Attention(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.q_proj, self.k_proj = torch.nn.Linear(6, 5, bias=False), torch.nn.Linear(6, 4, bias=False)

    model = torch.nn.Module()
    model.attn = Attention()
    slots = AdapterSlots(model, 3, rank=2, targets=("q_proj", "k_proj"))
    q, k = slots.layers["attn.q_proj"], slots.layers["attn.k_proj"]
    assert q.group[0] is k.group[0]
    for layer in (q, k):
        layer.A.normal_()
        layer.Bt.normal_()
    x, other = torch.randn(2, 1, 6), torch.randn(2, 1, 6)
    with slots.rows([2, 1]):
        shared = (q(x), k(x))  # the same input: one product for both
        apart = (q(x), k(other))  # k reads another input: computed afresh
    for row, slot in enumerate([2, 1]):
        for layer, inp, out in ((q, x, shared[0]), (k, x, shared[1]), (q, x, apart[0]), (k, other, apart[1])):
            want = layer.base(inp[row]) + inp[row] @ layer.A[slot].T @ layer.Bt[slot]
            torch.testing.assert_close(out[row], want)
