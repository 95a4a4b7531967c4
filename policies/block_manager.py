"""Paged KV block accounting for one engine group.

A logical block spans one fixed-byte physical block on every GPU of the group; at merge width
p it holds ``p * B_base`` tokens (the KV Cache Adaptor's B(p)). Running out of blocks is a
return value (False), never an exception: the scheduler decides whom to preempt.
"""
from __future__ import annotations

from policies.request import Request


def blocks_for(num_tokens: int, tokens_per_block: int) -> int:
    return -(-num_tokens // tokens_per_block)


class BlockManager:
    """``reserved_ids`` are block ids this group may not use: on one of its engines they hold
    the KV of a paused request of another group (hard preempt keeps that KV in place). A TP
    group uses the same block id on every member, so an id is usable only if it is free on
    all of them."""

    def __init__(self, num_blocks: int, tokens_per_block: int,
                 reserved_ids: frozenset[int] | set[int] = frozenset()) -> None:
        if num_blocks <= 0 or tokens_per_block <= 0:
            raise ValueError(f"block pool needs positive sizes, got {num_blocks} blocks of "
                             f"{tokens_per_block} tokens")
        self.num_blocks = num_blocks
        self.tokens_per_block = tokens_per_block
        self.reserved_ids = frozenset(reserved_ids)
        # A stack: the most recently freed block is reused first (warm in cache on a GPU).
        self._free: list[int] = [i for i in range(num_blocks - 1, -1, -1)
                                 if i not in self.reserved_ids]
        self.num_usable_blocks = len(self._free)

    @property
    def num_free_blocks(self) -> int:
        return len(self._free)

    @property
    def num_used_blocks(self) -> int:
        return self.num_usable_blocks - len(self._free)

    @property
    def capacity_tokens(self) -> int:
        return self.num_usable_blocks * self.tokens_per_block

    @property
    def free_ids(self) -> frozenset[int]:
        return frozenset(self._free)

    def adopt(self, request: Request) -> None:
        """Take back a paused request's blocks (they were reserved for it)."""
        ids = set(request.block_ids)
        self._free = [i for i in self._free if i not in ids]

    def unreserve(self, ids: set[int] | frozenset[int]) -> None:
        """Give back reserved ids whose paused request left without resuming (an abort):
        they become usable here. Ids not reserved here are ignored."""
        back = self.reserved_ids & ids
        if not back:
            return
        self.reserved_ids = self.reserved_ids - back
        self._free.extend(sorted(back, reverse=True))
        self.num_usable_blocks += len(back)

    def blocks_needed(self, request: Request, num_tokens: int) -> int:
        """Blocks to add so that ``request`` can hold ``num_tokens`` tokens of KV."""
        return max(0, blocks_for(num_tokens, self.tokens_per_block) - len(request.block_ids))

    def ensure(self, request: Request, num_tokens: int) -> list[int] | None:
        """Grow ``request``'s block table to hold ``num_tokens``; None (and no change) if the
        pool cannot. Returns the newly added block ids."""
        held = len(request.block_ids)
        if num_tokens <= held * self.tokens_per_block:
            return []  # the common decode case: the last block still has room
        need = blocks_for(num_tokens, self.tokens_per_block) - held
        if need > len(self._free):
            return None
        new = self._free[-need:]
        del self._free[-need:]
        request.block_ids.extend(new)
        return new

    def free(self, request: Request) -> None:
        self._free.extend(reversed(request.block_ids))
        request.block_ids = []
