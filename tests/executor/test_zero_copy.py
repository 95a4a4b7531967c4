"""Zero copy after any switch sequence: every weight and KV view lies inside its resident
storage and is one contiguous shard, width 1 restores the full views bit-exactly, weights and
KV never move, and memory does not grow across 100+ flips (in-process and over gloo)."""
from tests.executor import requirements  # noqa: F401, I001  (first: skips without torch)

import asyncio
import dataclasses
import random
import tempfile

import pytest
import torch

from executor.kv_cache import PagedKVCache
from executor.loader import load_model
from executor.model_config import ModelConfig
from executor.model_runner import ModelRunner
from executor.parallel import FusedColumnParallelLinear
from executor.protocol import (AllocateKV, CheckViews, MemoryReport, MemoryUsage, SetWidth,
                               ViewCheck, WorkerConfig)
from executor.worker_pool import WorkerPool
from executor.zero_copy import parallel_layers, resident_ptrs, view_inside, view_violations
from tests.executor.helpers import make_hf_model, save_hf

WIDTHS = (1, 2, 4)
DEADLINE_S = 60
# Workers' model: ~2.8 MiB of fp32 weights per rank, so one leaked copy of the weights, or a
# leak of 10 KiB per flip, breaks the bound below.
SHAPE = ModelConfig(name="zero-copy", family="llama", vocab_size=512, hidden_size=128,
                    intermediate_size=256, num_layers=4, num_heads=4, num_kv_heads=2,
                    head_dim=32, max_model_len=256, dtype="float32")
# RSS moves in 4 KiB pages; measured growth over 200 flips was 0-4 KiB per rank (allocator
# and Python object churn). 1 MiB leaves room for that noise and is still under one weight
# copy (2.8 MiB) and under a 5 KiB-per-flip leak over the 200 flips.
RSS_GROWTH_BOUND_BYTES = 1 << 20
MEMORY_FLIPS = 100  # DP -> TP -> DP round trips: 200 SetWidth switches


@pytest.fixture(scope="module")
def runner(tmp_path_factory) -> ModelRunner:
    """Qwen2 (QKV bias, tied embeddings), 8 heads / 4 KV heads: widths 1, 2 and 4 all legal;
    vocab 250 is padded to a multiple of 4."""
    hf = make_hf_model("qwen2", num_attention_heads=8, num_key_value_heads=4, head_dim=8,
                       num_hidden_layers=2, vocab_size=250, tie_word_embeddings=True)
    model = load_model(save_hf(hf, tmp_path_factory.mktemp("zero_copy")), max_tp_width=4)
    kv = PagedKVCache.for_model(model.config, num_blocks=16, block_size_tokens=4,
                                dtype=model.dtype)
    return ModelRunner(model, kv)


def _random_switches(rng: random.Random, count: int):
    for _ in range(count):
        width = rng.choice(WIDTHS)
        yield rng.randrange(width), width


def test_random_switches_keep_every_view_inside_its_resident_tensor(runner):
    model, kv = runner.model, runner.kv_cache
    runner.set_width(0, 1)
    full = {name: layer.active_weight.clone() for name, layer in parallel_layers(model)}
    ptrs = resident_ptrs(model)
    kv.storage.normal_()  # KV bytes that must survive every re-view untouched
    kv_bytes = kv.storage.clone()
    for rank, width in _random_switches(random.Random(5), 300):
        runner.set_width(rank, width)
        assert view_violations(model, kv) == [], (rank, width)
        assert resident_ptrs(model) == ptrs  # no weight was reallocated or moved
        for name, layer in parallel_layers(model):
            if isinstance(layer, FusedColumnParallelLinear):  # one fused GEMM per width
                rows = layer.out_features // width
                assert layer.active_weight.is_contiguous()
                assert layer.active_weight.data_ptr() == layer.weight[rank * rows].data_ptr()
        k, v = kv.layer(0)
        assert view_inside(k, kv.storage) and view_inside(v, kv.storage)
        assert k.shape[1] == kv.num_kv_heads // width
    runner.set_width(0, 1)
    for name, layer in parallel_layers(model):
        assert layer.active_weight.data_ptr() == layer.weight.data_ptr(), name
        assert layer.active_weight.shape == layer.weight.shape, name
        assert torch.equal(layer.active_weight, full[name]), name
    assert torch.equal(kv.storage, kv_bytes)


def test_the_checker_sees_a_copy_a_wrong_shard_and_a_strided_view(runner):
    model = runner.model
    runner.set_width(1, 2)
    layer = next(m for _, m in parallel_layers(model)
                 if isinstance(m, FusedColumnParallelLinear))
    good = layer.active_weight
    try:
        layer.active_weight = good.clone()
        assert any("outside the resident" in p for p in view_violations(model))
        layer.active_weight = layer.weight.narrow(0, 0, good.shape[0])  # rank 0's rows
        assert any("not rank 1's shard" in p for p in view_violations(model))
        layer.active_weight = layer.weight[:, : good.shape[1] // 2]
        assert any("not one contiguous" in p for p in view_violations(model))
    finally:
        layer.active_weight = good
        runner.set_width(0, 1)
    assert view_violations(model) == []


@pytest.mark.gpu
def test_cuda_allocations_do_not_grow_across_switches(tmp_path):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    from executor.loader import dummy_model

    config = dataclasses.replace(SHAPE, num_kv_heads=4)  # widths 1, 2 and 4
    model = dummy_model(config, max_tp_width=4, device="cuda")
    kv = PagedKVCache.for_model(config, num_blocks=64, block_size_tokens=16,
                                dtype=model.dtype, device="cuda")
    runner = ModelRunner(model, kv)
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    for rank, width in _random_switches(random.Random(1), 200):
        runner.set_width(rank, width)
        assert view_violations(model, kv) == []
    runner.set_width(0, 1)
    torch.cuda.synchronize()
    assert torch.cuda.memory_allocated() == before


# --- over gloo, in real worker processes ------------------------------------------------------
def _configs(rendezvous_dir: str) -> list[WorkerConfig]:
    return [WorkerConfig(rank=r, world_size=2, device="cpu",
                         rendezvous=f"file://{rendezvous_dir}/store", model_folder=None,
                         model_config=SHAPE, dtype=None, max_tp_width=2, seed=3,
                         num_threads=1, collective_timeout_s=30) for r in range(2)]


async def _layout(pool: WorkerPool, tp: bool) -> None:
    if tp:
        await pool.request([0, 1], SetWidth((0, 1)), DEADLINE_S, "join TP")
    else:
        await asyncio.gather(*(pool.request([r], SetWidth((r,)), DEADLINE_S, "run alone")
                               for r in (0, 1)))


async def _views(pool: WorkerPool) -> list[ViewCheck]:
    return await pool.request([0, 1], CheckViews(), DEADLINE_S, "check views")


async def _memory(pool: WorkerPool) -> list[MemoryUsage]:
    return await pool.request([0, 1], MemoryReport(), DEADLINE_S, "report memory")


def test_workers_switch_in_place_and_memory_does_not_grow():
    async def scenario():
        with tempfile.TemporaryDirectory() as rdv:
            pool = WorkerPool(_configs(rdv))
            await pool.start(DEADLINE_S)
            try:
                await pool.request([0, 1], AllocateKV(64, 16), DEADLINE_S, "allocate")
                first = await _views(pool)
                rng = random.Random(11)
                for _ in range(30):  # a random walk of layouts, checked after each switch
                    tp = rng.random() < 0.5
                    await _layout(pool, tp)
                    for check, start in zip(await _views(pool), first):
                        assert check.violations == (), check.violations
                        assert check.width == (2 if tp else 1)
                        assert check.resident_ptrs == start.resident_ptrs
                        assert check.kv_storage_ptr == start.kv_storage_ptr
                baseline = await _memory(pool)  # after the first switches (warm)
                for _ in range(MEMORY_FLIPS):
                    await _layout(pool, True)
                    await _layout(pool, False)
                after = await _memory(pool)
                final = await _views(pool)
            finally:
                await pool.shutdown(timeout_s=10)
            return first, baseline, after, final

    first, baseline, after, final = asyncio.run(scenario())
    assert all(c.num_views > 0 for c in first)
    for start, end, check in zip(baseline, after, final):
        growth = end.rss_bytes - start.rss_bytes
        assert growth <= RSS_GROWTH_BOUND_BYTES, \
            f"rank {start.rank}: RSS grew {growth} bytes over {2 * MEMORY_FLIPS} switches"
        # Back at width 1 (DP): every view is its whole resident tensor again.
        assert check.width == 1 and check.violations == ()
