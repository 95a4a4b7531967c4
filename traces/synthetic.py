"""Synthetic arrival processes (poisson, gamma, bursty) and request-length samplers."""
from __future__ import annotations

from typing import Callable

import numpy as np

from traces.config import LengthConfig, TraceConfig
from traces.raw import ARRIVALS_STREAM, LENGTHS_STREAM, RawTrace, stream_rng
from traces.real import load_real


def generate(cfg: TraceConfig) -> RawTrace:
    """Arrivals over [0, duration_s) for a synthetic source, with lengths per cfg.lengths."""
    arrivals_rng = stream_rng(cfg.seed, ARRIVALS_STREAM)
    times_s = ARRIVAL_PROCESSES[cfg.source](cfg, arrivals_rng)
    prompt, output = sample_lengths(cfg, len(times_s), stream_rng(cfg.seed, LENGTHS_STREAM))
    # Time zero is the start of the process, not the first arrival, so that the
    # bursty window sits at exactly burst_start_frac * duration_s.
    return RawTrace(times_s=times_s, prompt_tokens=prompt, output_tokens=output, origin_s=0.0)


# --- arrival processes ----------------------------------------------------------


def renewal_times_s(
    draw_gaps_s: Callable[[int], np.ndarray], mean_gap_s: float, start_s: float, end_s: float
) -> np.ndarray:
    """Arrival times in [start_s, end_s) of a renewal process started at start_s.

    Gaps are drawn in chunks sized to the expected count, so a long run costs a
    few numpy calls rather than one Python call per request.
    """
    chunk = int(1.1 * (end_s - start_s) / mean_gap_s) + 64
    pieces, t_s = [], start_s
    while True:
        times_s = t_s + np.cumsum(draw_gaps_s(chunk))
        pieces.append(times_s[times_s < end_s])
        if times_s[-1] >= end_s:
            return np.concatenate(pieces)
        t_s = times_s[-1]


def poisson_times_s(rate_rps: float, start_s: float, end_s: float, rng: np.random.Generator) -> np.ndarray:
    mean_gap_s = 1.0 / rate_rps
    return renewal_times_s(lambda n: rng.exponential(mean_gap_s, n), mean_gap_s, start_s, end_s)


def _poisson(cfg: TraceConfig, rng: np.random.Generator) -> np.ndarray:
    return poisson_times_s(cfg.rate_rps, 0.0, cfg.duration_s, rng)


def _gamma(cfg: TraceConfig, rng: np.random.Generator) -> np.ndarray:
    # Gamma with shape k has CV 1/sqrt(k); scale sets the mean gap to 1/rate.
    shape = 1.0 / cfg.cv**2
    scale_s = 1.0 / (cfg.rate_rps * shape)
    return renewal_times_s(lambda n: rng.gamma(shape, scale_s, n), 1.0 / cfg.rate_rps, 0.0, cfg.duration_s)


def _bursty(cfg: TraceConfig, rng: np.random.Generator) -> np.ndarray:
    # A piecewise-constant-rate Poisson process is exactly a Poisson process per
    # piece (memorylessness), so generating the pieces independently is exact.
    burst_start_s = cfg.burst_start_frac * cfg.duration_s
    burst_end_s = cfg.burst_end_frac * cfg.duration_s
    pieces = [
        (0.0, burst_start_s, cfg.rate_rps),
        (burst_start_s, burst_end_s, cfg.burst_rate_rps),
        (burst_end_s, cfg.duration_s, cfg.rate_rps),
    ]
    return np.concatenate(
        [poisson_times_s(rate, start, end, rng) for start, end, rate in pieces if end > start]
    )


ARRIVAL_PROCESSES = {"poisson": _poisson, "gamma": _gamma, "bursty": _bursty}


# --- lengths -----------------------------------------------------------------------


def sample_lengths(cfg: TraceConfig, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(prompt_tokens, output_tokens) int64 arrays of length n, every value >= 1."""
    lengths = cfg.lengths
    if lengths.kind == "trace":
        # Resample real (prompt, output) pairs together, keeping their correlation.
        # hash_ids are not carried over: repeated draws would fake prefix sharing.
        real = load_real(lengths.source, cfg.file, cfg.data_dir)
        picks = rng.integers(0, len(real), size=n)
        prompt, output = real.prompt_tokens[picks], real.output_tokens[picks]
    else:
        prompt = _sample_one(lengths, lengths.prompt_tokens, lengths.prompt_tokens_max, n, rng)
        output = _sample_one(lengths, lengths.output_tokens, lengths.output_tokens_max, n, rng)
    if lengths.long_fraction > 0:
        prompt = _mix_long(lengths, prompt, rng)
    return prompt, output


def _mix_long(lengths: LengthConfig, prompt: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Replace a ``long_fraction`` share of prompts by long ones (a long-context mix)."""
    long = rng.random(len(prompt)) < lengths.long_fraction
    high = lengths.long_prompt_tokens_max or lengths.long_prompt_tokens
    drawn = rng.integers(lengths.long_prompt_tokens, high, size=len(prompt), endpoint=True)
    return np.where(long, drawn, prompt).astype(np.int64)


def _sample_one(
    lengths: LengthConfig, value: int, max_value: int | None, n: int, rng: np.random.Generator
) -> np.ndarray:
    if lengths.kind == "fixed":
        return np.full(n, value, dtype=np.int64)
    if lengths.kind == "uniform":
        return rng.integers(value, max_value, size=n, endpoint=True).astype(np.int64)
    # lognormal with the given mean and CV: sigma^2 = ln(1 + cv^2), mu = ln(mean) - sigma^2 / 2
    sigma2 = np.log1p(lengths.cv**2)
    draws = rng.lognormal(np.log(value) - sigma2 / 2, np.sqrt(sigma2), size=n)
    high = np.inf if max_value is None else max_value
    return np.clip(np.rint(draws), 1, high).astype(np.int64)
