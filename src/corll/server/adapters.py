"""Users' LoRA adapters inside the serving model: read off the scheduler thread, copied into a slot
between decoding steps, and the least recently used one's slot reused beyond a budget.

A version's adapter is read from disk (its config and weights) by a loader thread while the scheduler keeps
decoding everyone else; once read, the scheduler copies it into a free slot of the stacked adapter
matrices (`lora_batch.py`) between two steps (milliseconds), so a wave of first requests from adapter
users does not stall the batch for as long as their files take to read. An adapter whose files cannot be read fails its own
requests only. Beyond `budget` attached adapters, the least recently used one that no running row uses
is detached, so memory stays flat however many users come and go; a request whose adapter would need a
slot while every slot is in use waits for one.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Collection
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import torch

from corll.server.lora_batch import AdapterSlots

BASE_ADAPTER = "__base__"  # the base model's name among adapters: slot 0


def read_adapter(path: str) -> tuple[object, dict[str, torch.Tensor]]:
    """An adapter folder's peft config and weights, read from disk (runs on the loader thread)."""
    from peft import PeftConfig
    from safetensors.torch import load_file

    folder = Path(path)
    config = PeftConfig.from_pretrained(str(folder))
    config.inference_mode = True
    return config, load_file(str(folder / "adapter_model.safetensors"))


class AdapterCache:
    """Which adapter holds which slot; the budget is every slot but the base model's."""

    def __init__(self, slots: AdapterSlots) -> None:
        self.slots, self.budget = slots, slots.count - 1
        self.attached: OrderedDict[str, int] = OrderedDict()  # name -> slot, least recently used first
        self._reading: dict[str, Future] = {}
        self._loader = ThreadPoolExecutor(1, thread_name_prefix="corll-adapter-loader")

    def resolve(self, name: str | None, path: str | None, in_use: Collection[str]) -> str | None:
        """The adapter name a row computes with, once the adapter is attached (scheduler thread only): None
        while its files are being read or every slot is held by a running row. Raises what reading raised."""
        if path is None:
            return BASE_ADAPTER
        if name in self.attached:
            self.attached.move_to_end(name)
            return name
        reading = self._reading.get(name)
        if reading is None:
            self._reading[name] = self._loader.submit(read_adapter, path)
            return None
        if not reading.done():
            return None
        if not self._make_room(in_use):
            return None
        del self._reading[name]
        config, weights = reading.result()  # raises a read's error: the caller fails that request
        self._attach(name, config, weights)
        return name

    def slot(self, name: str) -> int:
        """The slot a row of adapter `name` computes with (0: the base model)."""
        return 0 if name == BASE_ADAPTER else self.attached[name]

    def _make_room(self, in_use: Collection[str]) -> bool:
        while len(self.attached) >= self.budget:
            idle = next((n for n in self.attached if n not in in_use), None)
            if idle is None:
                return False
            del self.attached[idle]  # its slot is overwritten by the next adapter attached
        return True

    def _attach(self, name: str, config, weights: dict[str, torch.Tensor]) -> None:
        free = min(set(range(1, self.slots.count)) - set(self.attached.values()))
        self.slots.load(free, config, weights)
        self.attached[name] = free
