"""Prompts' beginnings computed once per user: the keys and values of a prompt's full blocks of tokens, kept so
that the same user's next prompt that begins the same way is prefilled from where they end.

Every chat request begins with the model's chat template, and an app's requests with its system prompt
(SmolLM2's template alone is 24 tokens of a 38-token one-line question); computing them again for every
request is a large share of each prefill. Blocks of `block` tokens form a trie per scope: a user and the
adapter their rows compute with (an adapter changes the keys and values). A prompt's cached beginning is the
longest chain of its blocks found, always leaving its last token to compute, whose logits start the answer.

Scopes are never shared between users, so no user can tell from timing what another one asked, and
`forget` drops a user's blocks. Beyond a memory budget the least recently used blocks go, a block before
the beginnings it extends (a block's parent is used whenever it is, and counts as used after it).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field

import torch

BLOCK = 16  # tokens per cached block

Scope = tuple[str, Hashable]  # (user, adapter)


@dataclass(eq=False)
class Block:
    """One block of a prompt: its tokens' keys and values ([layers, 2, kv heads, block, head dim]), given the
    blocks before it."""

    kv: torch.Tensor
    tokens: tuple[int, ...]
    scope: Scope
    parent: Block | None
    children: dict[tuple[int, ...], Block] = field(default_factory=dict)

    @property
    def bytes(self) -> int:
        return self.kv.numel() * self.kv.element_size()


class PrefixCache:
    """Cached prompt blocks per (user, adapter), within `budget` bytes (0 keeps nothing)."""

    def __init__(self, budget: int, block: int = BLOCK) -> None:
        self.budget, self.block = budget, block
        self.roots: dict[Scope, dict[tuple[int, ...], Block]] = {}
        self._recent: OrderedDict[int, Block] = OrderedDict()  # every block, least recently used first
        self.bytes = 0
        self.tokens_reused = 0  # prompt tokens not computed again, since the start (for /healthz)
        self._lock = threading.Lock()  # the scheduler thread finds and adds, the HTTP layer forgets

    def find(self, scope: Scope, ids: Sequence[int]) -> list[Block]:
        """The cached blocks `ids` begins with, in order (none beyond its last full block before its last token)."""
        chain: list[Block] = []
        with self._lock:
            children = self.roots.get(scope, {})
            for start in range(0, (len(ids) - 1) // self.block * self.block, self.block):
                found = children.get(tuple(ids[start:start + self.block]))
                if found is None:
                    break
                chain.append(found)
                children = found.children
            self._touch(chain)
            self.tokens_reused += len(chain) * self.block
        return chain

    def add(self, scope: Scope, ids: Sequence[int], chain: list[Block],
            kv_of: Callable[[int, int], torch.Tensor]) -> None:
        """Cache the full blocks of `ids` after `chain` (what `find` gave); `kv_of(start, end)` gives the keys
        and values of its tokens start..end."""
        starts = range(len(chain) * self.block, (len(ids) - 1) // self.block * self.block, self.block)
        if not self.budget or not starts:
            return
        with self._lock:
            if any(id(block) not in self._recent for block in chain):
                return  # forgotten meanwhile
            parent = chain[-1] if chain else None
            children = parent.children if parent else self.roots.setdefault(scope, {})
            added = []
            for start in starts:
                tokens = tuple(ids[start:start + self.block])
                if tokens not in children:  # a row earlier in the same batch may have added it
                    children[tokens] = Block(kv_of(start, start + self.block).clone(), tokens, scope, parent)
                    self.bytes += children[tokens].bytes
                parent = children[tokens]
                children = parent.children
                added.append(parent)
            self._touch(chain + added)
            while self.bytes > self.budget:
                self._drop(next(iter(self._recent.values())))

    def past(self, chains: list[list[Block]]) -> tuple[torch.Tensor, torch.Tensor]:
        """The rows' cached beginnings as one batch's past, right-aligned: keys and values
        [layers, 2, rows, kv heads, width, head dim] and the attention mask [rows, width] (1 where a row has a
        cached token)."""
        width = max(len(chain) for chain in chains) * self.block
        first = next(chain[0] for chain in chains if chain).kv
        layers, _, heads, _, dim = first.shape
        past = first.new_zeros(layers, 2, len(chains), heads, width, dim)
        mask = torch.zeros(len(chains), width, dtype=torch.long)
        for row, chain in enumerate(chains):
            if chain:
                start = width - len(chain) * self.block
                past[:, :, row, :, start:] = torch.cat([b.kv for b in chain], dim=3)
                mask[row, start:] = 1
        return past, mask

    def forget(self, user: str) -> None:
        """Drop every block of `user` (whatever adapter computed it)."""
        with self._lock:
            for scope in [s for s in self.roots if s[0] == user]:
                for top in list(self.roots.get(scope, {}).values()):
                    self._drop(top)

    def _touch(self, chain: list[Block]) -> None:
        for found in reversed(chain):  # the beginning last: it counts as used after what extends it
            self._recent[id(found)] = found
            self._recent.move_to_end(id(found))

    def _drop(self, gone: Block) -> None:
        """Remove `gone` and every block that extends it."""
        siblings = gone.parent.children if gone.parent else self.roots[gone.scope]
        del siblings[gone.tokens]
        if gone.parent is None and not siblings:
            del self.roots[gone.scope]
        todo = [gone]
        while todo:
            block = todo.pop()
            self.bytes -= block.bytes
            self._recent.pop(id(block), None)
            todo.extend(block.children.values())
