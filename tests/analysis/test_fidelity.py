import math

import pandas as pd
import pytest

from analysis.fidelity import (
    FIDELITY_COLUMNS, error_pct, fidelity_table, read_fidelity, write_fidelity,
)


def test_error_pct():
    assert error_pct(110.0, 100.0) == pytest.approx(10.0)
    assert error_pct(0.9, 1.0) == pytest.approx(-10.0)
    assert error_pct(0.0, 0.0) == 0.0 and math.isnan(error_pct(1.0, 0.0))


def test_read_fidelity_fills_missing_errors(tmp_path):
    pd.DataFrame({"policy": ["flying", "flying"], "metric": ["ttft_mean_s", "switches"],
                  "sim": [0.11, 2], "real": [0.10, 2], "error_pct": [None, 0.0]}).to_csv(
        tmp_path / "fidelity.csv", index=False)
    table = read_fidelity(tmp_path)
    assert table["error_pct"].tolist() == pytest.approx([10.0, 0.0])
    assert read_fidelity(tmp_path / "fidelity.csv").shape == (2, 5)


def test_read_fidelity_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no fidelity result"):
        read_fidelity(tmp_path)
    (tmp_path / "fidelity.csv").write_text("policy,metric,sim\nx,y,1\n")
    with pytest.raises(ValueError, match="missing columns"):
        read_fidelity(tmp_path)


def test_fidelity_table_pairs_sim_and_real_per_policy(tmp_path):
    metrics = pd.DataFrame({
        "policy": ["static_dp", "static_dp", "flying", "static_tp"],
        "source": ["sim", "executor", "sim", "replay"],   # flying and static_tp have one side
        "ttft_mean_s": [0.2, 0.25, 0.1, 0.3], "ttft_p90_s": [0.4, 0.4, 0.2, 0.5],
        "tpot_mean_s": [0.05, 0.05, 0.04, 0.05], "output_tokens_per_s": [100.0, 80.0, 90.0, 70.0],
        "switches": [0, 0, 3, 0]})
    table = fidelity_table(metrics)
    assert list(table.columns) == FIDELITY_COLUMNS
    assert table["policy"].unique().tolist() == ["static_dp"]
    row = table.set_index("metric").loc["output_tokens_per_s"]
    assert (row["sim"], row["real"], row["error_pct"]) == (100.0, 80.0, pytest.approx(25.0))
    assert write_fidelity(table, tmp_path / "out").is_file()
    assert read_fidelity(tmp_path / "out").shape == table.shape
    with pytest.raises(ValueError, match="no policy has both"):
        fidelity_table(metrics[metrics["source"] == "sim"])
    with pytest.raises(ValueError, match="give one of each"):
        fidelity_table(pd.concat([metrics, metrics.iloc[:1]]))
