import random

import torch
from transformers import DynamicCache

from corll.kv_rows import RowsCache

HEADS, DIM, LAYERS = 2, 3, 2


def prefill(widths: list[int], ids: list[int],
            reference: dict[int, list[torch.Tensor]]) -> tuple[DynamicCache, torch.Tensor]:
    """A cache of new rows, left-padded to the widest, as the engine's prefill makes one."""
    width = max(widths)
    mask = torch.tensor([[0] * (width - w) + [1] * w for w in widths])
    cache = DynamicCache()
    for layer in range(LAYERS):
        keys = torch.randn(len(widths), HEADS, width, DIM)
        cache.update(keys, -keys, layer)
        if layer == 0:
            for row, (rid, w) in enumerate(zip(ids, widths)):
                reference[rid] = [keys[row, :, i] for i in range(width - w, width)]
    return cache, mask


def check(cache: RowsCache, mask: torch.Tensor, ids: list[int], reference: dict[int, list[torch.Tensor]]) -> None:
    """Every row holds exactly its own tokens' keys and values where its mask is 1."""
    layer = cache.layers[0]
    assert layer.keys.shape[:3] == (len(ids), HEADS, mask.shape[1])
    for row, rid in enumerate(ids):
        mine = layer.keys[row][:, mask[row].bool()]
        assert torch.equal(mine, torch.stack(reference[rid], dim=1)), rid
        assert torch.equal(layer.values[row][:, mask[row].bool()], -mine)
    assert torch.isfinite(layer.keys).all()


def test_rows_leave_and_join_a_running_batch_and_each_keeps_exactly_its_own_keys():
    random.seed(0)
    torch.manual_seed(0)
    reference: dict[int, list[torch.Tensor]] = {}
    ids = [0, 1, 2]
    first, mask = prefill([4, 2, 3], ids, reference)
    cache = RowsCache(row_room=4)  # the batch's cache starts empty and takes in the first prefill
    cache.append(first)
    check(cache, mask, ids, reference)
    next_id = 3
    for step in range(60):
        # a decoding step: every row gets one token (values are the keys' negatives)
        for layer in range(LAYERS):
            keys = torch.randn(len(ids), HEADS, 1, DIM)
            live, _ = cache.update(keys, -keys, layer)
            assert live.shape[2] == mask.shape[1] + 1  # the view returned includes the new token
            if layer == 0:
                for row, rid in enumerate(ids):
                    reference[rid].append(keys[row, :, 0])
        mask = torch.cat([mask, torch.ones(len(ids), 1, dtype=torch.long)], dim=1)
        check(cache, mask, ids, reference)
        # some rows leave (never all), the padding nobody needs is dropped
        keep = sorted(random.sample(range(len(ids)), k=random.randint(1, len(ids))))
        drop = int(mask[keep].any(0).long().argmax())
        order = cache.keep(keep, drop)
        assert sorted(order) == keep
        ids, mask = [ids[i] for i in order], mask[order, drop:]
        check(cache, mask, ids, reference)
        # newcomers join, sometimes with prompts wider than the running rows' history
        if step % 3 == 0:
            widths = [random.randint(1, mask.shape[1] + 6) for _ in range(random.randint(1, 4))]
            new_ids = list(range(next_id, next_id + len(widths)))
            next_id += len(widths)
            other, other_mask = prefill(widths, new_ids, reference)
            cache.append(other)
            width = max(mask.shape[1], other_mask.shape[1])
            pad = lambda m: torch.cat([m.new_zeros(m.shape[0], width - m.shape[1]), m], dim=1)  # noqa: E731
            mask, ids = torch.cat([pad(mask), pad(other_mask)]), ids + new_ids
            check(cache, mask, ids, reference)
    assert next_id > 40  # the batch saw many arrivals


def test_a_step_copies_no_past_positions_until_the_room_is_used_up():
    cache = RowsCache()
    cache.update(torch.randn(4, HEADS, 5, DIM), torch.randn(4, HEADS, 5, DIM), 0)
    buffer = cache.layers[0].buffers[0]
    for _ in range(30):
        cache.update(torch.randn(4, HEADS, 1, DIM), torch.randn(4, HEADS, 1, DIM), 0)
    assert cache.layers[0].buffers[0] is buffer  # written in place
    assert cache.get_seq_length() == 35
    for _ in range(100):
        cache.update(torch.randn(4, HEADS, 1, DIM), torch.randn(4, HEADS, 1, DIM), 0)
    assert cache.get_seq_length() == 135 and cache.layers[0].buffers[0] is not buffer  # grown once room ran out


def test_transformers_own_row_operations_keep_keys_and_values_together():
    """`batch_repeat_interleave` (sampling k answers per prompt) and `batch_select_indices` write `keys`
    and then `values`: each replaces the buffer with the live block, wherever that block started."""
    cache = RowsCache()
    keys = torch.randn(2, HEADS, 6, DIM)
    cache.update(keys, -keys, 0)
    cache.keep([0, 1], drop=2)  # the live block now starts inside the buffer
    cache.batch_repeat_interleave(3)
    layer = cache.layers[0]
    assert torch.equal(layer.keys, keys[:, :, 2:].repeat_interleave(3, 0))
    assert torch.equal(layer.values, -layer.keys)
    cache.batch_select_indices(torch.tensor([5, 0]))
    assert torch.equal(layer.keys, keys[[1, 0], :, 2:]) and torch.equal(layer.values, -layer.keys)
    step = torch.randn(2, HEADS, 1, DIM)
    live, _ = cache.update(step, -step, 0)
    assert torch.equal(live, torch.cat([keys[[1, 0], :, 2:], step], dim=2))
