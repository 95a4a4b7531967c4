"""TP=2 over two gloo ranks on 127.0.0.1 matches TP=1, and switching is views only."""
from tests.executor import requirements  # noqa: F401, I001  (first: skips without torch)

import socket
import time

import pytest
import torch
import torch.multiprocessing as mp

from tests.executor.helpers import PROMPTS, Driver, blocks_for_tokens, hf_greedy, make_hf_model, \
    make_runner, save_hf
from tests.executor.tp_worker import MAX_NEW, PAUSED_PROMPTS, run_rank

WORKER_DEADLINE_S = 180
# fp32: TP changes only the order of the sums (two partial GEMMs + all-reduce).
LOGITS_ATOL = 1e-4


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawn_two_ranks(model_dirs: dict[str, str], out_dir) -> None:
    ctx = mp.start_processes(run_rank, args=(_free_port(), model_dirs, str(out_dir)), nprocs=2,
                             join=False, start_method="spawn")
    deadline = time.monotonic() + WORKER_DEADLINE_S
    while not ctx.join(timeout=1):  # raises if a rank raised
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail(f"TP workers did not finish within {WORKER_DEADLINE_S} s")


def _tp1_reference(folder):
    runner = make_runner(folder, num_blocks=48, block_size_tokens=4)
    driver = Driver(runner)
    for i, p in enumerate(PROMPTS):
        n = blocks_for_tokens(len(p) + MAX_NEW, 4)
        driver.add(i, p, MAX_NEW, list(range(i * 8, i * 8 + n)))
    return driver.run(), {i: driver.logits(i) for i in range(len(PROMPTS))}


def test_tp2_over_gloo_matches_tp1_and_switches_in_place(tiny_llama, tmp_path):
    qwen2 = make_hf_model("qwen2", seed=2, num_hidden_layers=2, tie_word_embeddings=True)
    models = {"llama": tiny_llama[0], "qwen2_bias_tied": qwen2}
    dirs = {"llama": str(tiny_llama[1]), "qwen2_bias_tied": str(save_hf(qwen2, tmp_path / "q2"))}
    _spawn_two_ranks(dirs, tmp_path)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1)]

    for name, hf in models.items():
        tp1_tokens, tp1_logits = _tp1_reference(dirs[name])
        expected = {i: hf_greedy(hf, p, MAX_NEW) for i, p in enumerate(PROMPTS)}
        assert tp1_tokens == expected, name
        for rank, result in enumerate(ranks):
            got = result[name]
            assert got["tp_tokens"] == expected, (name, rank)
            for i in range(len(PROMPTS)):
                torch.testing.assert_close(got["tp_logits"][i], tp1_logits[i],
                                           atol=LOGITS_ATOL, rtol=0)
            # The request paused for the TP episode resumes on its untouched width-1 KV.
            rid = 100 + rank
            assert got["dp_tokens"][rid] == hf_greedy(hf, PAUSED_PROMPTS[rank], MAX_NEW)
            assert got["unmoved"], "a switch moved a weight or the KV pool"
        # Both ranks of the group logged bit-identical logits (all-gathered, same batch).
        for i in range(len(PROMPTS)):
            assert torch.equal(ranks[0][name]["tp_logits"][i], ranks[1][name]["tp_logits"][i])
