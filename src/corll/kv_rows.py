"""A decoding batch's KV cache, kept in place as tokens are added and rows come and go.

transformers' `DynamicCache` appends a step's keys and values with `torch.cat`, which copies every layer's
whole cache at every step (7% of corll's sampling on a CPU), and the serving engine used to drop finished
rows and stack newcomers the same way: three copies of the cache per step once requests arrive and leave
continuously, about 15% of a 32-row decoding step of SmolLM2 on a CPU. Here each layer keeps its keys and
values in a larger buffer (room for more rows and more positions) and the live block is a view into it:

    buffer [rows capacity, heads, positions capacity, head dim]
    live   = buffer[:rows, :, start:end]

- a step writes its token's keys at `end` (no copy of the past),
- a finished row is replaced by the last live row (one row copied per finished row, not the batch),
- left padding no row needs any more is dropped by moving `start` (no copy),
- newcomers are written into the rows after the live ones, aligned on the right (their prompt's
  left padding is masked, as in any left-padded batch).

Only when the buffer is full is it copied into a larger one (half as much room again, and rows up to the
engine's batch size), so the copies per token are amortised to a constant and the memory stays within
1.5× of the live block's. Positions outside a row's own tokens hold zeros or an earlier row's finite values;
the attention mask gives them weight exactly zero, so they never reach the output.
"""

from __future__ import annotations

from functools import partial

import torch
from transformers.cache_utils import Cache, DynamicLayer

MIN_ROOM = 64  # positions of room added at least when a buffer grows


class _LiveView:
    """A layer's `keys` or `values`: the live block of its buffer. transformers reads them, and writes them
    one at a time when it clears them or moves them between devices: a write replaces the buffer."""

    def __init__(self, which: int) -> None:
        self.which = which

    def __get__(self, layer: RowsLayer | None, owner: type | None = None) -> torch.Tensor | _LiveView | None:
        if layer is None:  # looked up on the class
            return self
        if layer.buffers is None:
            return None
        return layer.buffers[self.which][: layer.rows, :, layer.start:layer.end]

    def __set__(self, layer: RowsLayer, value: torch.Tensor | None) -> None:
        layer._replace(self.which, value)


class RowsLayer(DynamicLayer):
    """One layer's keys and values: a buffer with room, `keys`/`values` the live view into it."""

    def __init__(self, row_room: int = 1, **kwargs) -> None:
        self.row_room = row_room  # rows to make room for when the buffer grows (the engine's batch size)
        self.buffers: tuple[torch.Tensor, torch.Tensor] | None = None
        self.rows = self.start = self.end = 0
        super().__init__(**kwargs)

    keys = _LiveView(0)
    values = _LiveView(1)

    def _replace(self, which: int, value: torch.Tensor | None) -> None:
        """transformers set `keys` or `values` alone (moving them between devices, clearing them): the new
        tensor, beside the other's live view."""
        if value is None or value.dim() != 4:  # cleared, or transformers' empty placeholder
            self.buffers, self.rows, self.start, self.end = None, 0, 0, 0
            return
        pair = [self.keys, self.values]
        pair[which] = value
        if pair[1 - which] is None:
            pair[1 - which] = torch.zeros_like(value)
        self._live(*pair)

    # transformers' row and length operations, on keys and values together
    def batch_repeat_interleave(self, repeats: int) -> None:
        if self.buffers is not None:
            self._live(self.keys.repeat_interleave(repeats, dim=0), self.values.repeat_interleave(repeats, dim=0))

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        if self.buffers is not None:
            self._live(self.keys[indices], self.values[indices])

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        self.batch_select_indices(beam_idx)

    def crop(self, tokens_to_remove: int) -> None:
        if tokens_to_remove > 0:
            raise ValueError("crop takes the number of tokens to remove as a negative number")
        self.end = max(self.start, self.end + tokens_to_remove)

    def _live(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        self.buffers, self.rows, self.start, self.end = (keys, values), keys.shape[0], 0, keys.shape[2]

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args,
               **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
        """Write this step's keys and values after the live ones; the live view, theirs included."""
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        new = key_states.shape[2]
        if self.buffers is None:
            self._grow(key_states.shape[0], 0, new, key_states)
            self.rows = key_states.shape[0]
        elif self.end + new > self.buffers[0].shape[2]:
            self._grow(self.rows, 0, self.end - self.start + new, key_states)
        keys, values = self.buffers
        keys[: self.rows, :, self.end:self.end + new] = key_states
        values[: self.rows, :, self.end:self.end + new] = value_states
        self.end += new
        return self.keys, self.values

    def _grow(self, rows: int, front: int, width: int, like: torch.Tensor) -> None:
        """Copy the live block into new buffers with room for `rows` rows (at least `row_room`), `front` more
        positions on the left and `width` positions from there on (plus half as many, at least MIN_ROOM, on
        the right)."""
        live = self.end - self.start
        shape = (max(rows, self.row_room), like.shape[1], front + width + max(width // 2, MIN_ROOM), like.shape[3])
        fresh = tuple(torch.zeros(shape, dtype=like.dtype, device=like.device) for _ in range(2))
        if self.buffers is not None:
            for old, new in zip(self.buffers, fresh):
                new[: self.rows, :, front:front + live] = old[: self.rows, :, self.start:self.end]
        self.buffers, self.start, self.end = fresh, front, front + live

    def keep(self, holes: list[int], sources: list[int], rows: int, drop: int) -> None:
        """Move the rows at `sources` into `holes`, keep the first `rows` and drop the first `drop` positions."""
        if holes:
            at = torch.tensor(holes, device=self.buffers[0].device)
            src = torch.tensor(sources, device=self.buffers[0].device)
            for buffer in self.buffers:
                buffer[at, :, self.start:self.end] = buffer[src, :, self.start:self.end]
        self.rows = rows
        self.start += drop

    def append_rows(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        """Write newcomers' keys and values (their own width) into the rows after the live ones, right-aligned;
        the live block widens on the left if theirs is wider."""
        if not self.is_initialized:
            self.lazy_initialization(keys, values)
        rows, width = keys.shape[0], keys.shape[2]
        live = self.end - self.start
        front = max(0, width - live)  # positions the live block must gain on the left
        if self.buffers is None or self.rows + rows > self.buffers[0].shape[0] or front > self.start:
            self._grow(self.rows + rows, front, max(live, width), keys)
        self.start -= front
        for buffer, new in zip(self.buffers, (keys, values)):
            buffer[self.rows:self.rows + rows, :, self.end - width:self.end] = new
        self.rows += rows


class RowsCache(Cache):
    """A batch's KV cache whose rows can leave and join without copying the others (see the module doc)."""

    def __init__(self, row_room: int = 1) -> None:
        super().__init__(layer_class_to_replicate=partial(RowsLayer, row_room=row_room))

    def keep(self, keep: list[int], drop: int = 0) -> list[int]:
        """Keep the rows at `keep` (ascending) and drop the first `drop` positions. Each row that leaves is
        filled by a kept row from the end, so the rows' order changes: returns, for each new row, the old row
        it holds."""
        count = len(keep)
        order = list(range(count))
        gone = set(range(self.layers[0].rows)) - set(keep) if self.layers else set()
        holes = sorted(i for i in gone if i < count)
        sources = [i for i in keep if i >= count]
        for hole, source in zip(holes, sources):
            order[hole] = source
        for layer in self.layers:
            layer.keep(holes, sources, count, drop)
        return order

    def append(self, other: Cache) -> None:
        """Add the rows of `other` (a newcomers' prefill) after these, the narrower of the two left-padded."""
        while len(self.layers) < len(other.layers):
            self.layers.append(self.layer_class_to_replicate())
        for mine, theirs in zip(self.layers, other.layers):
            mine.append_rows(theirs.keys, theirs.values)
