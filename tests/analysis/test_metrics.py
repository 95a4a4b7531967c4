import json
import math
import time

import numpy as np
import pandas as pd
import pytest

from analysis.metrics import (
    SUMMARY_COLUMNS, build_summary, compare_runs, format_comparison, format_summary, summarize,
    summary_dict,
)


def test_scopes_and_counts(requests):
    s = summarize(requests)
    assert list(s.index) == ["all", "normal", "priority", "long_context"]
    assert list(s.columns) == list(SUMMARY_COLUMNS)
    assert s.loc["all", ["requests", "finished", "rejected", "unfinished"]].tolist() == [6, 4, 1, 1]
    assert s.loc["normal", ["requests", "finished", "rejected", "unfinished"]].tolist() == [3, 2, 0, 1]
    assert s.loc["priority", "rejected"] == 1


def test_latency_stats_hand_computed(requests):
    s = summarize(requests).loc["all"]
    # ttft of finished: [1, 2, 0.5, 1.5] -> sorted [0.5, 1, 1.5, 2]
    assert s["ttft_mean_s"] == pytest.approx(1.25)
    assert s["ttft_p50_s"] == pytest.approx(1.25)
    assert s["ttft_p90_s"] == pytest.approx(1.5 + 0.7 * 0.5)   # rank 2.7, linear
    assert s["ttft_p99_s"] == pytest.approx(1.5 + 0.97 * 0.5)
    # e2e of finished: [3, 3, 4, 4.5]
    assert s["e2e_mean_s"] == pytest.approx(14.5 / 4)
    assert s["e2e_p50_s"] == pytest.approx(3.5)
    # queueing of finished: [0.5, 0, 0.2, 0.5]
    assert s["queueing_mean_s"] == pytest.approx(1.2 / 4)
    assert s["queueing_p90_s"] == pytest.approx(0.5)


def test_tpot_excludes_single_token_outputs(requests):
    s = summarize(requests)
    # generated > 1 and finished: [0.5, 0.5, 1.0]; request 1 (1 token, tpot_s=0.0) excluded
    assert s.loc["all", "tpot_mean_s"] == pytest.approx(2.0 / 3)
    assert s.loc["all", "tpot_p50_s"] == pytest.approx(0.5)
    assert s.loc["all", "tpot_p90_s"] == pytest.approx(0.5 + 0.8 * 0.5)
    assert s.loc["normal", "tpot_mean_s"] == pytest.approx(0.5)
    assert s.loc["normal", "tpot_p99_s"] == pytest.approx(0.5)


def test_slo_attainment_counts_rejected_and_unfinished_as_misses(requests):
    s = summarize(requests)
    assert s.loc["all", "slo_attainment"] == pytest.approx(2 / 5)       # 0, 2 of 0-4
    assert s.loc["normal", "slo_attainment"] == pytest.approx(1 / 3)    # 0 of 0, 1, 4
    assert s.loc["priority", "slo_attainment"] == pytest.approx(1 / 2)  # 2 of 2, 3 (rejected)
    assert math.isnan(s.loc["long_context", "slo_attainment"])         # no SLO


def test_slo_met_as_nullable_boolean(requests):
    r = requests.copy()
    r["slo_met"] = r["slo_met"].astype("boolean")
    assert summarize(r).loc["all", "slo_attainment"] == pytest.approx(2 / 5)


def test_throughput_default_window(requests):
    s = summarize(requests)
    # window: first arrival 0 .. last finish 6; tokens of finished 5 + 1 + 8 + 4 = 18
    assert s.loc["all", "output_tokens_per_s"] == pytest.approx(18 / 6)
    assert s.loc["all", "requests_per_s"] == pytest.approx(4 / 6)
    assert s.loc["normal", "output_tokens_per_s"] == pytest.approx(6 / 6)
    classes = s.drop(index="all")["output_tokens_per_s"].sum()
    assert classes == pytest.approx(s.loc["all", "output_tokens_per_s"])


def test_throughput_given_window(requests):
    s = summarize(requests, window_s=(0.0, 4.0))
    # finished inside [0, 4]: requests 0 (5 tokens) and 1 (1 token)
    assert s.loc["all", "output_tokens_per_s"] == pytest.approx(6 / 4)
    assert s.loc["all", "requests_per_s"] == pytest.approx(2 / 4)
    assert s.loc["all", "ttft_mean_s"] == pytest.approx(1.25)  # latency is not windowed


def test_nothing_finished(requests):
    r = requests[requests["status"] != "finished"]
    s = summarize(r)
    assert s.loc["all", "finished"] == 0
    assert math.isnan(s.loc["all", "ttft_p90_s"])
    assert math.isnan(s.loc["all", "output_tokens_per_s"])
    assert s.loc["all", "slo_attainment"] == 0.0
    json.dumps(summary_dict(s), allow_nan=False)


def test_summary_dict_json_safe(requests):
    d = summary_dict(summarize(requests))
    text = json.dumps(d, allow_nan=False)  # raises on NaN
    assert set(d) == {"all", "normal", "priority", "long_context"}
    assert d["long_context"]["slo_attainment"] is None
    assert d["all"]["requests"] == 6 and isinstance(d["all"]["requests"], int)
    assert json.loads(text)["all"]["ttft_mean_s"] == pytest.approx(1.25)


def test_format_summary(requests):
    text = format_summary(summarize(requests))
    for scope in ("all", "normal", "priority", "long_context"):
        assert scope in text
    assert "TTFT" in text and "[" not in text.split("\n")[0]
    assert "ms" in text and "out tok/s" in text and "SLO met %" in text
    assert max(len(line) for line in text.splitlines()) <= 120


def _summary(requests, **run):
    return build_summary(requests, dict(trace="t", policy="p", cluster="c", model="m",
                                        predictor="x", seed=0, wall_s=1.0, **run))


def test_compare_runs_shape(requests):
    a = _summary(requests, name="a")
    a["run"]["policy"] = "static_dp"
    b = _summary(requests[requests["request_class"] != "long_context"], name="b")
    b["run"]["policy"] = "flying"
    df = compare_runs([a, b])
    assert len(df) == 2
    assert {"trace", "policy", "seed", "wall_s"} <= set(df.columns)
    assert set(SUMMARY_COLUMNS) <= set(df.columns)
    per_class = [c for c in df.columns if c.endswith(("_ttft_p90_s", "_slo_attainment"))]
    assert per_class == ["normal_ttft_p90_s", "normal_slo_attainment", "priority_ttft_p90_s",
                         "priority_slo_attainment", "long_context_ttft_p90_s",
                         "long_context_slo_attainment"]
    assert df.loc[0, "ttft_mean_s"] == pytest.approx(1.25)
    assert np.isnan(df.loc[1, "long_context_ttft_p90_s"])
    assert df.loc[0, "priority_slo_attainment"] == pytest.approx(0.5)
    text = format_comparison(df)
    assert "static_dp" in text and "flying" in text and "TTFT90 [s]" in text and "priority" in text


def test_compare_runs_accepts_top_level_scopes(requests):
    d = {"run": {"policy": "p"}, **summary_dict(summarize(requests))}
    df = compare_runs([d])
    assert df.loc[0, "requests"] == 6 and df.loc[0, "policy"] == "p"
    assert "p" in format_comparison(df)


def test_summarize_fast_on_20k_rows():
    rng = np.random.default_rng(0)
    n = 20_000
    arrival = np.sort(rng.uniform(0, 600, n))
    ttft = rng.exponential(0.3, n)
    gen = rng.integers(1, 500, n)
    tpot = rng.uniform(0.01, 0.05, n)
    status = rng.choice(["finished", "rejected", "unfinished"], n, p=[0.9, 0.05, 0.05])
    fin = status == "finished"
    df = pd.DataFrame({
        "request_class": rng.choice(["normal", "priority", "long_context"], n),
        "status": status, "arrival_s": arrival, "finish_s": np.where(fin, arrival + ttft + tpot * (gen - 1), np.nan),
        "generated_tokens": gen, "ttft_s": ttft, "tpot_s": tpot, "e2e_s": ttft + tpot * (gen - 1),
        "queueing_s": ttft / 2, "ttft_slo_s": 1.0, "tpot_slo_s": 0.04,
        "slo_met": np.where(fin, (ttft < 1.0) & (tpot < 0.04), None),
    })
    t = time.perf_counter()
    s = summarize(df)
    assert time.perf_counter() - t < 1.0
    assert s.loc["all", "requests"] == n
