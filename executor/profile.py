"""``python -m executor profile``: measure this machine's step and switch costs on the real
workers, for the simulator's profiled predictor (``sim.profiled``).

The grid is in the units the simulator prices (``policies.plan.StepShape``): every point is a
synthetic step (token ids, block tables) sent to real workers over the control channel, and
its cost is the coordinator-observed round trip (plan pickled, forward, sampling, reply):
exactly what an engine loop waits for per step. At width w every aligned group of w ranks
runs the same step at once, as the engines of a layout do (they share the machine), and
every group's round trip is one sample. Switch costs: the flip (``SetWidth`` to every rank,
DP <-> all-rank TP) is measured directly; recompute is a prefill (in the grid) and drain is
whatever the scheduler makes of the step costs, so the simulator derives both.

The profile is one JSON file (format ``PROFILE_FORMAT``) recording the hardware, software,
model shape and run settings beside the measurements, so a reader can refuse a mismatch.
"""
from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from executor.protocol import AllocateKV, SetWidth, Step
from executor.serve_config import (ResolvedModel, ServeConfig, ServeConfigError, model_spec,
                                   resolve_model, threads_per_rank, worker_configs)
from executor.step_input import SequenceStep, StepInput
from executor.worker_pool import WorkerPool
from policies.layout import candidate_groups
from policies.plan import ScheduledRequest, SchedulerOutput
from policies.specs import kv_block_bytes_per_gpu

log = logging.getLogger(__name__)

PROFILE_FORMAT = "flying-serving-step-profile/1"
SHAPE_KEYS = ("tp_gpus", "num_tokens", "num_seqs", "num_logits", "attn_pairs", "kv_tokens_read",
              "num_prefill_tokens")


@dataclass
class ProfileGrid:
    """The step shapes measured at every width. A point that needs more KV than the pool
    holds, or more tokens than ``max_model_len``, is skipped (and said so)."""

    prefill_tokens: list[int] = field(default_factory=lambda: [8, 32, 128, 256, 512, 1024])
    prefill_context_tokens: list[int] = field(default_factory=lambda: [0, 512])
    decode_batches: list[int] = field(default_factory=lambda: [1, 2, 4, 8, 16, 32, 64])
    decode_context_tokens: list[int] = field(default_factory=lambda: [16, 128, 512, 1024])
    # A prefill chunk beside running decodes: the mixed steps of chunked prefill.
    mixed_prefill_tokens: list[int] = field(default_factory=lambda: [64, 256])
    mixed_decode_batches: list[int] = field(default_factory=lambda: [4, 16])
    mixed_context_tokens: int = 256
    repeats: int = 5
    warmup: int = 2
    flips: int = 30

    def check(self) -> None:
        for name in ("prefill_tokens", "decode_batches", "decode_context_tokens"):
            values = getattr(self, name)
            if not values or min(values) < 1:
                raise ValueError(f"profile grid: {name} must be a non-empty list of positive "
                                 f"integers, got {values}")
        if min(self.prefill_context_tokens, default=0) < 0:
            raise ValueError("profile grid: prefill_context_tokens must be >= 0")
        if self.repeats < 1 or self.warmup < 0 or self.flips < 0:
            raise ValueError("profile grid: repeats >= 1, warmup >= 0 and flips >= 0")


@dataclass(frozen=True)
class SeqSpec:
    """One synthetic sequence: ``new_tokens`` computed on top of ``cached_tokens``."""

    new_tokens: int
    cached_tokens: int


def grid_points(grid: ProfileGrid) -> list[tuple[str, list[SeqSpec]]]:
    points: list[tuple[str, list[SeqSpec]]] = []
    for ctx in grid.prefill_context_tokens:
        for n in grid.prefill_tokens:
            points.append(("prefill", [SeqSpec(n, ctx)]))
    for ctx in grid.decode_context_tokens:
        for b in grid.decode_batches:
            points.append(("decode", [SeqSpec(1, ctx)] * b))
    for n in grid.mixed_prefill_tokens:
        for b in grid.mixed_decode_batches:
            points.append(("mixed", [SeqSpec(n, 0)] + [SeqSpec(1, grid.mixed_context_tokens)] * b))
    return points


def scheduler_output(seqs: list[SeqSpec], width: int) -> SchedulerOutput:
    """The control plane's view of the synthetic step: its ``shape()`` is what we record, so
    the profile's features are computed by the very code the simulator prices with."""
    out = SchedulerOutput(group_id=0, tp_gpus=width)
    out.scheduled = [ScheduledRequest(i, s.new_tokens, s.cached_tokens, True)
                     for i, s in enumerate(seqs)]
    return out


def blocks_needed(seqs: list[SeqSpec], tokens_per_block: int) -> int:
    return sum(-(-(s.cached_tokens + s.new_tokens) // tokens_per_block) for s in seqs)


def step_input(seqs: list[SeqSpec], width: int, tokens_per_block: int, vocab_size: int,
               step_id: int) -> StepInput:
    """Disjoint block tables from block 0 up; token ids cycle through the vocabulary (the
    cost of a step does not depend on which ids, and KV contents are never read back)."""
    sequences, next_block = [], 0
    for i, s in enumerate(seqs):
        n_blocks = -(-(s.cached_tokens + s.new_tokens) // tokens_per_block)
        table = list(range(next_block, next_block + n_blocks))
        next_block += n_blocks
        ids = [(7 * i + 13 * t + 1) % vocab_size for t in range(s.new_tokens)]
        sequences.append(SequenceStep(request_id=i, token_ids=ids,
                                      num_computed_tokens=s.cached_tokens, block_table=table,
                                      samples=True))
    return StepInput(width=width, sequences=sequences, sampling_seed=step_id, step_id=step_id)


def widths_for(num_ranks: int) -> list[int]:
    return sorted({g.num_engines for g in candidate_groups(num_ranks)})


def groups_at(width: int, num_ranks: int) -> list[tuple[int, ...]]:
    return [tuple(range(first, first + width)) for first in range(0, num_ranks, width)]


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in [0, 100]) of a non-empty list."""
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))
    return ordered[index]


class Profiler:
    def __init__(self, cfg: ServeConfig, model: ResolvedModel, grid: ProfileGrid) -> None:
        self.cfg, self.model, self.grid = cfg, model, grid
        self.pool: WorkerPool | None = None
        self.num_blocks = 0
        self.step_id = 0
        self.skipped: list[str] = []

    # --- workers -------------------------------------------------------------------------

    async def run(self) -> dict:
        with tempfile.TemporaryDirectory(prefix="flying-profile-") as rendezvous:
            self.pool = WorkerPool(worker_configs(self.cfg, self.model, rendezvous),
                                   start_method=self.cfg.start_method)
            try:
                ready = await self.pool.start(self.cfg.startup_timeout_s)
                block_bytes = kv_block_bytes_per_gpu(model_spec(self.model), 1,
                                                     self.cfg.block_size_tokens)
                self.num_blocks = int(self.cfg.kv_cache_mib * 2**20 // block_bytes)
                await self._all(AllocateKV(self.num_blocks, self.cfg.block_size_tokens),
                                "allocate the KV pool")
                steps = []
                for width in widths_for(self.cfg.num_ranks):
                    steps += await self.profile_width(width)
                switch = await self.profile_flips()
            finally:
                await self.pool.shutdown(timeout_s=10.0)
        return self.document(ready, steps, switch)

    async def _all(self, msg, what: str) -> list:
        return await self.pool.request(range(self.cfg.num_ranks), msg,
                                       self.cfg.step_timeout_s, what)

    async def set_layout(self, width: int) -> None:
        await asyncio.gather(*(self.pool.request(g, SetWidth(g), self.cfg.step_timeout_s,
                                                 f"join group {g}")
                               for g in groups_at(width, self.cfg.num_ranks)))

    # --- steps ---------------------------------------------------------------------------
    async def profile_width(self, width: int) -> list[dict]:
        await self.set_layout(width)
        tokens_per_block = width * self.cfg.block_size_tokens  # B(p) = p * B_base
        rows = []
        for kind, seqs in grid_points(self.grid):
            reason = self._unfit(seqs, tokens_per_block)
            if reason:
                self.skipped.append(f"width {width} {kind} {len(seqs)} seq(s): {reason}")
                continue
            samples = await self.time_step(seqs, width, tokens_per_block)
            shape = scheduler_output(seqs, width).shape()
            rows.append({"kind": kind, **dataclasses.asdict(shape),
                         "step_s": statistics.median(samples),
                         "step_s_mean": statistics.fmean(samples),
                         "step_s_p90": percentile(samples, 90), "samples": len(samples)})
            log.info("width %d %-7s tokens=%-5d seqs=%-3d kv=%-6d  %.2f ms", width, kind,
                     shape.num_tokens, shape.num_seqs, shape.kv_tokens_read,
                     1e3 * rows[-1]["step_s"])
        return rows

    def _unfit(self, seqs: list[SeqSpec], tokens_per_block: int) -> str | None:
        longest = max(s.cached_tokens + s.new_tokens for s in seqs)
        if longest > self.model.max_model_len:
            return f"{longest} tokens > max_model_len {self.model.max_model_len}"
        if blocks_needed(seqs, tokens_per_block) > self.num_blocks:
            return f"needs more than the {self.num_blocks} KV blocks of --kv-cache-mib"
        return None

    async def time_step(self, seqs: list[SeqSpec], width: int, tokens_per_block: int
                        ) -> list[float]:
        groups = groups_at(width, self.cfg.num_ranks)
        samples: list[float] = []
        for i in range(self.grid.warmup + self.grid.repeats):
            self.step_id += 1
            step = step_input(seqs, width, tokens_per_block, self.model.config.vocab_size,
                              self.step_id)
            times = await asyncio.gather(*(self._timed_step(g, step) for g in groups))
            if i >= self.grid.warmup:
                samples.extend(times)
        return samples

    async def _timed_step(self, ranks: tuple[int, ...], step: StepInput) -> float:
        t0 = time.perf_counter()
        await self.pool.request(ranks, Step(step), self.cfg.step_timeout_s,
                                f"finish step {step.step_id}")
        return time.perf_counter() - t0

    # --- switches ------------------------------------------------------------------------
    async def profile_flips(self) -> dict:
        """DP (every rank alone) <-> TP (all ranks), each direction ``flips`` times: the
        round trip of ``SetWidth`` to every rank, as the coordinator's flip waits for it."""
        n = self.cfg.num_ranks
        if n == 1 or self.grid.flips == 0:
            return {"flip_s_p50": 0.0, "flip_s_p99": 0.0, "flips": 0}
        to_tp, to_dp = [], []
        await self.set_layout(1)
        for _ in range(self.grid.flips):
            t0 = time.perf_counter()
            await self.set_layout(n)
            to_tp.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            await self.set_layout(1)
            to_dp.append(time.perf_counter() - t0)
        both = to_tp + to_dp
        return {"flip_s_p50": statistics.median(both), "flip_s_p99": percentile(both, 99),
                "flip_s_mean": statistics.fmean(both), "dp_to_tp_s_p50": statistics.median(to_tp),
                "tp_to_dp_s_p50": statistics.median(to_dp), "flips": len(both)}

    # --- the file ------------------------------------------------------------------------
    def document(self, ready, steps: list[dict], switch: dict) -> dict:
        spec = model_spec(self.model)
        return {
            "format": PROFILE_FORMAT,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "hardware": hardware_description(self.cfg.device, [r.device for r in ready]),
            "software": software_versions(),
            "model": dataclasses.asdict(spec),
            "settings": {"device": self.cfg.device, "num_ranks": self.cfg.num_ranks,
                         "threads_per_rank": threads_per_rank(self.cfg.device, self.cfg.num_ranks,
                                                              self.cfg.threads_per_rank),
                         "block_size_tokens": self.cfg.block_size_tokens,
                         "kv_blocks_per_rank": self.num_blocks, "dtype": spec.dtype,
                         "dummy_weights": self.model.folder is None,
                         "repeats": self.grid.repeats, "warmup": self.grid.warmup},
            "steps": steps,
            "switch": switch,
            "skipped": self.skipped,
        }


def hardware_description(device: str, worker_devices: list[str]) -> dict:
    info = {"device": device, "machine": platform.machine(), "cpu": cpu_model(),
            "cpu_count": os.cpu_count(), "worker_devices": worker_devices}
    if device == "cuda":
        import torch
        info["gpu"] = torch.cuda.get_device_name(0)
        info["gpu_memory_bytes"] = torch.cuda.get_device_properties(0).total_memory
    return info


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def software_versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version
    out = {"python": platform.python_version()}
    for pkg in ("torch", "flying-serving"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = None
    return out


# --- command line ----------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults, grid = ServeConfig(model=""), ProfileGrid()
    add = parser.add_argument
    add("--model", required=True, help="an HF folder, or a named shape from conf/model "
                                       "(dummy weights), e.g. tiny, llama3_8b")
    add("--num-ranks", type=int, default=1,
        help="worker processes; every candidate TP width up to it is profiled")
    add("--device", choices=["cpu", "cuda"], default="cpu")
    add("--dtype", default="auto")
    add("--block-size", dest="block_size_tokens", type=int, default=defaults.block_size_tokens)
    add("--kv-cache-mib", type=float, default=defaults.kv_cache_mib, help="KV pool per rank")
    add("--max-model-len", type=int, default=None)
    add("--threads-per-rank", type=int, default=None)
    add("--seed", type=int, default=0)
    add("--output", "-o", default=None,
        help="profile JSON to write (default: profiles/<device>_<model>_r<ranks>.json)")
    for name in ("prefill_tokens", "prefill_context_tokens", "decode_batches",
                 "decode_context_tokens", "mixed_prefill_tokens", "mixed_decode_batches"):
        add(f"--{name.replace('_', '-')}", type=_int_list, default=getattr(grid, name),
            metavar="N,N,...")
    add("--repeats", type=int, default=grid.repeats, help="timed steps per point and group")
    add("--warmup", type=int, default=grid.warmup)
    add("--flips", type=int, default=grid.flips, help="DP<->TP flips per direction")
    add("--from-runs", nargs="+", default=None, metavar="RUN_DIR",
        help="instead of a grid on fresh workers: the steps these server run directories "
             "ran (their steps.parquet), as served")
    add("--replays", nargs="+", default=None, metavar="REPLAY_DIR",
        help="with --from-runs: the replay client's output directory of each run (same "
             "order), to measure the client overhead per request (HTTP, tokenisation, SSE)")
    add("--log-level", default="info", choices=["debug", "info", "warning", "error"])


def _int_list(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}")


def main(args: argparse.Namespace) -> int:
    from executor.model_config import ModelConfigError

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(message)s")
    grid = ProfileGrid(**{f.name: getattr(args, f.name) for f in dataclasses.fields(ProfileGrid)
                          if hasattr(args, f.name)})
    try:
        grid.check()
        cfg = ServeConfig(model=args.model, layout="tp", num_ranks=args.num_ranks,
                          device=args.device, dtype=args.dtype, tokenizer="bytes",
                          block_size_tokens=args.block_size_tokens,
                          kv_cache_mib=args.kv_cache_mib, max_model_len=args.max_model_len,
                          threads_per_rank=args.threads_per_rank, seed=args.seed)
        cfg.check()
        model = resolve_model(cfg)
    except (ServeConfigError, ModelConfigError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    output = Path(args.output or f"profiles/{args.device}_{model.config.name}_r{args.num_ranks}"
                  f".json")
    t0 = time.perf_counter()
    if args.replays and not args.from_runs:
        print("error: --replays needs --from-runs (the server runs they were replayed against)",
              file=sys.stderr)
        return 2
    if args.from_runs:
        from executor.served_profile import profile_from_runs
        try:
            doc = profile_from_runs([Path(d) for d in args.from_runs], model, args.device,
                                    [Path(d) for d in args.replays or []])
        except ValueError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    else:
        doc = asyncio.run(Profiler(cfg, model, grid).run())
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(doc, indent=1) + "\n")
    print(summary_text(doc, time.perf_counter() - t0, output))
    return 0


def summary_text(doc: dict, wall_s: float, output: Path) -> str:
    where = (f"{doc['settings']['num_ranks']} {doc['hardware']['device']} rank(s)"
             if "num_ranks" in doc["settings"] else "served steps")
    lines = [f"profiled {doc['model']['name']} on {where} ({doc['hardware']['cpu']}) in "
             f"{wall_s:.1f} s: {len(doc['steps'])} step points"]
    by_width: dict[int, list[dict]] = {}
    for row in doc["steps"]:
        by_width.setdefault(row["tp_gpus"], []).append(row)
    for width, rows in sorted(by_width.items()):
        decode1 = [r["step_s"] for r in rows if r["num_tokens"] == 1]
        biggest = max(rows, key=lambda r: r["num_tokens"])
        lines.append(f"  width {width}: batch-1 decode (median) "
                     f"{1e3 * (statistics.median(decode1) if decode1 else 0):.2f} ms, "
                     f"{biggest['num_tokens']}-token step {1e3 * biggest['step_s']:.2f} ms")
    sw = doc["switch"]
    if sw.get("flips"):
        lines.append(f"  flip DP<->TP: p50 {1e3 * sw['flip_s_p50']:.2f} ms, "
                     f"p99 {1e3 * sw['flip_s_p99']:.2f} ms over {sw['flips']} flips")
    for width, o in sorted(doc.get("serving", {}).get("client_overhead_s", {}).items()):
        lines.append(f"  width {width}: client overhead {1e3 * o['mean_s']:.2f} ms mean, "
                     f"{1e3 * o['median_s']:.2f} ms median over {o['requests']} requests")
    if doc["skipped"]:
        lines.append(f"  skipped {len(doc['skipped'])} point(s), e.g. {doc['skipped'][0]}")
    lines.append(f"written to {output}")
    return "\n".join(lines)
