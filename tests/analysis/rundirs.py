"""Run dirs as each backend writes them, for the analysis tests."""
import json

import pandas as pd

from analysis.metrics import build_summary
from policies.records import SWITCH_COLUMNS
from tests.analysis.conftest import make_requests


def _rows(n=3):
    return [dict(request_class="normal", status="finished", arrival_s=float(i),
                 first_scheduled_s=i + 0.1, first_token_s=i + 0.2, finish_s=i + 1.0,
                 generated_tokens=5) for i in range(n)]


def sim_run(run_dir, policy="flying", overrides=None, n=3):
    """A run dir as ``python -m sim run`` writes it (summary with a ``run`` dict, .hydra/)."""
    run_dir.mkdir(parents=True)
    requests = make_requests(_rows(n), backend="sim")
    requests.to_parquet(run_dir / "requests.parquet")
    pd.DataFrame(columns=SWITCH_COLUMNS).to_parquet(run_dir / "switches.parquet")
    summary = build_summary(requests, {"backend": "sim", "policy": policy, "trace": "poisson",
                                       "seed": 0, "layout": "8xTP1"})
    (run_dir / "summary.json").write_text(json.dumps(summary))
    (run_dir / ".hydra").mkdir()
    (run_dir / ".hydra" / "overrides.yaml").write_text(
        "".join(f"- {o}\n" for o in (overrides or ["+trace=poisson", f"policy={policy}"])))
    return run_dir


def executor_run(run_dir, policy="static_dp", switches=0):
    """A run dir as executor/run_outputs.py writes it (no metrics in summary.json)."""
    run_dir.mkdir(parents=True)
    make_requests(_rows(), backend="executor").to_parquet(run_dir / "requests.parquet")
    pd.DataFrame([{c: 0 for c in SWITCH_COLUMNS}] * switches, columns=SWITCH_COLUMNS).to_parquet(
        run_dir / "switches.parquet")
    (run_dir / "summary.json").write_text(json.dumps({
        "run": {"backend": "executor", "model": "tiny", "policy": policy, "layout": "2xTP1",
                "num_ranks": 2}, "startup": {"load_s": 1.0}}))
    return run_dir


def replay_run(run_dir, summary, record_backend="replay"):
    run_dir.mkdir(parents=True)
    make_requests(_rows(), backend=record_backend).to_parquet(run_dir / "requests.parquet")
    (run_dir / "summary.json").write_text(json.dumps(summary))
    return run_dir
