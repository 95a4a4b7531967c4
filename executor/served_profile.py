"""``python -m executor profile --from-runs``: a profile of the steps servers actually ran.

A grid on idle workers misses what serving adds on a small host: the coordinator, the HTTP
server and the clients share the cores with the ranks, and a TP step waits for its slowest
member. The run directories of ``python -m executor serve --output-dir`` record every step
(``steps.parquet``), so their costs can be fitted as served:

- **Step cost** = the round trip (``step_s``) plus the host time before it (``host_s``:
  completing the previous step, scheduling and building this one), which back-to-back steps
  pay too. A step after an idle wait has no measured host time; it gets its width's median.
- **Contention**: for each step, how many other engine groups were computing meanwhile
  (``others_busy``: their round trips' overlap with this one, summed over the groups). Two
  DP groups on one small host slow each other down; the simulator's fit prices it.
- **Client overhead** (with ``--replays``, the replay client's output of the same runs): how
  much later a streaming client sees the first token than the server records it (request
  parsing and tokenisation before the server's arrival, the SSE chunk after its first token),
  per TP width of the group that produced the first token. The simulator adds it to what it
  reports as client-observed times (``sim.client_view``).
- **Flip cost**: the flips in the runs' ``switches.parquet``.
"""
from __future__ import annotations

import dataclasses
import math
import statistics
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

# Pairing server and client records by arrival order may swap two requests sent within the
# same instant; below this share of pairs that agree on their lengths, the runs do not match.
MIN_PAIRED_SHARE = 0.9


def read_steps(run_dir: Path) -> pd.DataFrame:
    steps = run_dir / "steps.parquet"
    if not steps.is_file():
        raise ValueError(f"{run_dir}: no steps.parquet (a run directory of `python -m executor "
                         f"serve --output-dir DIR` has one)")
    frame = pd.read_parquet(steps)
    if "host_s" not in frame:  # written before host time was recorded: round trips only
        frame["host_s"] = math.nan
    return frame


def with_host_time(steps: pd.DataFrame) -> tuple[pd.DataFrame, dict[int, float]]:
    """``step_s`` := round trip + host time; a step without a measured host time (after an
    idle wait, or an old run) gets its width's median. Returns the frame and the medians."""
    steps = steps.rename(columns={"step_s": "round_trip_s"})
    medians: dict[int, float] = {}
    for width, group in steps.groupby("tp_gpus"):
        host = group["host_s"].dropna()
        medians[int(width)] = float(host.median()) if len(host) else 0.0
    fill = steps["tp_gpus"].map(medians)
    steps["host_s"] = steps["host_s"].fillna(fill).clip(lower=0.0)
    steps["step_s"] = steps["round_trip_s"] + steps["host_s"]
    return steps, medians


def others_busy(steps: pd.DataFrame) -> pd.Series:
    """Per step of one run: the other groups' round trips overlapping it, each counted by the
    share of this step it covers (0 = it ran alone, 1 = another group computed throughout)."""
    end = steps["time_s"].to_numpy()
    start = end - steps["step_s"].to_numpy()
    groups = steps["group"].to_numpy()
    out = np.zeros(len(steps))
    for g in np.unique(groups):
        mine = np.flatnonzero(groups == g)
        for other in np.unique(groups[groups != g]):
            theirs = np.flatnonzero(groups == other)
            theirs = theirs[np.argsort(start[theirs])]
            o_start, o_end = start[theirs], end[theirs]  # one group's steps do not overlap
            for i in mine:
                j = np.searchsorted(o_end, start[i], side="right")
                covered = 0.0
                while j < len(theirs) and o_start[j] < end[i]:
                    covered += min(end[i], o_end[j]) - max(start[i], o_start[j])
                    j += 1
                if end[i] > start[i]:
                    out[i] += covered / (end[i] - start[i])
    return pd.Series(out, index=steps.index)


def first_width(tp_widths: str) -> int | None:
    head = str(tp_widths).split(",")[0].strip()
    return int(head) if head.isdigit() else None


def pair_requests(server_dir: Path, replay_dir: Path) -> pd.DataFrame:
    """The client's and the server's record of each replayed request, side by side. The
    server also served warm-up requests before the replay: its last ``len(client)`` arrivals
    are the replay's, in the same order."""
    paths = {"server": server_dir / "requests.parquet", "client": replay_dir / "requests.parquet"}
    for side, path in paths.items():
        if not path.is_file():
            raise ValueError(f"{path}: no such file (the {side} records of the run)")
    server = pd.read_parquet(paths["server"]).sort_values("arrival_s", kind="stable")
    client = pd.read_parquet(paths["client"]).sort_values("arrival_s", kind="stable")
    if len(client) == 0 or len(server) < len(client):
        raise ValueError(f"{replay_dir} has {len(client)} requests and {server_dir} "
                         f"{len(server)}: not the client and the server of one run")
    server = server.iloc[len(server) - len(client):].reset_index(drop=True)
    client = client.reset_index(drop=True)
    same = ((server["prompt_tokens"] == client["prompt_tokens"])
            & (server["output_tokens"] == client["output_tokens"]))
    if same.mean() < MIN_PAIRED_SHARE:
        raise ValueError(f"{replay_dir} and {server_dir}: only {int(same.sum())} of "
                         f"{len(client)} requests pair up by arrival order (same prompt and "
                         f"output lengths): not the client and the server of one run")
    return pd.DataFrame({"width": server["tp_widths"].map(first_width)[same],
                         "server_ttft_s": server["ttft_s"][same],
                         "client_ttft_s": client["ttft_s"][same]})


def client_overhead(pairs: pd.DataFrame) -> dict[str, dict]:
    """Per TP width (as a JSON key): mean and median of client TTFT - server TTFT."""
    pairs = pairs.dropna()
    out = {}
    for width, group in pairs.groupby("width"):
        delta = group["client_ttft_s"] - group["server_ttft_s"]
        out[str(int(width))] = {"mean_s": float(delta.mean()), "median_s": float(delta.median()),
                                "requests": len(delta)}
    return out


def profile_from_runs(run_dirs: list[Path], model, device: str,
                      replay_dirs: list[Path] | None = None) -> dict:
    """The profile document (``executor.profile.PROFILE_FORMAT``) of the given server run
    directories, with the client overhead when their replay directories are given too."""
    from executor.profile import (
        PROFILE_FORMAT,
        SHAPE_KEYS,
        hardware_description,
        percentile,
        software_versions,
    )
    from executor.serve_config import model_spec

    if replay_dirs and len(replay_dirs) != len(run_dirs):
        raise ValueError(f"--replays names {len(replay_dirs)} directories for "
                         f"{len(run_dirs)} runs: give one per run, in the same order")
    frames, flips = [], []
    for run_dir in run_dirs:
        frame = read_steps(run_dir)
        frame["others_busy"] = others_busy(frame)  # within one run: its groups shared a host
        frames.append(frame)
        switches = run_dir / "switches.parquet"
        if switches.is_file():
            flips += [f for f in pd.read_parquet(switches).get("flip_s", []) if f > 0]
    steps = pd.concat(frames, ignore_index=True)
    if steps.empty:
        raise ValueError(f"no steps in {', '.join(map(str, run_dirs))}")
    steps, host_medians = with_host_time(steps)
    rows = [{"kind": "served", **{k: int(r[k]) for k in SHAPE_KEYS}, "step_s": float(r["step_s"]),
             "round_trip_s": float(r["round_trip_s"]), "host_s": float(r["host_s"]),
             "others_busy": round(float(r["others_busy"]), 4), "samples": 1} for r in steps.to_dict("records")]
    switch = {"flips": 0}
    if flips:
        switch = {"flip_s_p50": statistics.median(flips), "flip_s_p99": percentile(flips, 99),
                  "flip_s_mean": statistics.fmean(flips), "flips": len(flips)}
    serving = {"host_s_median": {str(w): s for w, s in host_medians.items()}}
    if replay_dirs:
        pairs = pd.concat([pair_requests(r, c) for r, c in zip(run_dirs, replay_dirs)],
                          ignore_index=True)
        serving["client_overhead_s"] = client_overhead(pairs)
        serving["replays"] = [str(d) for d in replay_dirs]
    spec = model_spec(model)
    return {"format": PROFILE_FORMAT,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "hardware": hardware_description(device, []), "software": software_versions(),
            "model": dataclasses.asdict(spec),
            "settings": {"device": device, "source": "served steps",
                         "runs": [str(d) for d in run_dirs], "dtype": spec.dtype},
            "steps": rows, "switch": switch, "serving": serving, "skipped": []}
