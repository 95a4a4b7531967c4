"""KV moved from the DP layout into the TP layout over gloo equals the KV a TP prefill of the
same tokens writes, and decoding on it gives the same logits (two spawned ranks, w=2)."""
from tests.executor import requirements  # noqa: F401, I001  (first: skips without torch)

import os
import socket
import time
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from executor.kv_cache import PagedKVCache
from executor.kv_move import head_shards, move_kv_to_tp, read_kv, request_kv_bytes, write_kv
from executor.protocol import KVMoveItem
from executor.step_input import SequenceStep, StepInput
from tests.executor.helpers import make_runner

# One request pre-run on each rank, of different lengths: a real all-to-all, uneven splits.
PROMPTS = {0: [5, 17, 33, 250, 4, 4, 91, 12, 60, 3, 77, 8, 1], 1: [9, 8, 7, 6, 5, 4, 3, 2, 1]}
B_BASE = 4
DP_BLOCKS = {0: [3, 1, 6, 4], 1: [2, 0, 5]}  # scattered, as a real allocator leaves them
# TP tables (8 tokens per block at w=2). Rank 0's moved request reuses one of its own DP
# blocks (block 6): the source must read before anything is written.
MOVED_TP = {0: [6, 10], 1: [11, 12]}
RECOMPUTED_TP = {0: [20, 21], 1: [22, 23]}
DEADLINE_S = 120
# fp32: the TP prefill sums the hidden state in a different order (partial GEMMs + all-reduce)
# from the DP prefill whose KV was moved; K/V differ only by that rounding.
KV_ATOL = 1e-5
LOGITS_ATOL = 1e-4


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _prefill(rid: int, prompt: list[int], table: list[int]) -> SequenceStep:
    return SequenceStep(rid, prompt, 0, table, samples=True)


def run_rank(rank: int, port: int, model_dir: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=2, timeout=timedelta(seconds=60))
    try:
        torch.save(_episode(rank, Path(model_dir)), Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _episode(rank: int, folder: Path) -> dict:
    runner = make_runner(folder, max_tp_width=2, num_blocks=32, block_size_tokens=B_BASE)
    kv = runner.kv_cache
    # DP: each rank pre-runs its own request (soft preempt's pre-run in DP mode).
    runner.execute(StepInput(1, [_prefill(rank, PROMPTS[rank], DP_BLOCKS[rank])], 0, 0))
    dp_kv = read_kv(kv, 1, DP_BLOCKS[rank], len(PROMPTS[rank]))
    runner.set_width(rank, 2, dist.group.WORLD)  # the flip
    items = [KVMoveItem(src, len(PROMPTS[src]), tuple(DP_BLOCKS[src]), tuple(MOVED_TP[src]))
             for src in (0, 1)]
    sent, received = move_kv_to_tp(kv, items, (0, 1), rank, dist.group.WORLD)
    # Recompute: the TP group prefills the same tokens into other blocks.
    runner.execute(StepInput(2, [_prefill(10 + s, PROMPTS[s], RECOMPUTED_TP[s]) for s in (0, 1)],
                             1, 1))
    moved = {s: read_kv(kv, 2, MOVED_TP[s], len(PROMPTS[s])) for s in (0, 1)}
    recomputed = {s: read_kv(kv, 2, RECOMPUTED_TP[s], len(PROMPTS[s])) for s in (0, 1)}
    # Decode one token on top of each copy: attention must read the moved KV as its own.
    decodes = []
    for s in (0, 1):
        n = len(PROMPTS[s])
        decodes += [SequenceStep(s, [42], n, MOVED_TP[s], True),
                    SequenceStep(10 + s, [42], n, RECOMPUTED_TP[s], True)]
    out = runner.execute(StepInput(2, decodes, 2, 2), return_logits=True)
    return {"dp_kv": dp_kv, "moved": moved, "recomputed": recomputed, "logits": out.logits,
            "sent": sent, "received": received,
            "dp_kv_after": read_kv(kv, 1, DP_BLOCKS[1], len(PROMPTS[1])) if rank == 1 else None,
            "request_bytes": {s: request_kv_bytes(kv, len(PROMPTS[s])) for s in (0, 1)}}


def test_moved_kv_equals_tp_prefill_kv(tiny_llama_dir, tmp_path):
    ctx = mp.start_processes(run_rank, args=(_free_port(), str(tiny_llama_dir), str(tmp_path)),
                             nprocs=2, join=False, start_method="spawn")
    deadline = time.monotonic() + DEADLINE_S
    while not ctx.join(timeout=1):  # raises if a rank raised
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail(f"KV move ranks did not finish within {DEADLINE_S} s")
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1)]

    for rank, got in enumerate(ranks):
        for src in (0, 1):
            # Member `rank` holds KV heads [rank] (2 KV heads, width 2) of every token.
            assert got["moved"][src].shape[3] == 1
            torch.testing.assert_close(got["moved"][src], got["recomputed"][src],
                                       atol=KV_ATOL, rtol=0)
            # ... and it is exactly (bit for bit) the source's DP KV, head shard `rank`.
            expected = head_shards(ranks[src]["dp_kv"], 2)[rank]
            assert torch.equal(got["moved"][src], expected)
        logits = got["logits"]  # rows: moved 0, recomputed 0, moved 1, recomputed 1
        torch.testing.assert_close(logits[0], logits[1], atol=LOGITS_ATOL, rtol=0)
        torch.testing.assert_close(logits[2], logits[3], atol=LOGITS_ATOL, rtol=0)
        # (w-1)/w of each request crosses the group: one head of two per token.
        assert got["sent"] == got["request_bytes"][rank] // 2
        assert got["received"] == got["request_bytes"][1 - rank] // 2
    # Rank 1's DP blocks do not overlap its TP blocks: its DP copy is left as it was.
    assert torch.equal(ranks[1]["dp_kv_after"], ranks[1]["dp_kv"])


def test_read_write_round_trip_at_each_width():
    kv = PagedKVCache(num_layers=2, num_kv_heads=4, head_dim=3, num_blocks=8,
                      block_size_tokens=2, dtype=torch.float32)
    for width in (1, 2, 4):
        values = torch.randn(2, 2, 5, 4 // width, 3)
        table = [7, 0, 3][:-(-5 // (width * 2))]
        write_kv(kv, width, table, values)
        assert torch.equal(read_kv(kv, width, table, 5), values)
    with pytest.raises(ValueError, match="cannot hold"):
        read_kv(kv, 1, [0], 3)
    with pytest.raises(ValueError, match="outside the pool"):
        read_kv(kv, 1, [8, 9], 3)
