"""One gloo rank of the two-rank tensor-parallel test (spawned; importable by name).

Per model, the rank plays one Flying Serving episode without reloading anything:
1. DP (width 1): it starts a request of its own (prefill + 3 decodes) in blocks 40..47;
2. hard preempt -> TP (width 2) with its peer: the batch of ``PROMPTS`` runs to completion
   in blocks 0.. laid out for width 2 (8 tokens per block);
3. back to DP (width 1): the paused request resumes on the KV it left in the pool.
"""
from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist

from tests.executor.helpers import PROMPTS, Driver, blocks_for_tokens, make_runner

PAUSED_PROMPTS = {0: [3, 1, 4, 1, 5, 9, 2, 6, 5], 1: [2, 7, 1, 8, 2, 8]}
MAX_NEW = 8
PAUSED_FIRST_BLOCK = 40
TIMEOUT = timedelta(seconds=60)  # a collective that hangs fails the worker instead


def run_rank(rank: int, port: int, model_dirs: dict[str, str], out_dir: str) -> None:
    torch.set_num_threads(1)  # two ranks share the test machine's cores
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=2, timeout=TIMEOUT)
    try:
        results = {name: _episode(rank, Path(folder)) for name, folder in model_dirs.items()}
        torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _episode(rank: int, folder: Path) -> dict:
    runner = make_runner(folder, max_tp_width=2, num_blocks=48, block_size_tokens=4)
    weights_before = {n: p.data_ptr() for n, p in runner.model.named_parameters()}
    kv_before = runner.kv_cache.storage.data_ptr()

    dp = Driver(runner)
    prompt = PAUSED_PROMPTS[rank]
    n_blocks = blocks_for_tokens(len(prompt) + MAX_NEW, runner.kv_cache.tokens_per_block)
    dp.add(100 + rank, prompt, MAX_NEW,
           list(range(PAUSED_FIRST_BLOCK, PAUSED_FIRST_BLOCK + n_blocks)))
    for _ in range(4):
        dp.step()

    runner.set_width(rank, 2, dist.group.WORLD)
    tp, next_block = Driver(runner), 0
    for i, p in enumerate(PROMPTS):
        n = blocks_for_tokens(len(p) + MAX_NEW, runner.kv_cache.tokens_per_block)
        tp.add(i, p, MAX_NEW, list(range(next_block, next_block + n)))
        next_block += n
    assert next_block <= PAUSED_FIRST_BLOCK
    tp.run()

    runner.set_width(0, 1, None)
    dp.run()
    unmoved = (kv_before == runner.kv_cache.storage.data_ptr() and weights_before ==
               {n: p.data_ptr() for n, p in runner.model.named_parameters()})
    return {"tp_tokens": tp.generated(),
            "tp_logits": {i: tp.logits(i) for i in range(len(PROMPTS))},
            "dp_tokens": dp.generated(), "unmoved": unmoved}
