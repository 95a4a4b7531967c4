"""Typed schema of ``python -m executor replay`` (Hydra primary config ``conf/replay.yaml``).

Composition fails on unknown keys and wrong types; ``load_config`` then checks the values
and folds the top-level shortcuts (``rate_scale``, ``max_requests``, ``start_s``) into the
trace config, so the trace is loaded exactly as the simulator loads it.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

from traces.config import TraceConfig

SCHEMA_NAME = "replay_schema"
# Where the prompt's token counts come from (prompt.tokenizer); anything else is a folder.
TOKENIZER_AUTO, TOKENIZER_SERVER, TOKENIZER_BYTES, TOKENIZER_APPROX = \
    "auto", "server", "bytes", "approx"
TOKENIZER_KEYWORDS = (TOKENIZER_AUTO, TOKENIZER_SERVER, TOKENIZER_BYTES, TOKENIZER_APPROX)
API_KEY_ENVS = ("FLYING_API_KEY", "OPENAI_API_KEY")


@dataclass
class ServerConfig:
    # The OpenAI-compatible API root: ours (python -m executor serve) or vLLM's api_server.
    base_url: str = "http://127.0.0.1:8000/v1"
    model: Optional[str] = None  # None: the one model /v1/models lists
    api_key: Optional[str] = None  # None: $FLYING_API_KEY, then $OPENAI_API_KEY
    # Context limit used to clip requests; None: /v1/models' max_model_len (ours and vLLM
    # report it). When neither is known nothing is clipped and over-long requests come
    # back rejected by the server.
    max_model_len: Optional[int] = None
    connect_timeout_s: float = 10.0
    request_timeout_s: Optional[float] = None  # whole request, queueing included; None: none
    # ignore_eos makes output lengths follow the trace (ours and vLLM accept it; a server
    # that ignores it may answer shorter, which the summary counts).
    ignore_eos: bool = True
    # Send vLLM's `priority` field (-1 for the trace's priority class, 0 otherwise). Off by
    # default: vLLM refuses a non-zero priority unless started with --scheduling-policy priority.
    send_priority: bool = False
    # A label for what the server runs (e.g. static_dp), written to summary.json as
    # run.policy so that analysis can pair this run with a simulator run of that policy.
    # (Under server., not top-level: `policy=` would name the conf/policy config group.)
    policy: Optional[str] = None


@dataclass
class PromptConfig:
    # How prompt token counts are made to match the trace:
    #   auto   - the server's /tokenize endpoint (vLLM has one) if it answers, else approx;
    #   server - the server's /tokenize endpoint, an error if it has none;
    #   bytes  - UTF-8 bytes are tokens (our server's byte tokenizer for named shapes);
    #   approx - no tokenizer: about chars_per_token characters per token (the server's
    #            reported usage then gives the real count);
    #   PATH   - a local Hugging Face tokenizer folder (tokenizer.json), the served model's.
    tokenizer: str = TOKENIZER_AUTO
    chars_per_token: float = 4.0  # approx mode only
    # /tokenize lives beside /v1 on vLLM; None: base_url without its trailing /v1.
    tokenize_url: Optional[str] = None


@dataclass
class OutputConfig:
    # The run directory is Hydra's (hydra.run.dir; default outputs/replay/DATE/TIME_TRACE).
    print_summary: bool = True
    progress: bool = True  # a progress bar over finished requests (only on a terminal)


@dataclass
class ReplayConfig:
    trace: TraceConfig = MISSING
    server: ServerConfig = field(default_factory=ServerConfig)
    prompt: PromptConfig = field(default_factory=PromptConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    seed: int = 0
    # Shortcuts for trace.rate_scale / trace.max_requests / trace.start_s; None: the trace's.
    # rate_scale divides every arrival time: 2.0 = twice the request rate, 0.5 = half.
    rate_scale: Optional[float] = None
    max_requests: Optional[int] = None
    start_s: Optional[float] = None  # skip the trace's first start_s seconds (trace time)
    # Replay only the requests that arrive in the first duration_s seconds of the replay
    # (replay time, i.e. after rate scaling). None: the whole (windowed) trace.
    duration_s: Optional[float] = None
    max_concurrency: Optional[int] = None  # requests in flight at once; None: no limit
    # After the last request is sent, wait at most this long for the answers still
    # streaming; those cut off are recorded as 'unfinished'. None: wait for all.
    drain_timeout_s: Optional[float] = None


class ReplayConfigError(ValueError):
    """A config value that cannot work, said in one line."""


def register_schema() -> None:
    ConfigStore.instance().store(name=SCHEMA_NAME, node=ReplayConfig)


def load_config(cfg: DictConfig | dict[str, Any]) -> ReplayConfig:
    """Composed config -> checked ReplayConfig (trace shortcuts folded into ``trace``)."""
    try:
        if not isinstance(cfg, DictConfig):
            cfg = OmegaConf.merge(OmegaConf.structured(ReplayConfig), cfg)
        if OmegaConf.is_missing(cfg, "trace"):
            raise ReplayConfigError("no trace chosen: add +trace=NAME, one of "
                                    + ", ".join(trace_options()))
        typed: ReplayConfig = OmegaConf.to_object(cfg)
    except MissingMandatoryValue as e:
        raise ReplayConfigError(f"config value missing: {e.full_key}") from None
    except OmegaConfBaseException as e:
        raise ReplayConfigError(f"bad config value for '{e.full_key}': {e.msg}") from None
    check(typed)
    fold_trace_shortcuts(typed)
    return typed


def fold_trace_shortcuts(cfg: ReplayConfig) -> None:
    cfg.trace.seed = cfg.seed
    if cfg.rate_scale is not None:
        cfg.trace.rate_scale = cfg.rate_scale
    if cfg.max_requests is not None:
        cfg.trace.max_requests = cfg.max_requests
    if cfg.start_s is not None:
        cfg.trace.start_s = cfg.start_s


def check(cfg: ReplayConfig) -> None:
    """Raise one ReplayConfigError listing every bad value."""
    problems = _positive(cfg, ("rate_scale", "duration_s", "drain_timeout_s"))
    problems += _at_least_one(cfg, ("max_requests", "max_concurrency"))
    if cfg.start_s is not None and cfg.start_s < 0:
        problems.append(f"start_s must be >= 0, got {cfg.start_s}")
    problems += _server_problems(cfg.server) + _prompt_problems(cfg.prompt)
    if problems:
        raise ReplayConfigError("bad replay config: " + "; ".join(problems))


def _positive(obj: Any, names: tuple[str, ...], prefix: str = "") -> list[str]:
    return [f"{prefix}{n} must be > 0, got {getattr(obj, n)}" for n in names
            if getattr(obj, n) is not None and not getattr(obj, n) > 0]


def _at_least_one(obj: Any, names: tuple[str, ...], prefix: str = "") -> list[str]:
    return [f"{prefix}{n} must be >= 1, got {getattr(obj, n)}" for n in names
            if getattr(obj, n) is not None and getattr(obj, n) < 1]


def _server_problems(server: ServerConfig) -> list[str]:
    problems = _positive(server, ("connect_timeout_s", "request_timeout_s"), "server.")
    problems += _at_least_one(server, ("max_model_len",), "server.")
    if not server.base_url.startswith(("http://", "https://")):
        problems.append(f"server.base_url must start with http:// or https://, got "
                        f"'{server.base_url}'")
    return problems


def _prompt_problems(prompt: PromptConfig) -> list[str]:
    problems = _positive(prompt, ("chars_per_token",), "prompt.")
    tok = prompt.tokenizer
    if tok not in TOKENIZER_KEYWORDS and not (Path(tok) / "tokenizer.json").is_file():
        problems.append(f"prompt.tokenizer must be one of {', '.join(TOKENIZER_KEYWORDS)} or "
                        f"a folder holding tokenizer.json; '{tok}' is neither")
    return problems


def api_key(server: ServerConfig) -> str | None:
    if server.api_key:
        return server.api_key
    return next((os.environ[e] for e in API_KEY_ENVS if os.environ.get(e)), None)


def trace_options() -> list[str]:
    conf = Path(__file__).resolve().parents[1] / "conf" / "trace"
    return sorted(p.stem for p in conf.glob("*.yaml"))
