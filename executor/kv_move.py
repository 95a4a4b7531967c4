"""Moving KV written in the DP layout into a TP layout over the process group: the
alternative to recomputing it at a soft-preempt flip (issue #5, DESIGN §4 "beyond the paper").

Under soft preempt a drained engine pre-runs waiting TP requests in its own (DP) mode; at the
flip their KV sits on one rank, all KV heads per token, in blocks of ``B_base`` tokens. In the
TP layout of width w, member r holds KV heads ``r*H/w .. (r+1)*H/w - 1`` of every token in
blocks of ``w * B_base`` tokens (``executor.kv_cache``). The paper recomputes that KV (a
prefill under TP); this moves it instead: every source rank cuts each of its requests' KV
into w head shards and one ``all_to_all_single`` delivers shard r to member r. A source keeps
1/w of the bytes (a local copy) and sends (w-1)/w of them.

Block ids are per device and the pool's bytes per block do not depend on the width, so DP
block b and TP block b are the same bytes: a request's TP blocks may reuse its DP blocks on
the source. That is safe here because the source reads everything into its send buffer
before anything is written back.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist

from executor.kv_cache import PagedKVCache
from executor.protocol import KVMoveItem


def slots_at_width(kv: PagedKVCache, width: int) -> torch.Tensor:
    """``[layers, 2, slots, kv_heads / width, head_dim]``: the pool's one storage viewed at
    ``width``, whatever width the pool is set to now (a view; no copy)."""
    if width < 1 or kv.num_kv_heads % width:
        raise ValueError(f"width {width} does not divide num_kv_heads={kv.num_kv_heads}")
    return kv.storage.view(kv.num_layers, 2, kv.num_blocks * width * kv.block_size_tokens,
                           kv.num_kv_heads // width, kv.head_dim)


def token_slots(block_table: Sequence[int], num_tokens: int, tokens_per_block: int,
                num_blocks: int, device: torch.device) -> torch.Tensor:
    """Pool slots of tokens ``0 .. num_tokens - 1`` of a request with ``block_table``."""
    if len(block_table) * tokens_per_block < num_tokens:
        raise ValueError(f"a block table of {len(block_table)} blocks of {tokens_per_block} "
                         f"tokens cannot hold {num_tokens} tokens")
    if block_table and not (0 <= min(block_table) and max(block_table) < num_blocks):
        raise ValueError(f"block ids outside the pool of {num_blocks} blocks: {block_table}")
    table = torch.tensor(list(block_table), dtype=torch.long, device=device)
    positions = torch.arange(num_tokens, device=device)
    return table[positions // tokens_per_block] * tokens_per_block + positions % tokens_per_block


def read_kv(kv: PagedKVCache, width: int, block_table: Sequence[int], num_tokens: int
            ) -> torch.Tensor:
    """A request's KV as laid out at ``width``: ``[layers, 2, tokens, kv_heads/width, dim]``
    (a copy, gathered from its slots)."""
    slots = token_slots(block_table, num_tokens, width * kv.block_size_tokens, kv.num_blocks,
                        kv.storage.device)
    return slots_at_width(kv, width).index_select(2, slots)


def write_kv(kv: PagedKVCache, width: int, block_table: Sequence[int],
             values: torch.Tensor) -> None:
    """Store ``values`` ``[layers, 2, tokens, kv_heads/width, dim]`` in the request's slots."""
    slots = token_slots(block_table, values.shape[2], width * kv.block_size_tokens,
                        kv.num_blocks, kv.storage.device)
    slots_at_width(kv, width).index_copy_(2, slots, values)


def head_shards(kv_tokens: torch.Tensor, width: int) -> list[torch.Tensor]:
    """``[layers, 2, tokens, heads, dim]`` cut by KV heads into ``width`` contiguous pieces,
    piece r being what TP member r stores."""
    heads = kv_tokens.shape[3]
    if heads % width:
        raise ValueError(f"{heads} KV heads cannot be split over width {width}")
    return [part.contiguous() for part in kv_tokens.split(heads // width, dim=3)]


def shard_numel(kv: PagedKVCache, width: int, num_tokens: int) -> int:
    """Elements of one member's share of a request's KV (K and V, every layer)."""
    return kv.num_layers * 2 * num_tokens * (kv.num_kv_heads // width) * kv.head_dim


def move_kv_to_tp(kv: PagedKVCache, items: Sequence[KVMoveItem], group_ranks: Sequence[int],
                  rank: int, group: dist.ProcessGroup | None) -> tuple[int, int]:
    """Run this rank's part of moving ``items`` into the TP layout of ``group_ranks``.

    Every member calls this with the same items (in the same order: the buffers are packed
    and unpacked by it). ``src_rank`` and ``rank`` are global ranks. Returns the bytes this
    rank sent to and received from the other members (its own share is copied locally).
    """
    width = len(group_ranks)
    if width < 2:
        raise ValueError("moving KV into a TP layout needs a group of at least 2 ranks")
    if group is None:
        raise ValueError("moving KV needs the group's process group handle")
    me = list(group_ranks).index(rank)
    for item in items:
        if item.src_rank not in group_ranks:
            raise ValueError(f"KV source rank {item.src_rank} is not in the group {group_ranks}")
    send, send_splits = _pack(kv, items, group_ranks, me)
    recv_splits = [sum(shard_numel(kv, width, i.num_tokens) for i in items
                       if i.src_rank == src) for src in group_ranks]
    recv = torch.empty(sum(recv_splits), dtype=kv.storage.dtype, device=kv.storage.device)
    dist.all_to_all_single(recv, send, recv_splits, send_splits, group=group)
    _unpack(kv, items, group_ranks, recv, recv_splits)
    element = kv.storage.element_size()
    return ((sum(send_splits) - send_splits[me]) * element,
            (sum(recv_splits) - recv_splits[me]) * element)


def _pack(kv: PagedKVCache, items: Sequence[KVMoveItem], group_ranks: Sequence[int], me: int
          ) -> tuple[torch.Tensor, list[int]]:
    """This rank's send buffer: for each destination member in order, its head shard of every
    request this rank is the source of (in item order); and the split sizes."""
    width = len(group_ranks)
    mine = [i for i in items if i.src_rank == group_ranks[me]]
    shards = [head_shards(read_kv(kv, 1, i.dp_block_table, i.num_tokens), width) for i in mine]
    per_dest = [[s[dest].flatten() for s in shards] for dest in range(width)]
    splits = [sum(p.numel() for p in parts) for parts in per_dest]
    flat = [p for parts in per_dest for p in parts]
    send = torch.cat(flat) if flat else torch.empty(0, dtype=kv.storage.dtype,
                                                    device=kv.storage.device)
    return send, splits


def _unpack(kv: PagedKVCache, items: Sequence[KVMoveItem], group_ranks: Sequence[int],
            recv: torch.Tensor, recv_splits: list[int]) -> None:
    """Write what each source sent (its requests in item order) into the TP slots."""
    width = len(group_ranks)
    heads_local = kv.num_kv_heads // width
    offset = 0
    for src in group_ranks:
        for item in (i for i in items if i.src_rank == src):
            n = shard_numel(kv, width, item.num_tokens)
            values = recv[offset:offset + n].view(kv.num_layers, 2, item.num_tokens,
                                                  heads_local, kv.head_dim)
            write_kv(kv, width, item.tp_block_table, values)
            offset += n
    assert offset == sum(recv_splits)


def request_kv_bytes(kv: PagedKVCache, num_tokens: int) -> int:
    """Bytes of one request's KV over the whole model (all heads, K and V, every layer)."""
    return shard_numel(kv, 1, num_tokens) * kv.storage.element_size()
