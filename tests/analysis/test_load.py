import json

import pandas as pd
import pytest

from analysis.load import find_run_dirs, load_requests, load_run
from analysis.metrics import build_summary
from policies.records import RECORD_COLUMNS


def write_run(run_dir, requests, **run_meta):
    run_dir.mkdir(parents=True)
    requests.to_parquet(run_dir / "requests.parquet")
    pd.DataFrame({"time_s": [0.0, 1.0], "group": ["0", "0"], "tp_gpus": [1, 1],
                  "queued_requests": [0, 1], "running_requests": [1, 2],
                  "kv_blocks_used": [1, 2], "kv_blocks_total": [10, 10],
                  "output_tokens_total": [0, 5]}).to_parquet(run_dir / "samples.parquet")
    pd.DataFrame({"time_s": [0.0], "layout": ["dp2"], "event": ["start"],
                  "duration_s": [0.0]}).to_parquet(run_dir / "layouts.parquet")
    (run_dir / "summary.json").write_text(json.dumps(build_summary(requests, run_meta)))


def test_load_run(tmp_path, requests):
    write_run(tmp_path / "run", requests, policy="flying", seed=1)
    run = load_run(tmp_path / "run")
    assert list(run["requests"].columns) == list(RECORD_COLUMNS)
    assert len(run["requests"]) == 6
    assert len(run["samples"]) == 2 and len(run["layouts"]) == 1
    assert run["summary"]["run"]["policy"] == "flying"
    assert run["summary"]["metrics"]["all"]["requests"] == 6


def test_load_run_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="no run"):
        load_run(tmp_path)


def test_load_run_optional_files(tmp_path, requests):
    (tmp_path / "r").mkdir()
    requests.to_parquet(tmp_path / "r" / "requests.parquet")
    run = load_run(tmp_path / "r")
    assert run["summary"] == {} and len(run["samples"]) == 0
    assert "output_tokens_total" in run["samples"].columns


def test_load_requests_run_dirs(tmp_path, requests):
    write_run(tmp_path / "a", requests, policy="static", seed=1)
    write_run(tmp_path / "b", requests.iloc[:2], policy="flying", seed=2, sweep={"x": 1})
    df = load_requests([tmp_path / "a", str(tmp_path / "b")])
    assert len(df) == 8
    assert df["run"].tolist() == ["a"] * 6 + ["b"] * 2
    assert df.groupby("run")["policy"].first().to_dict() == {"a": "static", "b": "flying"}
    assert df["seed"].tolist() == [1] * 6 + [2] * 2
    assert df.loc[7, "sweep"] == '{"x": 1}'


def test_load_requests_multirun_tree(tmp_path, requests):
    multirun = tmp_path / "multirun" / "2025-01-01" / "12-00-00"
    for job in (0, 1, 2, 10):
        write_run(multirun / str(job), requests.iloc[: job + 1], policy=f"p{job}",
                  backend="sim")  # "backend" clashes with a record column
    (multirun / "multirun.yaml").write_text("hydra: {}\n")
    assert [d.name for d in find_run_dirs(multirun)] == ["0", "1", "2", "10"]
    df = load_requests(multirun)
    assert df["run"].unique().tolist() == ["0", "1", "2", "10"]
    assert len(df) == 1 + 2 + 3 + 6  # iloc[:11] of 6 rows
    assert "run_backend" in df.columns and (df["backend"] == "sim").all()
    # the same tree found from further up, and two trees with clashing job names
    other = tmp_path / "other"
    write_run(other / "0", requests, policy="q")
    both = load_requests([multirun, other])
    assert "12-00-00/0" in set(both["run"]) and "other/0" in set(both["run"])


def test_load_requests_no_run(tmp_path):
    (tmp_path / "empty" / "0").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="no run"):
        load_requests(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="no run"):
        load_requests(tmp_path / "missing")
