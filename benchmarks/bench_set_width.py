"""Host cost of a flip's re-parameterisation (``ModelRunner.set_width``) against depth.

    python benchmarks/bench_set_width.py [REPEATS]      # JSON on stdout

To compare two trees (say, before and after a change), run it with ``PYTHONPATH=TREE``.

A: executor.bench_flip.measure_reparam on the tiny model (the bench's own in-process number).
B: ModelRunner.set_width(0, w) -> (0, 1) on dummy models of 2 / 32 / 80 layers (hidden 64,
   8 heads / 8 KV heads, max_tp_width 8), p50 per flip, and the per-parallel-layer slope.
"""
import json
import statistics
import sys
import time

import torch

import executor
from executor.bench_flip import FlipBenchSettings, bench_model, measure_reparam
from executor.kv_cache import PagedKVCache
from executor.loader import dummy_model
from executor.model_config import ModelConfig
from executor.model_runner import ModelRunner
from executor.zero_copy import parallel_layers

torch.set_num_threads(1)
print("executor from", executor.__file__, file=sys.stderr)

s = FlipBenchSettings(model="tiny", num_ranks=2, reparam_repeats=2000)
rp = measure_reparam(s, bench_model(s))
tiny = {w: 1e6 * st["p50_s"] for w, st in rp["widths"].items()}

REPEATS = int(sys.argv[1]) if len(sys.argv) > 1 else 300
deep = {}
for layers in (2, 32, 80):
    cfg = ModelConfig(name=f"deep{layers}", family="llama", vocab_size=256, hidden_size=64,
                      intermediate_size=128, num_layers=layers, num_heads=8, num_kv_heads=8,
                      head_dim=8, max_model_len=256, dtype="float32")
    model = dummy_model(cfg, max_tp_width=8)
    kv = PagedKVCache.for_model(cfg, num_blocks=8, block_size_tokens=4, dtype=model.dtype)
    t0 = time.perf_counter()
    runner = ModelRunner(model, kv)
    prepare_s = time.perf_counter() - t0
    n = len(parallel_layers(model))
    row = {"parallel_layers": n, "runner_init_us": 1e6 * prepare_s}
    for width in (2, 8):
        samples = []
        for _ in range(REPEATS):
            t0 = time.perf_counter()
            runner.set_width(0, width)
            samples.append(time.perf_counter() - t0)
            runner.set_width(0, 1)
        row[f"w{width}_p50_us"] = 1e6 * statistics.median(samples)
    deep[layers] = row
    del runner, model, kv

slope = {w: (deep[80][f"w{w}_p50_us"] - deep[2][f"w{w}_p50_us"])
         / (deep[80]["parallel_layers"] - deep[2]["parallel_layers"]) for w in (2, 8)}
print(json.dumps({"tiny_reparam_p50_us": tiny, "tiny_parallel_layers": rp["parallel_layers"],
                  "deep": deep, "per_parallel_layer_us": slope}, indent=1))
