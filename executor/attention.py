"""Attention over paged KV for a batch mixing prefill chunks and decodes.

Each sequence computes ``n`` new tokens on top of ``c`` cached ones (``c > 0`` for a later
prefill chunk or a decode). Its new K/V are first written into the pool at slots computed
from its block table; then its queries attend to all ``c + n`` keys gathered back from the
pool, causally: new token i (position ``c + i``) sees key positions ``0 .. c + i``.

Correctness over speed, with no per-token Python: decodes (``n == 1``) are padded to the
longest context and run as one batched SDPA call; each prefill chunk runs as its own call.
All gather indices and masks are built once per step (``AttentionMetadata``) and shared by
every layer. GQA is served by repeating KV heads in the gathered copy (not in the pool).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class PrefillChunk:
    """One sequence with ``n > 1`` new tokens (or a single-token prompt's first step)."""

    token_start: int  # its rows in the flattened batch: token_start .. token_end - 1
    token_end: int
    key_slots: torch.Tensor  # [c + n] pool slots of key positions 0 .. c+n-1
    mask: torch.Tensor  # [n, c + n] bool, True = may attend


@dataclass
class AttentionMetadata:
    slot_mapping: torch.Tensor  # [T] where each new token's K/V goes
    decode_rows: torch.Tensor  # [D] rows of decode tokens in the flattened batch
    decode_key_slots: torch.Tensor  # [D, L_max] pool slots (padding points at slot 0)
    decode_mask: torch.Tensor  # [D, 1, 1, L_max] bool, False on padding
    prefills: list[PrefillChunk]


def slots_of(block_table: torch.Tensor, positions: torch.Tensor,
             tokens_per_block: int) -> torch.Tensor:
    """Pool slots of token ``positions`` (any shape) of a request with ``block_table`` [N]."""
    return block_table[positions // tokens_per_block] * tokens_per_block \
        + positions % tokens_per_block


def build_attention_metadata(query_lens: list[int], context_lens: list[int],
                             block_tables: list[list[int]], tokens_per_block: int,
                             device: torch.device | str = "cpu") -> AttentionMetadata:
    """Gather indices and masks for one step. Block tables must cover ``c + n`` tokens."""
    tables = [torch.tensor(t, dtype=torch.long, device=device) for t in block_tables]
    slot_parts, prefills, decode_seqs = [], [], []
    row = 0
    for i, (n, c) in enumerate(zip(query_lens, context_lens)):
        new_positions = torch.arange(c, c + n, device=device)
        slot_parts.append(slots_of(tables[i], new_positions, tokens_per_block))
        if n == 1 and c > 0:
            decode_seqs.append((i, row))
        else:
            keys = torch.arange(c + n, device=device)
            prefills.append(PrefillChunk(
                token_start=row, token_end=row + n,
                key_slots=slots_of(tables[i], keys, tokens_per_block),
                mask=keys.unsqueeze(0) <= new_positions.unsqueeze(1)))
        row += n
    slot_mapping = (torch.cat(slot_parts) if slot_parts
                    else torch.empty(0, dtype=torch.long, device=device))
    rows, key_slots, mask = _decode_gather(decode_seqs, context_lens, tables, tokens_per_block,
                                           device)
    return AttentionMetadata(slot_mapping, rows, key_slots, mask, prefills)


def _decode_gather(decode_seqs: list[tuple[int, int]], context_lens: list[int],
                   tables: list[torch.Tensor], tokens_per_block: int,
                   device: torch.device | str
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Padded [D, L_max] key slots and mask for the decodes (each has c + 1 keys)."""
    if not decode_seqs:
        empty = torch.empty(0, dtype=torch.long, device=device)
        return empty, empty.view(0, 0), torch.empty(0, 1, 1, 0, dtype=torch.bool, device=device)
    seq_lens = torch.tensor([context_lens[i] + 1 for i, _ in decode_seqs], device=device)
    max_len = int(seq_lens.max())
    max_blocks = -(-max_len // tokens_per_block)
    padded_tables = torch.zeros(len(decode_seqs), max_blocks, dtype=torch.long, device=device)
    for j, (i, _) in enumerate(decode_seqs):
        table = tables[i][:max_blocks]
        padded_tables[j, :len(table)] = table
    keys = torch.arange(max_len, device=device).expand(len(decode_seqs), max_len)
    valid = keys < seq_lens.unsqueeze(1)
    slots = padded_tables.gather(1, keys // tokens_per_block) * tokens_per_block \
        + keys % tokens_per_block
    slots = torch.where(valid, slots, torch.zeros_like(slots))
    rows = torch.tensor([r for _, r in decode_seqs], dtype=torch.long, device=device)
    return rows, slots, valid.view(len(decode_seqs), 1, 1, max_len)


def write_kv(k_pool: torch.Tensor, v_pool: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
             slot_mapping: torch.Tensor) -> None:
    """Store the new tokens' K/V ``[T, kv_heads, head_dim]`` in their pool slots."""
    k_pool[slot_mapping] = k
    v_pool[slot_mapping] = v


def paged_attention(q: torch.Tensor, k_pool: torch.Tensor, v_pool: torch.Tensor,
                    meta: AttentionMetadata, scale: float) -> torch.Tensor:
    """``q [T, heads, head_dim]`` attends to its sequence's keys in the pool; same shape out.

    The new tokens' K/V must already be written (``write_kv``).
    """
    out = torch.empty_like(q)
    groups = q.shape[1] // k_pool.shape[1]  # query heads per KV head (GQA)
    if meta.decode_rows.numel():
        q_d = q[meta.decode_rows].unsqueeze(2)  # [D, heads, 1, head_dim]
        k_d = _heads_first(k_pool[meta.decode_key_slots], groups)  # [D, heads, L, head_dim]
        v_d = _heads_first(v_pool[meta.decode_key_slots], groups)
        o = F.scaled_dot_product_attention(q_d, k_d, v_d, attn_mask=meta.decode_mask,
                                           scale=scale)
        out[meta.decode_rows] = o.squeeze(2)
    for chunk in meta.prefills:
        q_p = q[chunk.token_start:chunk.token_end].transpose(0, 1).unsqueeze(0)
        k_p = _heads_first(k_pool[chunk.key_slots].unsqueeze(0), groups)
        v_p = _heads_first(v_pool[chunk.key_slots].unsqueeze(0), groups)
        o = F.scaled_dot_product_attention(q_p, k_p, v_p, attn_mask=chunk.mask, scale=scale)
        out[chunk.token_start:chunk.token_end] = o.squeeze(0).transpose(0, 1)
    return out


def _heads_first(kv: torch.Tensor, groups: int) -> torch.Tensor:
    """``[B, L, kv_heads, d]`` -> ``[B, kv_heads * groups, L, d]`` (each KV head repeated for
    the ``groups`` query heads that share it, in HF's order: head h uses KV head h // groups)."""
    kv = kv.transpose(1, 2)
    return kv.repeat_interleave(groups, dim=1) if groups > 1 else kv
