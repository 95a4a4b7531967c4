"""load_runs: simulator, executor, replay and multirun dirs in one frame."""
import pandas as pd
import pytest

from analysis.load import (
    ID_COLUMNS, count_switches, detect_source, find_run_dirs, load_requests, load_runs,
    override_columns, run_info,
)
from policies.records import RECORD_COLUMNS
from tests.analysis.rundirs import executor_run, replay_run, sim_run


def test_one_frame_from_every_kind(tmp_path):
    sim_run(tmp_path / "sim")
    executor_run(tmp_path / "exec", switches=2)
    replay_run(tmp_path / "replay", {"run": {"client": "replay", "target": "executor",
                                             "policy": "static_tp"}})
    df = load_runs([tmp_path / "sim", tmp_path / "exec", tmp_path / "replay"])
    assert list(df.columns[:len(ID_COLUMNS)]) == list(ID_COLUMNS)
    assert set(RECORD_COLUMNS) <= set(df.columns)
    runs = df.drop_duplicates("run").set_index("run")
    assert runs["source"].to_dict() == {"sim": "sim", "exec": "executor", "replay": "replay"}
    assert runs["served_by"].to_dict() == {"sim": "sim", "exec": "executor", "replay": "executor"}
    assert runs["policy"].to_dict() == {"sim": "flying", "exec": "static_dp", "replay": "static_tp"}
    assert runs.loc["sim", "overrides"] == "+trace=poisson policy=flying"
    assert runs.loc["exec", "overrides"] == ""
    assert runs.loc["exec", "num_ranks"] == 2 and pd.isna(runs.loc["sim", "num_ranks"])
    assert count_switches(tmp_path / "exec") == 2 and count_switches(tmp_path / "sim") == 0
    assert count_switches(tmp_path / "replay") is None  # a client cannot see switches


@pytest.mark.parametrize("summary, record_backend, source, served_by", [
    ({"backend": "replay", "target_backend": "executor", "policy": "flying"}, "executor",
     "replay", "executor"),                                        # flat summary
    ({"run": {"tool": "replay-client", "server": "vllm"}}, "replay", "replay", "vllm"),
    ({"replay": {"rate": 1}, "metrics": {}}, "executor", "replay", "unknown"),
    ({}, "replay", "replay", "unknown"),                           # only the records say it
    ({"run": {"mode": "Executor"}}, None, "executor", "executor"),
    ({}, None, "unknown", "unknown"),                               # nothing says anything
])
def test_detect_source_leniently(tmp_path, summary, record_backend, source, served_by):
    run_dir = replay_run(tmp_path / "r", summary, record_backend)
    info = run_info(run_dir, [record_backend] if record_backend else [])
    assert (info["source"], info["served_by"]) == (source, served_by)


def test_detect_source_from_hydra_dir(tmp_path):
    run_dir = sim_run(tmp_path / "s")
    assert detect_source(run_dir, {}, []) == "sim"


def test_policy_from_overrides_without_summary(tmp_path):
    run_dir = sim_run(tmp_path / "s", policy="shift")
    (run_dir / "summary.json").unlink()
    assert run_info(run_dir)["policy"] == "shift"


def test_multirun_tree_and_override_columns(tmp_path):
    sweep = tmp_path / "multirun" / "2026-01-01" / "12-00-00"
    for job, (rate, policy) in enumerate([(10, "static_dp"), (10, "flying"), (40, "static_dp")]):
        sim_run(sweep / str(job), policy, ["+trace=poisson", f"trace.rate_rps={rate}",
                                           f"policy={policy}"], n=job + 1)
    (sweep / "comparison.csv").write_text("policy\n")
    df = load_runs(tmp_path / "multirun")
    assert df["run"].unique().tolist() == ["0", "1", "2"] and len(df) == 1 + 2 + 3
    runs = override_columns(df.drop_duplicates("run"))
    assert runs["trace.rate_rps"].tolist() == [10.0, 10.0, 40.0]
    assert runs["trace"].tolist() == ["poisson"] * 3  # '+trace' -> 'trace'
    assert "run_backend" in df.columns  # summary's backend clashes with the record column


def test_load_requests_unchanged(tmp_path):
    sim_run(tmp_path / "a")
    df = load_requests(tmp_path / "a")
    assert df.columns[0] == "run" and "source" not in df.columns and "policy" in df.columns


def test_no_run_is_a_clear_error(tmp_path):
    (tmp_path / "empty" / "0").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="no run in .*empty"):
        load_runs(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="no run"):
        load_runs([])
    assert find_run_dirs(sim_run(tmp_path / "x")) == [tmp_path / "x"]
