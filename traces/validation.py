"""Turn whatever the caller passed into a checked TraceConfig, or raise a clear TraceError."""
from __future__ import annotations

import dataclasses
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, MissingMandatoryValue, OmegaConfBaseException

from traces.config import LENGTH_KINDS, REAL_SOURCES, SOURCES, TraceConfig
from traces.errors import TraceError

MOONCAKE_SOURCES = ("mooncake", "mooncake_synthetic")


def as_trace_config(cfg: Any) -> TraceConfig:
    """Merge `cfg` (TraceConfig, DictConfig or dict) into the schema and validate it.

    Going through OmegaConf's structured merge makes typos in keys and wrongly
    typed values fail here, with the offending key named.
    """
    if not isinstance(cfg, (TraceConfig, DictConfig, dict)):
        raise TraceError(
            f"trace config must be a TraceConfig, DictConfig or dict, not {type(cfg).__name__}"
        )
    try:
        merged = OmegaConf.merge(OmegaConf.structured(TraceConfig), cfg)
        checked = OmegaConf.to_object(merged)
    except ConfigKeyError as e:
        valid = _field_names(e.object_type)
        raise TraceError(
            f"unknown trace config key '{e.full_key}'; valid keys there: {', '.join(valid)}"
        ) from e
    except MissingMandatoryValue as e:
        raise TraceError(f"trace config key '{e.full_key}' is required but not set") from e
    except OmegaConfBaseException as e:
        raise TraceError(f"invalid trace config value for '{e.full_key}': {e.msg}") from e
    validate(checked)
    return checked


def _field_names(object_type: Any) -> list[str]:
    if object_type is not None and dataclasses.is_dataclass(object_type):
        return [f.name for f in dataclasses.fields(object_type)]
    return [f.name for f in dataclasses.fields(TraceConfig)]


def validate(cfg: TraceConfig) -> None:
    """Raise one TraceError listing every problem found (not just the first)."""
    problems = _source_problems(cfg) + _window_problems(cfg) + _synthetic_problems(cfg)
    problems += _length_problems(cfg) + _class_problems(cfg)
    if problems:
        raise TraceError(f"invalid trace config '{cfg.name}': " + "; ".join(problems))


def _source_problems(cfg: TraceConfig) -> list[str]:
    problems = []
    if cfg.source not in SOURCES:
        problems.append(f"unknown source '{cfg.source}' (valid: {', '.join(SOURCES)})")
    if cfg.bucket_spread and cfg.source not in MOONCAKE_SOURCES:
        problems.append(
            f"bucket_spread only applies to {', '.join(MOONCAKE_SOURCES)}, not '{cfg.source}'"
        )
    if cfg.seed < 0:
        problems.append(f"seed must be >= 0, got {cfg.seed}")
    return problems


def _window_problems(cfg: TraceConfig) -> list[str]:
    problems = []
    if cfg.start_s < 0:
        problems.append(f"start_s must be >= 0, got {cfg.start_s}")
    if cfg.end_s is not None and cfg.end_s <= cfg.start_s:
        problems.append(f"empty or negative window: end_s={cfg.end_s} <= start_s={cfg.start_s}")
    if cfg.rate_scale <= 0:
        problems.append(f"rate_scale must be > 0, got {cfg.rate_scale}")
    if cfg.max_requests is not None and cfg.max_requests < 1:
        problems.append(f"max_requests must be >= 1 or null, got {cfg.max_requests}")
    return problems


def _synthetic_problems(cfg: TraceConfig) -> list[str]:
    problems = []
    for key in ("rate_rps", "duration_s", "cv", "burst_rate_rps"):
        if getattr(cfg, key) <= 0:
            problems.append(f"{key} must be > 0, got {getattr(cfg, key)}")
    if not 0.0 <= cfg.burst_start_frac < cfg.burst_end_frac <= 1.0:
        problems.append(
            "burst fractions must satisfy 0 <= burst_start_frac < burst_end_frac <= 1, got "
            f"{cfg.burst_start_frac} and {cfg.burst_end_frac}"
        )
    return problems


def _length_problems(cfg: TraceConfig) -> list[str]:
    lengths, problems = cfg.lengths, []
    if lengths.kind not in LENGTH_KINDS:
        problems.append(f"unknown lengths.kind '{lengths.kind}' (valid: {', '.join(LENGTH_KINDS)})")
    if lengths.source not in REAL_SOURCES:
        problems.append(
            f"lengths.source must be a real trace ({', '.join(REAL_SOURCES)}), got '{lengths.source}'"
        )
    if lengths.cv <= 0:
        problems.append(f"lengths.cv must be > 0, got {lengths.cv}")
    if not 0.0 <= lengths.long_fraction <= 1.0:
        problems.append(f"lengths.long_fraction must be in [0, 1], got {lengths.long_fraction}")
    if lengths.long_prompt_tokens < 1 or (lengths.long_prompt_tokens_max is not None and
                                          lengths.long_prompt_tokens_max < lengths.long_prompt_tokens):
        problems.append("lengths.long_prompt_tokens must be >= 1 and <= long_prompt_tokens_max")
    for which in ("prompt_tokens", "output_tokens"):
        low, high = getattr(lengths, which), getattr(lengths, f"{which}_max")
        if low < 1:
            problems.append(f"lengths.{which} must be >= 1, got {low}")
        if high is not None and high < low:
            problems.append(f"lengths.{which}_max={high} is below lengths.{which}={low}")
        if lengths.kind == "uniform" and high is None:
            problems.append(f"lengths.kind=uniform needs lengths.{which}_max (the high bound)")
    return problems


def _class_problems(cfg: TraceConfig) -> list[str]:
    classes, problems = cfg.classes, []
    if not 0.0 <= classes.priority_fraction <= 1.0:
        problems.append(f"classes.priority_fraction must be in [0, 1], got {classes.priority_fraction}")
    threshold = classes.long_context_threshold_tokens
    if threshold is not None and threshold < 1:
        problems.append(f"classes.long_context_threshold_tokens must be >= 1, got {threshold}")
    for name in ("normal", "priority", "long_context"):
        slo = getattr(classes, name)
        for key in ("ttft_s", "tpot_s"):
            value = getattr(slo, key)
            if value is not None and value <= 0:
                problems.append(f"classes.{name}.{key} must be > 0 or null, got {value}")
    return problems
