"""``python -m executor serve``: the real engine behind an OpenAI-compatible server.

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
                                   ServeConfigError)

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
    add("--layout", choices=sorted(LAYOUT_POLICIES), default=DEFAULTS.layout,
        help="dp: one engine per rank; tp: all ranks one TP group; mixed: TP groups of "
             "--engines-per-group ranks")
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
    return parser


def default_output_dir(args: argparse.Namespace) -> str | None:
    """As the simulator: outputs/<backend>/<date>/<time>_<what ran>."""
    if args.output_dir is not None:
        return None if args.output_dir.lower() == "none" else args.output_dir
    now = datetime.now()
    return str(Path("outputs") / "executor" / now.strftime("%Y-%m-%d") /
               f"{now.strftime('%H-%M-%S')}_{args.layout}{args.num_ranks}")


def serve(args: argparse.Namespace) -> int:
    from executor.model_config import ModelConfigError
    from executor.tokenizer import TokenizerError, load_tokenizer

    fields = {k: v for k, v in vars(args).items()
              if k not in ("command", "host", "port", "log_level")}
    fields["output_dir"] = default_output_dir(args)
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
    args = build_parser().parse_args(argv)
    if args.command == "serve":
        return serve(args)
    if args.command == "profile":
        from executor.profile import main as profile_main
        return profile_main(args)
    return 2


if __name__ == "__main__":
    sys.exit(main())
