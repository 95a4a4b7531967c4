"""Typed trace config schemas, usable as OmegaConf structured configs.

Only simple types, Optional and nested dataclasses, so OmegaConf can type-check
the Hydra YAML (`conf/trace/*.yaml`) against them. Validation of values lives in
`traces.validation`.
"""
from dataclasses import dataclass, field
from typing import Optional

from omegaconf import MISSING

REAL_SOURCES = ("azure", "azure_code", "mooncake", "mooncake_synthetic")
SYNTHETIC_SOURCES = ("poisson", "gamma", "bursty")
SOURCES = REAL_SOURCES + SYNTHETIC_SOURCES
LENGTH_KINDS = ("fixed", "uniform", "lognormal", "trace")


@dataclass
class SloConfig:
    """Per-class latency targets; None means no target."""

    ttft_s: Optional[float] = None
    tpot_s: Optional[float] = None


@dataclass
class ClassesConfig:
    # Share of the non-long-context requests marked priority (seeded, per request).
    priority_fraction: float = 0.0
    # prompt + output >= this -> long_context; takes precedence over priority.
    long_context_threshold_tokens: Optional[int] = None
    normal: SloConfig = field(default_factory=SloConfig)
    priority: SloConfig = field(default_factory=SloConfig)
    long_context: SloConfig = field(default_factory=SloConfig)


@dataclass
class LengthConfig:
    """Prompt/output lengths for synthetic arrivals (ignored by real traces)."""

    kind: str = "fixed"  # fixed | uniform | lognormal | trace
    prompt_tokens: int = 512  # fixed value / mean (lognormal) / low bound (uniform)
    output_tokens: int = 128
    prompt_tokens_max: Optional[int] = None  # uniform high bound, and clip for lognormal
    output_tokens_max: Optional[int] = None
    cv: float = 1.0  # lognormal coefficient of variation
    source: str = "azure"  # kind=trace: resample (prompt, output) pairs from this real trace
    # A long-context mix: this share of requests gets a prompt drawn uniformly from
    # [long_prompt_tokens, long_prompt_tokens_max] instead.
    long_fraction: float = 0.0
    long_prompt_tokens: int = 131072
    long_prompt_tokens_max: Optional[int] = None


@dataclass
class TraceConfig:
    name: str = MISSING
    source: str = MISSING  # azure | azure_code | mooncake | mooncake_synthetic | poisson | gamma | bursty
    data_dir: Optional[str] = None  # where the real traces are; None -> default search
    file: Optional[str] = None  # explicit file path (overrides the data-dir search)
    start_s: float = 0.0  # window [start_s, end_s) relative to the raw trace's time zero
    end_s: Optional[float] = None
    rate_scale: float = 1.0  # >1 compresses inter-arrival times (2.0 = twice the rate)
    max_requests: Optional[int] = None
    seed: int = 0
    rate_rps: float = 1.0  # poisson / gamma base rate
    duration_s: float = 60.0  # synthetic run length
    cv: float = 1.0  # gamma inter-arrival coefficient of variation
    burst_rate_rps: float = 10.0  # bursty: rate inside the burst window
    burst_start_frac: float = 0.4  # bursty: burst window [start_frac, end_frac) of duration_s
    burst_end_frac: float = 0.6
    # mooncake: spread each 3 s timestamp bucket's requests uniformly over the
    # bucket instead of firing them together
    bucket_spread: bool = False
    lengths: LengthConfig = field(default_factory=LengthConfig)
    classes: ClassesConfig = field(default_factory=ClassesConfig)
