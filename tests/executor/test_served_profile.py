"""``python -m executor profile --from-runs [--replays]``: step costs as served (round trip +
host time), the client overhead per width from paired server and client records, and clear
errors for runs that do not belong together. Hand-made run directories, no workers."""
import json
import math
import subprocess
import sys

import pandas as pd
import pytest

from executor.run_outputs import STEP_COLUMNS
from executor.served_profile import client_overhead, pair_requests, with_host_time
from policies.records import RECORD_COLUMNS


def step_rows(width: int, round_trips_s: list[float], hosts_s: list[float]) -> list[dict]:
    return [{"time_s": float(i), "group": f"g{width}", "tp_gpus": width, "num_tokens": 1,
             "num_seqs": 1, "num_logits": 1, "attn_pairs": 10, "kv_tokens_read": 10,
             "num_prefill_tokens": 0, "step_s": rt, "host_s": h}
            for i, (rt, h) in enumerate(zip(round_trips_s, hosts_s))]


def record(i: int, arrival_s: float, ttft_s: float, prompt: int, widths: str = "1") -> dict:
    row = {c: math.nan for c in RECORD_COLUMNS}
    row.update(request_id=i, status="finished", arrival_s=arrival_s, ttft_s=ttft_s,
               first_token_s=arrival_s + ttft_s, prompt_tokens=prompt, output_tokens=8,
               tp_widths=widths, request_class="normal", backend="x", engine_group="e0",
               reject_reason=None, slo_met=None)
    return row


def write_run(root, width: int, server_ttfts_s: list[float], client_ttfts_s: list[float],
              warmups: int = 2):
    """A server run dir (warm-ups first, then the replayed requests) and its replay dir."""
    server_dir, replay_dir = root / f"w{width}" / "server", root / f"w{width}" / "replay"
    server_dir.mkdir(parents=True)
    replay_dir.mkdir(parents=True)
    steps = step_rows(width, [0.010, 0.012, 0.014], [math.nan, 0.001, 0.003])
    pd.DataFrame(steps, columns=STEP_COLUMNS).to_parquet(server_dir / "steps.parquet")
    server = [record(i, 0.1 * i, 0.5, 4) for i in range(warmups)]
    server += [record(warmups + i, 10.0 + i, t, 16 + i, str(width))
               for i, t in enumerate(server_ttfts_s)]
    client = [record(i, 0.001 + i, t, 16 + i) for i, t in enumerate(client_ttfts_s)]
    pd.DataFrame(server, columns=list(RECORD_COLUMNS)).to_parquet(server_dir / "requests.parquet")
    pd.DataFrame(client, columns=list(RECORD_COLUMNS)).to_parquet(replay_dir / "requests.parquet")
    return server_dir, replay_dir


def test_step_cost_is_round_trip_plus_host_time():
    steps = pd.DataFrame(step_rows(1, [0.010, 0.012, 0.014, 0.020], [math.nan, 0.001, 0.003, 0.002])
                         + step_rows(2, [0.030], [math.nan]))
    out, medians = with_host_time(steps)
    assert medians == {1: pytest.approx(0.002), 2: 0.0}  # width 2 measured none: no host cost
    # The step after an idle wait gets its width's median host time.
    assert list(out.step_s) == pytest.approx([0.012, 0.013, 0.017, 0.022, 0.030])
    assert list(out.round_trip_s) == [0.010, 0.012, 0.014, 0.020, 0.030]


def test_client_overhead_pairs_requests_after_the_warm_ups(tmp_path):
    server_dir, replay_dir = write_run(tmp_path, 2, [0.10, 0.20, 0.30], [0.11, 0.23, 0.33])
    pairs = pair_requests(server_dir, replay_dir)
    assert list(pairs.width) == [2, 2, 2]
    overhead = client_overhead(pairs)
    assert overhead == {"2": {"mean_s": pytest.approx(0.07 / 3), "median_s": pytest.approx(0.03),
                              "requests": 3}}


def test_runs_that_do_not_belong_together_are_refused(tmp_path):
    server_dir, _ = write_run(tmp_path, 1, [0.1, 0.2, 0.3], [0.1, 0.2, 0.3])
    _, other_replay = write_run(tmp_path / "other", 1, [0.1] * 5, [0.1] * 5)
    with pytest.raises(ValueError, match="not the client and the server of one run"):
        pair_requests(server_dir, other_replay)  # more client requests than the server saw
    client = pd.read_parquet(other_replay / "requests.parquet").iloc[:3]
    client["prompt_tokens"] += 100
    client.to_parquet(other_replay / "requests.parquet")
    with pytest.raises(ValueError, match="pair up by arrival order"):
        pair_requests(server_dir, other_replay)


def profile_cmd(tmp_path, *args) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "executor", "profile", "--model", "tiny", *map(str, args),
           "-o", str(tmp_path / "profile.json"), "--log-level", "warning"]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def test_served_profile_records_host_time_and_client_overhead(tmp_path):
    dp = write_run(tmp_path, 1, [0.10, 0.20], [0.104, 0.206])
    tp = write_run(tmp_path, 2, [0.30, 0.40], [0.31, 0.41])
    proc = profile_cmd(tmp_path, "--from-runs", dp[0], tp[0], "--replays", dp[1], tp[1])
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "client overhead 5.00 ms mean" in proc.stdout
    doc = json.loads((tmp_path / "profile.json").read_text())
    serving = doc["serving"]
    assert serving["host_s_median"] == {"1": pytest.approx(0.002), "2": pytest.approx(0.002)}
    assert serving["client_overhead_s"]["1"]["mean_s"] == pytest.approx(0.005)
    assert serving["client_overhead_s"]["2"]["mean_s"] == pytest.approx(0.010)
    first = doc["steps"][0]
    assert first["step_s"] == pytest.approx(first["round_trip_s"] + first["host_s"])
    assert all(r["others_busy"] == 0.0 for r in doc["steps"])  # each run has one group


@pytest.mark.parametrize("args, message", [
    (["--replays", "R"], "--replays needs --from-runs"),
    (["--from-runs", "A", "B", "--replays", "R"], "give one per run"),
    (["--from-runs", "nowhere"], "no steps.parquet"),
])
def test_bad_served_profile_arguments(tmp_path, args, message):
    if "A" in args:
        for name in ("A", "B"):
            write_run(tmp_path / name, 1, [0.1], [0.1])
        args = [str(tmp_path / a / "w1" / "server") if a in ("A", "B") else a for a in args]
    proc = profile_cmd(tmp_path, *args)
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr


def test_others_busy_is_the_overlap_of_other_groups_steps():
    from executor.served_profile import others_busy
    # e0 steps [0, 1], [1, 2]; e1 steps [0.5, 1.5] and [3, 4]: e0's first step is half
    # covered, its second half covered, e1's first fully covered, its second alone.
    steps = pd.DataFrame({"group": ["e0", "e0", "e1", "e1"],
                          "time_s": [1.0, 2.0, 1.5, 4.0], "step_s": [1.0, 1.0, 1.0, 1.0]})
    assert list(others_busy(steps)) == pytest.approx([0.5, 0.5, 1.0, 0.0])
    alone = pd.DataFrame({"group": ["e0-1"] * 3, "time_s": [1.0, 2.0, 3.0], "step_s": [1.0] * 3})
    assert list(others_busy(alone)) == [0.0, 0.0, 0.0]
