"""Greedy tokens of our engine (paged KV, block size 4, batched) equal transformers'."""
from tests.executor import requirements  # noqa: F401, I001  (first: skips without torch)

import pytest
import torch

from executor.step_input import build_step_input
from policies.block_manager import BlockManager
from policies.request import Request
from policies.scheduler import Scheduler, SchedulerConfig
from tests.executor.helpers import (PROMPTS, Driver, blocks_for_tokens, hf_greedy, make_hf_model,
                                    make_runner, save_hf)
from traces.spec import RequestSpec

MAX_NEW = 8


def _expected(hf, prompts=PROMPTS, max_new=MAX_NEW):
    return {i: hf_greedy(hf, p, max_new) for i, p in enumerate(prompts)}


def _generate(runner, prompts=PROMPTS, max_new=MAX_NEW, max_chunk=None):
    driver, next_block = Driver(runner), 0
    tpb = runner.kv_cache.tokens_per_block
    for i, p in enumerate(prompts):
        n = blocks_for_tokens(len(p) + max_new, tpb)
        # Every other request takes its blocks in reverse: tables need not be increasing.
        blocks = list(range(next_block, next_block + n))
        driver.add(i, p, max_new, blocks[::-1] if i % 2 else blocks)
        next_block += n
    return driver.run(max_chunk), driver


def test_batched_greedy_equals_transformers(tiny_llama):
    hf, folder = tiny_llama
    tokens, _ = _generate(make_runner(folder))
    assert tokens == _expected(hf)


def test_chunked_prefill_in_two_chunks_mixed_with_decodes(tiny_llama):
    """Prompts of 7 and 13 tokens are prefilled in chunks of at most 7, so the 13-token prompt
    takes two chunks (the second on top of 7 cached tokens) while the short prompts are
    already decoding in the same steps."""
    hf, folder = tiny_llama
    tokens, driver = _generate(make_runner(folder), max_chunk=7)
    second_chunk = [s for s in driver.steps[1].sequences if s.request_id == 2][0]
    assert (second_chunk.num_computed_tokens, second_chunk.num_new_tokens) == (7, 6)
    assert any(s.num_new_tokens == 1 for s in driver.steps[1].sequences)  # a decode beside it
    assert tokens == _expected(hf)


def test_control_plane_scheduler_drives_the_runner(tiny_llama):
    """The coordinator loop in miniature: policies' Scheduler and BlockManager plan each step
    (a 10-token budget forces chunked prefill), build_step_input adds token ids and tables."""
    hf, folder = tiny_llama
    runner = make_runner(folder, num_blocks=32)
    scheduler = Scheduler(0, 1, BlockManager(32, runner.kv_cache.tokens_per_block),
                          SchedulerConfig(max_num_batched_tokens=10))
    requests = {i: Request(RequestSpec(i, 0.0, len(p), MAX_NEW)) for i, p in enumerate(PROMPTS)}
    tokens = {i: list(p) for i, p in enumerate(PROMPTS)}
    for r in requests.values():
        scheduler.add_request(r)
    chunked, now = False, 0.0
    while scheduler.has_work:
        out = scheduler.schedule(now)
        step = build_step_input(out, tokens, {i: r.block_ids for i, r in requests.items()})
        chunked |= any(s.num_computed_tokens > 0 and s.num_new_tokens > 1
                       for s in step.sequences)
        for rid, token in runner.execute(step).sampled_token_ids.items():
            tokens[rid].append(token)
        scheduler.update(out, now)
        now += 1.0
    assert chunked
    assert {i: t[len(PROMPTS[i]):] for i, t in tokens.items()} == _expected(hf)


# Each variant exercises a config path: Qwen2 QKV bias + tied embeddings, Qwen3 q/k norm with
# head_dim != hidden/heads, Llama 3.1 RoPE scaling + attention bias (o_proj bias too), Mistral.
VARIANTS = {
    "qwen2_bias_tied": ("qwen2", dict(tie_word_embeddings=True)),
    "qwen3_qk_norm": ("qwen3", dict(head_dim=32, num_hidden_layers=2)),
    "llama3_rope_bias": ("llama", dict(attention_bias=True, num_hidden_layers=2, rope_parameters={
        "rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
        "high_freq_factor": 4.0, "original_max_position_embeddings": 16})),
    "mistral": ("mistral", dict(num_hidden_layers=2, sliding_window=None)),
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_architecture_variants_match_transformers(variant, tmp_path):
    kind, overrides = VARIANTS[variant]
    hf = make_hf_model(kind, seed=1, **overrides)
    tokens, _ = _generate(make_runner(save_hf(hf, tmp_path), max_tp_width=2))
    assert tokens == _expected(hf)


def test_logits_match_transformers_forward(tiny_llama):
    """First-token logits equal the HF forward's last-position logits (fp32, tight)."""
    hf, folder = tiny_llama
    _, driver = _generate(make_runner(folder), max_new=1)
    for i, p in enumerate(PROMPTS):
        with torch.no_grad():
            expected = hf(torch.tensor([p])).logits[0, -1]
        torch.testing.assert_close(driver.logits(i)[0], expected, atol=1e-4, rtol=1e-4)
