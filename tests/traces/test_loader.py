"""The load_trace pipeline (window -> rate scale -> cap), and config coercion/validation."""
from __future__ import annotations

import numpy as np
import pytest
from omegaconf import OmegaConf

from tests.traces.helpers import mooncake_line, write_lines
from traces import TraceConfig, TraceError, load_trace


def _cfg(path, **kw):
    return {"name": "t", "source": "mooncake", "file": str(path), **kw}


def test_window_counts_from_raw_time_zero(mooncake_file):
    # Raw arrivals at 0..9 s; the window [2, 6) keeps 2, 3, 4, 5.
    reqs = load_trace(_cfg(mooncake_file, start_s=2.0, end_s=6.0))
    assert [r.arrival_s for r in reqs] == [0.0, 1.0, 2.0, 3.0]
    assert [r.prompt_tokens for r in reqs] == [300, 400, 500, 600]
    assert [r.request_id for r in reqs] == [0, 1, 2, 3]


def test_arrival_zero_is_window_start_not_first_kept_request(mooncake_file):
    reqs = load_trace(_cfg(mooncake_file, start_s=2.5))
    assert reqs[0].arrival_s == pytest.approx(0.5) and reqs[0].prompt_tokens == 400


def test_time_zero_is_the_raw_traces_first_timestamp(tmp_path):
    path = write_lines(tmp_path / "m.jsonl", [mooncake_line(7000 + 1000 * i, 10, 1) for i in range(4)])
    assert [r.arrival_s for r in load_trace(_cfg(path, start_s=1.0))] == [0.0, 1.0, 2.0]


def test_rate_scale_compresses_after_window(mooncake_file):
    reqs = load_trace(_cfg(mooncake_file, start_s=2.0, end_s=6.0, rate_scale=2.0))
    assert [r.arrival_s for r in reqs] == [0.0, 0.5, 1.0, 1.5]


def test_cap_keeps_first_requests_after_window(mooncake_file):
    reqs = load_trace(_cfg(mooncake_file, start_s=2.0, rate_scale=4.0, max_requests=3))
    assert [(r.request_id, r.arrival_s, r.prompt_tokens) for r in reqs] == [
        (0, 0.0, 300),
        (1, 0.25, 400),
        (2, 0.5, 500),
    ]


def test_empty_window_is_a_clear_error(mooncake_file):
    with pytest.raises(TraceError, match=r"no requests in window \[100 s, end\).*spans 0 to 9\.0 s"):
        load_trace(_cfg(mooncake_file, start_s=100.0))


def test_dict_dictconfig_and_dataclass_give_the_same_trace(mooncake_file):
    as_dict = _cfg(mooncake_file, end_s=5.0, classes={"priority_fraction": 0.5})
    from_dict = load_trace(as_dict)
    assert load_trace(OmegaConf.create(as_dict)) == from_dict
    assert load_trace(OmegaConf.merge(OmegaConf.structured(TraceConfig), as_dict)) == from_dict
    cfg = TraceConfig(name="t", source="mooncake", file=str(mooncake_file), end_s=5.0)
    cfg.classes.priority_fraction = 0.5
    assert load_trace(cfg) == from_dict


def test_bucket_spread_spreads_each_bucket_over_its_width(tmp_path):
    stamps_ms = [0, 0, 0, 3000, 3000, 6000, 6000, 6000, 6000]
    path = write_lines(tmp_path / "m.jsonl", [mooncake_line(t, 10 + i, 1) for i, t in enumerate(stamps_ms)])
    batched = load_trace(_cfg(path))
    spread = load_trace(_cfg(path, bucket_spread=True, seed=3))
    arrivals = np.array([r.arrival_s for r in spread])
    assert [r.arrival_s for r in batched] == [t / 1000 for t in stamps_ms]
    assert np.all(np.diff(arrivals) >= 0)  # still sorted
    assert [r.prompt_tokens for r in spread] == [r.prompt_tokens for r in batched]  # file order kept
    assert np.all((arrivals >= np.array(stamps_ms) / 1000) & (arrivals < np.array(stamps_ms) / 1000 + 3.0))
    assert len(set(arrivals.tolist())) == len(arrivals)
    assert load_trace(_cfg(path, bucket_spread=True, seed=3)) == spread


@pytest.mark.parametrize(
    "override, message",
    [
        ({"rate_scal": 2.0}, "unknown trace config key 'rate_scal'; valid keys there: name, source"),
        ({"lengths": {"knd": "fixed"}}, "unknown trace config key 'lengths.knd'; valid keys there: kind"),
        ({"rate_scale": "fast"}, "invalid trace config value for 'rate_scale'"),
    ],
)
def test_bad_keys_and_types_fail_clearly(mooncake_file, override, message):
    with pytest.raises(TraceError, match=message):
        load_trace({**_cfg(mooncake_file), **override})


def test_missing_source_is_reported():
    with pytest.raises(TraceError, match="'source' is required"):
        load_trace({"name": "t"})


def test_non_mapping_config_is_refused():
    with pytest.raises(TraceError, match="must be a TraceConfig, DictConfig or dict"):
        load_trace(["poisson"])


@pytest.mark.parametrize(
    "override, message",
    [
        ({"source": "azuer"}, "unknown source 'azuer' \\(valid: azure, azure_code, mooncake, mooncake_synthetic, poisson, gamma, bursty\\)"),
        ({"rate_scale": 0.0}, "rate_scale must be > 0"),
        ({"rate_scale": -1.0}, "rate_scale must be > 0"),
        ({"cv": 0.0}, "cv must be > 0"),
        ({"rate_rps": 0.0}, "rate_rps must be > 0"),
        ({"duration_s": -5.0}, "duration_s must be > 0"),
        ({"burst_start_frac": 0.7}, "0 <= burst_start_frac < burst_end_frac <= 1"),
        ({"burst_end_frac": 1.2}, "0 <= burst_start_frac < burst_end_frac <= 1"),
        ({"burst_start_frac": -0.1}, "0 <= burst_start_frac < burst_end_frac <= 1"),
        ({"start_s": -1.0}, "start_s must be >= 0"),
        ({"start_s": 10.0, "end_s": 5.0}, "empty or negative window: end_s=5.0 <= start_s=10.0"),
        ({"max_requests": 0}, "max_requests must be >= 1"),
        ({"seed": -1}, "seed must be >= 0"),
        ({"bucket_spread": True}, "bucket_spread only applies to mooncake"),
        ({"classes": {"priority_fraction": 1.5}}, "priority_fraction must be in \\[0, 1\\]"),
        ({"classes": {"long_context_threshold_tokens": 0}}, "long_context_threshold_tokens must be >= 1"),
        ({"classes": {"priority": {"ttft_s": 0.0}}}, "classes.priority.ttft_s must be > 0"),
        ({"lengths": {"kind": "zipf"}}, "unknown lengths.kind 'zipf'"),
        ({"lengths": {"kind": "uniform"}}, "lengths.kind=uniform needs lengths.prompt_tokens_max"),
        ({"lengths": {"prompt_tokens": 0}}, "lengths.prompt_tokens must be >= 1"),
        ({"lengths": {"output_tokens_max": 10}}, "lengths.output_tokens_max=10 is below"),
        ({"lengths": {"source": "poisson"}}, "lengths.source must be a real trace"),
        ({"lengths": {"cv": -1.0}}, "lengths.cv must be > 0"),
    ],
)
def test_validation_messages(override, message):
    with pytest.raises(TraceError, match=message):
        load_trace({"name": "bad", "source": "poisson", **override})


def test_validation_reports_every_problem_at_once():
    with pytest.raises(TraceError) as err:
        load_trace({"name": "bad", "source": "poisson", "rate_scale": 0.0, "cv": -1.0})
    assert "rate_scale must be > 0" in str(err.value) and "cv must be > 0" in str(err.value)
