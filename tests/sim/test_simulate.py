"""The simulator end to end: determinism, the exact fast path, physical sanity, the CLI."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sim.run import records_frame, simulate

REPO = Path(__file__).resolve().parents[2]


def test_same_seed_same_outputs_and_other_seed_differs(make_config):
    cfg = make_config("+trace=poisson", "trace.duration_s=60", "trace.rate_rps=5")
    a, _ = simulate(cfg)
    b, _ = simulate(cfg)
    assert records_frame(a).equals(records_frame(b))
    cfg.seed = 1
    cfg.trace.seed = 1
    c, _ = simulate(cfg)
    assert not records_frame(a).equals(records_frame(c))


@pytest.mark.parametrize("policy,reserve_gib", [
    ("static_dp", 55.5), ("static_tp", 56.3), ("static_mixed", 56.3)])
def test_fast_path_is_exactly_stepping_under_preemption(make_config, policy, reserve_gib):
    # Little KV room (0.9 * 79.6 GiB - 15 GiB of resident weights - the reserve: 0.4-1.2 GiB
    # per GPU) under a burst forces preemptions.
    cfg = make_config("+trace=bursty", "trace.duration_s=60", f"policy={policy}",
                      f"memory.activation_reserve_gib={reserve_gib}", "trace.burst_rate_rps=30",
                      "policy.weights_resident_per_engine=true")
    fast, _ = simulate(cfg)
    cfg.fast_forward = False
    slow, _ = simulate(cfg)
    a, b = records_frame(fast), records_frame(slow)
    assert a.equals(b)
    assert fast.samples == slow.samples
    assert a["preemptions"].sum() > 0, "the case must exercise preemption"
    assert (a["status"] == "finished").all()


def test_low_load_tp_has_lower_ttft_than_dp(make_config):
    ttft = {}
    for policy in ("static_dp", "static_tp"):
        result, _ = simulate(make_config("experiment=sanity_low_load", f"policy={policy}",
                                         "trace.duration_s=120"))
        ttft[policy] = records_frame(result)["ttft_s"].mean()
    assert ttft["static_tp"] < 0.5 * ttft["static_dp"]


def test_saturation_dp_has_higher_throughput_than_tp(make_config):
    tput = {}
    for policy in ("static_dp", "static_tp"):
        result, _ = simulate(make_config("experiment=sanity_saturation", f"policy={policy}",
                                         "trace.duration_s=20"))
        df = records_frame(result)
        done = df[df.status == "finished"]
        tput[policy] = done.generated_tokens.sum() / (done.finish_s.max() - df.arrival_s.min())
    assert tput["static_dp"] > 1.2 * tput["static_tp"]


def test_every_request_is_accounted_for(make_config):
    # mooncake-like long prompts on a small max_model_len: some rejected, none lost.
    cfg = make_config("+trace=poisson", "trace.duration_s=30", "model.max_model_len=2048")
    result, _ = simulate(cfg)
    df = records_frame(result)
    assert len(df) == df.request_id.nunique() == len(result.requests)
    assert set(df.status) <= {"finished", "rejected"}
    rejected = df[df.status == "rejected"]
    assert len(rejected) > 0 and rejected.reject_reason.str.contains("max_model_len").all()
    assert (df[df.status == "finished"].generated_tokens == df[df.status == "finished"].output_tokens).all()


def run_cli(*args, cwd=REPO, timeout=240):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", "sim", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_cli_run_writes_records_summary_and_plots(tmp_path):
    out = tmp_path / "run"
    p = run_cli("run", "+trace=poisson", "trace.duration_s=30", f"hydra.run.dir={out}")
    assert p.returncode == 0, p.stderr
    assert "TTFT" in p.stdout or "ttft" in p.stdout
    for name in ("requests.parquet", "samples.parquet", "layouts.parquet", "summary.json",
                 "latency_cdf.png", "timeseries.png"):
        assert (out / name).stat().st_size > 0, name
    doc = json.loads((out / "summary.json").read_text())
    assert doc["run"]["policy"] == "static_dp" and doc["run"]["num_requests"] > 0


def test_cli_multirun_writes_a_comparison(tmp_path):
    p = run_cli("run", "-m", "+trace=poisson", "trace.duration_s=20", "output.plots=false",
                "policy=static_dp,static_tp", f"hydra.sweep.dir={tmp_path}")
    assert p.returncode == 0, p.stderr
    table = (tmp_path / "comparison.csv").read_text().splitlines()
    assert len(table) == 3  # header + one row per job
    assert "static_dp" in p.stdout and "static_tp" in p.stdout


def test_cli_bad_input_gets_a_clear_error(tmp_path):
    p = run_cli("run")
    assert p.returncode != 0 and "+trace=NAME" in p.stderr
    p = run_cli("run", "+trace=azure", f"trace.file={tmp_path}/nope.csv",
                f"hydra.run.dir={tmp_path}/x")
    assert p.returncode == 2 and "nope.csv" in p.stderr
    p = run_cli("run", "+trace=poisson", "trace.rate_scale=-1", f"hydra.run.dir={tmp_path}/y")
    assert p.returncode == 2 and "rate_scale" in p.stderr
