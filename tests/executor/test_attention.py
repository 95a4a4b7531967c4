"""Paged attention over scattered blocks equals dense causal attention per sequence."""
from tests.executor import requirements  # noqa: F401, I001  (first: skips without torch)

import torch

from executor.attention import build_attention_metadata, paged_attention, write_kv

HEADS, KV_HEADS, DIM, TPB = 4, 2, 8, 4


def _dense_reference(q, k, v, context):
    """Causal attention of n new queries over c + n keys, GQA by repeating KV heads."""
    n, L = q.shape[0], k.shape[0]
    k = k.repeat_interleave(HEADS // KV_HEADS, dim=1)
    v = v.repeat_interleave(HEADS // KV_HEADS, dim=1)
    scores = torch.einsum("qhd,khd->hqk", q, k) * DIM ** -0.5
    allowed = torch.arange(L)[None, :] <= (context + torch.arange(n))[:, None]
    scores = scores.masked_fill(~allowed, float("-inf"))
    return torch.einsum("hqk,khd->qhd", scores.softmax(-1), v)


def test_mixed_prefill_chunks_and_decodes_over_scattered_blocks():
    torch.manual_seed(0)
    # (cached tokens, new tokens): a fresh prefill, a second chunk, two decodes of different
    # lengths (padding in the decode batch), and a one-token prompt.
    shapes = [(0, 6), (5, 7), (9, 1), (2, 1), (0, 1)]
    num_blocks = 32
    k_pool = torch.zeros(num_blocks * TPB, KV_HEADS, DIM)
    v_pool = torch.zeros_like(k_pool)
    free = torch.randperm(num_blocks).tolist()  # scattered, non-monotonic block tables
    tables, full_k, full_v = [], [], []
    for c, n in shapes:
        table = [free.pop() for _ in range(-(-(c + n) // TPB))]
        tables.append(table)
        full_k.append(torch.randn(c + n, KV_HEADS, DIM))
        full_v.append(torch.randn(c + n, KV_HEADS, DIM))
        # The cached context was written by earlier steps.
        pos = torch.arange(c)
        slots = torch.tensor(table)[pos // TPB] * TPB + pos % TPB
        k_pool[slots], v_pool[slots] = full_k[-1][:c], full_v[-1][:c]
    meta = build_attention_metadata([n for _, n in shapes], [c for c, _ in shapes], tables, TPB)
    new_k = torch.cat([k[c:] for k, (c, _) in zip(full_k, shapes)])
    new_v = torch.cat([v[c:] for v, (c, _) in zip(full_v, shapes)])
    write_kv(k_pool, v_pool, new_k, new_v, meta.slot_mapping)
    q = torch.randn(sum(n for _, n in shapes), HEADS, DIM)
    out = paged_attention(q, k_pool, v_pool, meta, DIM ** -0.5)
    assert meta.decode_rows.tolist() == [13, 14]  # the two decodes share one batched call
    row = 0
    for (c, n), k, v in zip(shapes, full_k, full_v):
        expected = _dense_reference(q[row:row + n], k, v, c)
        torch.testing.assert_close(out[row:row + n], expected, atol=1e-5, rtol=1e-5)
        row += n
