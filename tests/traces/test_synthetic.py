"""Synthetic arrival processes and length samplers."""
from __future__ import annotations

import numpy as np
import pytest

from traces import load_trace


def _synthetic(source, **kw):
    return {"name": source, "source": source, **kw}


def _arrivals(reqs):
    return np.array([r.arrival_s for r in reqs])


def _gap_cv(arrivals):
    gaps = np.diff(arrivals)
    return gaps.std() / gaps.mean()


def test_poisson_rate_and_cv():
    reqs = load_trace(_synthetic("poisson", rate_rps=10.0, duration_s=10_000.0))
    arrivals = _arrivals(reqs)
    assert len(reqs) / 10_000.0 == pytest.approx(10.0, rel=0.02)
    assert _gap_cv(arrivals) == pytest.approx(1.0, rel=0.03)
    assert arrivals[0] >= 0 and arrivals[-1] < 10_000.0 and np.all(np.diff(arrivals) >= 0)


def test_gamma_hits_target_cv_and_rate():
    reqs = load_trace(_synthetic("gamma", rate_rps=50.0, cv=4.0, duration_s=2_000.0))
    assert _gap_cv(_arrivals(reqs)) == pytest.approx(4.0, rel=0.15)
    assert len(reqs) / 2_000.0 == pytest.approx(50.0, rel=0.05)


def test_gamma_with_cv_below_one_is_smoother():
    reqs = load_trace(_synthetic("gamma", rate_rps=5.0, cv=0.25, duration_s=4_000.0))
    assert _gap_cv(_arrivals(reqs)) == pytest.approx(0.25, rel=0.05)


def test_bursty_has_the_burst_rate_inside_its_window():
    cfg = _synthetic("bursty", rate_rps=2.0, burst_rate_rps=12.0, duration_s=20_000.0,
                     burst_start_frac=0.4, burst_end_frac=0.6)
    arrivals = _arrivals(load_trace(cfg))
    inside = np.sum((arrivals >= 8_000.0) & (arrivals < 12_000.0)) / 4_000.0
    outside = np.sum((arrivals < 8_000.0) | (arrivals >= 12_000.0)) / 16_000.0
    assert inside == pytest.approx(12.0, rel=0.05)
    assert outside == pytest.approx(2.0, rel=0.05)
    assert np.all(np.diff(arrivals) >= 0)


def test_bursty_window_may_touch_the_ends():
    arrivals = _arrivals(load_trace(_synthetic("bursty", burst_start_frac=0.0, burst_end_frac=1.0,
                                               burst_rate_rps=20.0, duration_s=500.0)))
    assert len(arrivals) / 500.0 == pytest.approx(20.0, rel=0.1)


@pytest.mark.parametrize("source", ["poisson", "gamma", "bursty"])
def test_same_seed_same_trace_different_seed_different(source):
    cfg = _synthetic(source, duration_s=120.0, lengths={"kind": "lognormal"}, classes={"priority_fraction": 0.3})
    assert load_trace({**cfg, "seed": 7}) == load_trace({**cfg, "seed": 7})
    assert load_trace({**cfg, "seed": 7}) != load_trace({**cfg, "seed": 8})


def test_lengths_do_not_depend_on_the_rate():
    # Separate random streams: changing the arrival rate keeps request i's lengths.
    slow = load_trace(_synthetic("poisson", rate_rps=1.0, duration_s=200.0, lengths={"kind": "lognormal"}))
    fast = load_trace(_synthetic("poisson", rate_rps=3.0, duration_s=200.0, lengths={"kind": "lognormal"}))
    assert [r.prompt_tokens for r in slow] == [r.prompt_tokens for r in fast[: len(slow)]]


def _lengths(**lengths):
    reqs = load_trace(_synthetic("poisson", rate_rps=100.0, duration_s=200.0, lengths=lengths))
    return np.array([r.prompt_tokens for r in reqs]), np.array([r.output_tokens for r in reqs])


def test_fixed_lengths():
    prompt, output = _lengths(kind="fixed", prompt_tokens=300, output_tokens=20)
    assert set(prompt.tolist()) == {300} and set(output.tolist()) == {20}


def test_uniform_lengths_cover_inclusive_bounds():
    prompt, output = _lengths(kind="uniform", prompt_tokens=10, prompt_tokens_max=20,
                              output_tokens=1, output_tokens_max=3)
    assert set(prompt.tolist()) == set(range(10, 21)) and set(output.tolist()) == {1, 2, 3}


def test_lognormal_lengths_have_target_mean_and_cv():
    prompt, output = _lengths(kind="lognormal", prompt_tokens=1000, output_tokens=200, cv=0.5)
    assert prompt.mean() == pytest.approx(1000, rel=0.03)
    assert prompt.std() / prompt.mean() == pytest.approx(0.5, rel=0.05)
    assert output.min() >= 1 and prompt.dtype.kind == "i"


def test_lognormal_lengths_are_clipped():
    prompt, output = _lengths(kind="lognormal", prompt_tokens=1000, prompt_tokens_max=1200,
                              output_tokens=2, cv=3.0)
    assert prompt.max() == 1200 and output.min() >= 1


def test_trace_lengths_resample_real_pairs(azure_dir):
    reqs = load_trace(_synthetic("poisson", rate_rps=50.0, duration_s=20.0, data_dir=str(azure_dir),
                                 lengths={"kind": "trace", "source": "azure"}))
    pairs = {(r.prompt_tokens, r.output_tokens) for r in reqs}
    assert pairs == {(374, 44), (396, 109), (879, 55), (91, 16)}
    assert all(r.hash_ids is None for r in reqs)


def test_long_context_mix_replaces_a_share_of_prompts():
    from traces import load_trace
    cfg = {"name": "p", "source": "poisson", "rate_rps": 50.0, "duration_s": 200.0,
           "lengths": {"kind": "fixed", "prompt_tokens": 100, "output_tokens": 10,
                       "long_fraction": 0.1, "long_prompt_tokens": 500_000,
                       "long_prompt_tokens_max": 900_000}}
    specs = load_trace(cfg)
    long = [s.prompt_tokens for s in specs if s.prompt_tokens != 100]
    assert 0.08 < len(long) / len(specs) < 0.12
    assert all(500_000 <= p <= 900_000 for p in long)


def test_long_context_mix_is_validated():
    import pytest
    from traces import TraceError, load_trace
    with pytest.raises(TraceError, match="long_fraction"):
        load_trace({"name": "p", "source": "poisson", "lengths": {"long_fraction": 1.5}})
