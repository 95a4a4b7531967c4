"""Every experiment config runs, with every switching policy, on a tiny slice of its trace."""
from pathlib import Path

import pytest

from sim.run import CONF_DIR, records_frame, simulate

EXPERIMENTS = sorted(p.stem for p in (Path(CONF_DIR) / "experiment").glob("*.yaml"))
REAL = {"azure", "azure_code", "mooncake", "mooncake_synthetic"}


@pytest.mark.parametrize("policy", ["static_dp", "flying", "slo_aware"])
@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_runs_on_a_tiny_trace(make_config, experiment, policy):
    probe = make_config(f"experiment={experiment}")
    if probe.trace.source in REAL:
        from traces import TraceError, load_trace
        try:
            load_trace(probe.trace)
        except TraceError:
            pytest.skip("the real trace is not on this machine")
        tiny = ["trace.max_requests=40"]
    else:
        tiny = ["trace.duration_s=15"]
    cfg = make_config(f"experiment={experiment}", f"policy={policy}", *tiny)
    result, _ = simulate(cfg)
    df = records_frame(result)
    assert len(df) == df.request_id.nunique() > 0
    assert set(df.status) <= {"finished", "rejected"}
    assert (df.status == "finished").any()
    assert all(s.done_s is not None for s in result.switches)
