"""Remembered values of a function that never changes: log π_0(y|x) of a frozen reference, R* of a
frozen expert. A round asks for the same (prompt, response) values several times (the argmax, the
simulated user, the DPO step), so each is computed once and kept while it is among the newest."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator, Sequence


class Memo:
    """A bounded map from key to a value that never changes; the oldest keys go first when it is full."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._values: OrderedDict[Hashable, float] = OrderedDict()

    def get(self, keys: Sequence[Hashable], compute: Callable[[list[int]], Sequence[float]]) -> list[float]:
        """The values of `keys`; `compute(indices)` is called once with the positions of the keys not yet
        known, each distinct key once, and returns their values in that order."""
        todo = list({key: i for i, key in enumerate(keys) if key not in self._values}.values())
        if todo:
            self._store([keys[i] for i in todo], compute(todo))
        values = [self._values[key] for key in keys]
        self._trim()  # after reading: a value asked for now may be the oldest one kept
        return values

    def remember(self, keys: Sequence[Hashable], values: Sequence[float]) -> None:
        """Keep values computed elsewhere (a value once given stays the value)."""
        self._store(keys, values)
        self._trim()

    def clear(self) -> None:
        self._values.clear()

    def __len__(self) -> int:
        return len(self._values)

    def __iter__(self) -> Iterator[Hashable]:
        """The keys kept, oldest first."""
        return iter(self._values)

    def _store(self, keys: Sequence[Hashable], values: Sequence[float]) -> None:
        for key, value in zip(keys, values, strict=True):
            self._values.setdefault(key, value)

    def _trim(self) -> None:
        while len(self._values) > self.size:
            self._values.popitem(last=False)
