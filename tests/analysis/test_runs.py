import math

import numpy as np
import pandas as pd
import pytest

from analysis.load import load_runs
from analysis.runs import offered_rps, run_metrics
from tests.analysis.rundirs import executor_run, sim_run


def test_offered_rps():
    assert offered_rps([0.0, 1.0, 2.0, 3.0]) == pytest.approx(1.0)  # 3 gaps in 3 s
    assert offered_rps(np.array([5.0, 0.0, 2.5])) == pytest.approx(2 / 5)
    assert math.isnan(offered_rps([1.0])) and math.isnan(offered_rps([2.0, 2.0]))


def test_run_metrics_one_row_per_run(tmp_path, requests):
    sim_run(tmp_path / "s", policy="flying")
    executor_run(tmp_path / "e", policy="static_dp", switches=3)
    m = run_metrics(load_runs([tmp_path / "s", tmp_path / "e"]))
    assert m["run"].tolist() == ["s", "e"]
    assert m["source"].tolist() == ["sim", "executor"]
    assert m["switches"].tolist() == [0, 3]
    # three requests arriving at 0, 1, 2 s; ttft 0.2 s each
    assert m["offered_rps"].tolist() == pytest.approx([1.0, 1.0])
    assert m["ttft_mean_s"].tolist() == pytest.approx([0.2, 0.2])
    assert m["normal_ttft_p90_s"].tolist() == pytest.approx([0.2, 0.2])
    assert m.loc[0, "trace"] == "poisson"


def test_run_metrics_per_class_columns(requests):
    df = requests.assign(run="r", policy="p")
    m = run_metrics(df)
    assert m.loc[0, "priority_ttft_p90_s"] == pytest.approx(0.5)  # one finished priority request
    assert m.loc[0, "priority_slo_attainment"] == pytest.approx(0.5)
    assert m.loc[0, "requests"] == 6 and m.loc[0, "long_context_requests"] == 1


def test_run_metrics_needs_runs():
    with pytest.raises(ValueError, match="load_runs"):
        run_metrics(pd.DataFrame({"x": [1]}))
