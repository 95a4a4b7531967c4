"""load_trace: config -> list[RequestSpec].

Order of operations: load raw -> window -> rate scale -> cap -> classes.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from traces.classes import assign_classes, slo_targets
from traces.config import REAL_SOURCES, TraceConfig
from traces.errors import TraceError
from traces.raw import BUCKETS_STREAM, CLASSES_STREAM, RawTrace, stream_rng
from traces.real import load_real, spread_buckets
from traces.spec import RequestSpec
from traces.synthetic import generate
from traces.validation import as_trace_config


def load_trace(cfg: TraceConfig | Any) -> list[RequestSpec]:
    """Requests sorted by arrival; arrival_s counts from the window start; ids 0..n-1.

    `cfg` may be a TraceConfig, an OmegaConf DictConfig or a plain dict; it is
    merged into the TraceConfig schema, so unknown keys fail with a TraceError.
    """
    cfg = as_trace_config(cfg)
    raw = load_raw(cfg)
    relative_s = raw.times_s - raw.origin_s
    end_s = np.inf if cfg.end_s is None else cfg.end_s
    kept = np.flatnonzero((relative_s >= cfg.start_s) & (relative_s < end_s))
    if kept.size == 0:
        raise TraceError(_empty_window_message(cfg, relative_s))
    arrival_s = (relative_s[kept] - cfg.start_s) / cfg.rate_scale
    if cfg.max_requests is not None:
        kept, arrival_s = kept[: cfg.max_requests], arrival_s[: cfg.max_requests]
    prompt, output = raw.prompt_tokens[kept], raw.output_tokens[kept]
    classes = assign_classes(prompt, output, cfg.classes, stream_rng(cfg.seed, CLASSES_STREAM))
    hash_ids = [raw.hash_ids[i] for i in kept] if raw.hash_ids else [None] * len(kept)
    slos = slo_targets(cfg.classes)
    return [
        RequestSpec(i, a, p, o, c, *slos[c], h)
        for i, (a, p, o, c, h) in enumerate(
            zip(arrival_s.tolist(), prompt.tolist(), output.tolist(), classes, hash_ids)
        )
    ]


def load_raw(cfg: TraceConfig) -> RawTrace:
    """The source's requests in its own time base, before any windowing."""
    if cfg.source not in REAL_SOURCES:
        return generate(cfg)
    raw = load_real(cfg.source, cfg.file, cfg.data_dir)
    if cfg.bucket_spread:
        # origin_s stays the first bucket's timestamp, so time zero does not move.
        raw.times_s = spread_buckets(raw.times_s, stream_rng(cfg.seed, BUCKETS_STREAM))
    return raw


def _empty_window_message(cfg: TraceConfig, relative_s: np.ndarray) -> str:
    end = "end" if cfg.end_s is None else f"{cfg.end_s:g} s"
    span = f"spans 0 to {relative_s[-1]:.1f} s" if len(relative_s) else "has no requests at all"
    return (
        f"trace '{cfg.name}' (source {cfg.source}): no requests in window "
        f"[{cfg.start_s:g} s, {end}); the raw trace {span}"
    )
